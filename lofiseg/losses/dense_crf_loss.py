"""Dense-CRF regularized loss at reduced resolution (Veksler, Sec. 3.1, after Krähenbühl & Koltun).

Same form as Eq. 3 with the absolute relaxation, but summed over all pixel pairs, with a Gaussian weight on
colour and position::

    w_pq = exp(-||C_p - C_q||^2 / (2 sigma_color^2) - ||p - q||^2 / (2 sigma_xy^2))

The loss is the mean of ``w_pq |x_p - x_q|`` over ordered pairs ``p != q`` (the sparse-CRF counterpart is a
mean too). It is quadratic in the number of pixels, so both the foreground map and the ImageNet-normalised
image are average-pooled by ``factor`` first (rows/columns beyond a multiple of ``factor`` are dropped);
``p, q`` are the pooled cells' centres in input-pixel units, so ``sigma_xy`` does not depend on ``factor``.
The paper gives no kernel widths; ``sigma_color = 0.15`` (as the sparse-CRF, in standard-deviation units) and
``sigma_xy = 8`` input pixels are lofiseg's defaults for 128 x 128 inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lofiseg.losses.regularized import (
    DEFAULT_SIGMA,
    Reduction,
    check_foreground,
    check_image,
    foreground_probability,
)

DEFAULT_SIGMA_XY = 8.0
DEFAULT_FACTOR = 4


def _check_params(sigma_color: float, sigma_xy: float, factor: int, reduction: str) -> None:
    if not float(sigma_color) > 0.0:
        raise ValueError(f"sigma_color must be > 0, got {sigma_color}")
    if not float(sigma_xy) > 0.0:
        raise ValueError(f"sigma_xy must be > 0, got {sigma_xy}")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be an int >= 1, got {factor!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def dense_crf_weights(image: Tensor, sigma_color: float, sigma_xy: float, factor: int) -> Tensor:
    """Pairwise weights ``(B, n, n)`` between the ``n`` cells of ``image`` pooled by ``factor``."""
    pooled = F.avg_pool2d(image, factor) if factor > 1 else image
    batch, _, height, width = pooled.shape
    rows = (torch.arange(height, dtype=image.dtype, device=image.device) + 0.5) * factor
    cols = (torch.arange(width, dtype=image.dtype, device=image.device) + 0.5) * factor
    positions = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(1, -1, 2)
    colours = pooled.flatten(2).transpose(1, 2)  # (B, n, 3)
    features = torch.cat([colours / sigma_color, positions.expand(batch, -1, -1) / sigma_xy], dim=2)
    squared = torch.cdist(features, features, compute_mode="donot_use_mm_for_euclid_dist").square()
    return torch.exp(-0.5 * squared)


def dense_crf_loss_from_foreground(
    foreground: Tensor,
    image: Tensor,
    sigma_color: float = DEFAULT_SIGMA,
    sigma_xy: float = DEFAULT_SIGMA_XY,
    factor: int = DEFAULT_FACTOR,
    reduction: Reduction = "mean",
) -> Tensor:
    """Dense-CRF loss on a foreground map ``(B, H, W)``: mean over pairs of ``w_pq |x_p - x_q|``."""
    _check_params(sigma_color, sigma_xy, factor, reduction)
    check_foreground(foreground)
    batch, height, width = foreground.shape
    check_image(image, batch, height, width)
    if height // factor * (width // factor) < 2:
        raise ValueError(
            f"foreground of shape {tuple(foreground.shape)} pooled by factor={factor} "
            "leaves fewer than 2 pixels"
        )
    pooled = F.avg_pool2d(foreground.unsqueeze(1), factor).flatten(1) if factor > 1 else foreground.flatten(1)
    cells = pooled.shape[1]
    weights = dense_crf_weights(image, sigma_color, sigma_xy, factor)
    differences = (pooled.unsqueeze(2) - pooled.unsqueeze(1)).abs()
    per_image = (weights * differences).sum((1, 2)) / (cells * (cells - 1))
    return per_image.mean() if reduction == "mean" else per_image


def dense_crf_loss(
    logits: Tensor,
    image: Tensor,
    sigma_color: float = DEFAULT_SIGMA,
    sigma_xy: float = DEFAULT_SIGMA_XY,
    factor: int = DEFAULT_FACTOR,
    reduction: Reduction = "mean",
) -> Tensor:
    """Dense-CRF loss on 2-channel logits ``(B, 2, H, W)`` (softmax inside, foreground channel)."""
    return dense_crf_loss_from_foreground(
        foreground_probability(logits), image, sigma_color, sigma_xy, factor, reduction
    )


class DenseCRFLoss(nn.Module):
    """Module form of :func:`dense_crf_loss`: ``loss(logits, image)``."""

    def __init__(
        self,
        sigma_color: float = DEFAULT_SIGMA,
        sigma_xy: float = DEFAULT_SIGMA_XY,
        factor: int = DEFAULT_FACTOR,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        _check_params(sigma_color, sigma_xy, factor, reduction)
        self.sigma_color = float(sigma_color)
        self.sigma_xy = float(sigma_xy)
        self.factor = factor
        self.reduction = reduction

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        return dense_crf_loss(logits, image, self.sigma_color, self.sigma_xy, self.factor, self.reduction)

    def extra_repr(self) -> str:
        return f"sigma_color={self.sigma_color}, sigma_xy={self.sigma_xy}, factor={self.factor}"
