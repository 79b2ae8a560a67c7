"""Regularized losses for single-class segmentation without ground truth (Veksler, *Regularized Loss for
Weakly Supervised Single Class Semantic Segmentation*).

The network has 2 output channels (0 background, 1 foreground); every loss takes logits ``(B, 2, H, W)``,
applies the softmax inside and works on the foreground probability ``x = softmax(logits)[:, 1]``. Colours
come from the image the network sees, ImageNet-normalised ``(B, 3, H, W)``, so ``sigma`` is in units of the
per-channel standard deviation.

Where the paper is ambiguous these choices follow the author's public code (SingleClassRL):

* sparse-CRF (Eq. 3): mean of ``w_pq |x_p - x_q|`` over vertical pairs and mean over horizontal pairs,
  averaged; the paper writes a sum. ``lambda_reg = 100`` of the normal stage is calibrated for this mean.
* volumetric (Eq. 4): the second term is a batch mean by default (``min_size_reduction="mean"``, as in the
  code); the paper's sum is available with ``"sum"``. ``lambda_s = 5``.
* negative (Eq. 7): ``lambda_neg * (mean foreground probability)^2``; the printed ``- 1`` would push
  negative images to the foreground and looks like a typo.
* schedule (Eq. 8): sigma runs from 0.05 to 0.15 inclusive in 15 steps (``sigma_rule="code"``); Eq. 8 as
  printed starts at 0.0567 (``sigma_rule="paper"``).

Positional loss (Eq. 5) follows the paper: the border set is the union of the ``w``-wide strips, the centre
set a ``c x c`` box, ``w = c = 3`` (the code uses the background channel per strip and a 4 x 4 box).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from lofiseg.losses.ce import at_least_float32, check_logits, zero_loss
from lofiseg.losses.regularized_schedule import (  # the paper's constants and the schedule, importable from here
    BORDER_WIDTH,
    CENTER_SIZE,
    DEFAULT_SIGMA,
    LAMBDA_NEG,
    LAMBDA_P,
    LAMBDA_REG,
    LAMBDA_S,
    LAMBDA_V,
    VOLUMETRIC_MIN,
    VOLUMETRIC_TARGET,
    RegularizedLossSchedule,  # noqa: F401
    StageParams,
    check_positive,
    sigma_schedule,  # noqa: F401
)

FOREGROUND_CHANNEL = 1
Reduction = Literal["mean", "none"]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _reduce(per_image: Tensor, reduction: str) -> Tensor:
    _check_reduction(reduction)
    return per_image.mean() if reduction == "mean" else per_image


def check_image(image: Tensor, batch: int, height: int, width: int, *, name: str = "image") -> None:
    """Raise TypeError/ValueError unless ``image`` is a float ``(batch, 3, height, width)`` tensor."""
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point (ImageNet-normalised) tensor, got dtype {image.dtype}"
        )
    expected = (batch, 3, height, width)
    if tuple(image.shape) != expected:
        raise ValueError(f"{name} must have shape (B, 3, H, W) = {expected}, got shape {tuple(image.shape)}")


def check_foreground(foreground: Tensor, *, name: str = "foreground") -> None:
    """Raise TypeError/ValueError unless ``foreground`` is a float ``(B, H, W)`` probability map."""
    if not isinstance(foreground, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(foreground).__name__}")
    if not foreground.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {foreground.dtype}")
    if foreground.dim() != 3 or foreground.numel() == 0:
        raise ValueError(f"{name} must have non-empty shape (B, H, W), got shape {tuple(foreground.shape)}")


def foreground_probability(logits: Tensor) -> Tensor:
    """Softmax of 2-channel logits ``(B, 2, H, W)`` (float32 for half inputs), foreground ``(B, H, W)``."""
    check_logits(logits, channels=2)
    return torch.softmax(at_least_float32(logits), dim=1)[:, FOREGROUND_CHANNEL]


def edge_weights(image: Tensor, sigma: float = DEFAULT_SIGMA) -> tuple[Tensor, Tensor]:
    """Eq. 2, ``w_pq = exp(-||C_p - C_q||^2 / (2 sigma^2))`` for 4-connected neighbours.

    Returns ``(vertical, horizontal)`` of shapes ``(B, H - 1, W)`` and ``(B, H, W - 1)``.
    """
    check_positive("sigma", sigma)
    vertical = (image[:, :, 1:, :] - image[:, :, :-1, :]).square().sum(1)
    horizontal = (image[:, :, :, 1:] - image[:, :, :, :-1]).square().sum(1)
    scale = -1.0 / (2.0 * float(sigma) ** 2)
    return torch.exp(vertical * scale), torch.exp(horizontal * scale)


def sparse_crf_loss_from_foreground(
    foreground: Tensor, image: Tensor, sigma: float = DEFAULT_SIGMA, reduction: Reduction = "mean"
) -> Tensor:
    """Sparse-CRF loss (Eq. 1-3, absolute relaxation) on a foreground map ``(B, H, W)`` in ``[0, 1]``.

    Per image: ``(mean_vertical w_pq |x_p - x_q| + mean_horizontal w_pq |x_p - x_q|) / 2``; ``"mean"``
    averages over the batch. A binary mask gives the Potts loss of Eq. 1 normalised the same way.
    """
    check_foreground(foreground)
    batch, height, width = foreground.shape
    if height < 2 or width < 2:
        raise ValueError(
            f"foreground must be at least 2 x 2 for the sparse-CRF, got shape {tuple(foreground.shape)}"
        )
    check_image(image, batch, height, width)
    w_vertical, w_horizontal = edge_weights(image, sigma)
    vertical = (w_vertical * (foreground[:, 1:, :] - foreground[:, :-1, :]).abs()).mean((1, 2))
    horizontal = (w_horizontal * (foreground[:, :, 1:] - foreground[:, :, :-1]).abs()).mean((1, 2))
    return _reduce((vertical + horizontal) / 2.0, reduction)


def sparse_crf_loss(
    logits: Tensor, image: Tensor, sigma: float = DEFAULT_SIGMA, reduction: Reduction = "mean"
) -> Tensor:
    """Sparse-CRF loss (Eq. 3) on 2-channel logits; see :func:`sparse_crf_loss_from_foreground`."""
    return sparse_crf_loss_from_foreground(foreground_probability(logits), image, sigma, reduction)


def volumetric_loss(
    logits: Tensor,
    target_fraction: float = VOLUMETRIC_TARGET,
    min_fraction: float = VOLUMETRIC_MIN,
    lambda_s: float = LAMBDA_S,
    min_size_reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Volumetric loss (Eq. 4) of a batch, with ``x_bar_i`` the mean foreground probability of image i:

    ``(mean_i x_bar_i - target)^2 + lambda_s * R_i [x_bar_i < min_fraction] (x_bar_i - min_fraction)^2``

    with ``target = target_fraction``, where ``R`` is a batch mean (author's code, default) or a sum
    (paper, ``min_size_reduction="sum"``).
    """
    if min_size_reduction not in ("mean", "sum"):
        raise ValueError(f"min_size_reduction must be 'mean' or 'sum', got {min_size_reduction!r}")
    sizes = foreground_probability(logits).mean((1, 2))
    batch_term = (sizes.mean() - target_fraction).square()
    too_small = (sizes.clamp(max=min_fraction) - min_fraction).square()  # 0 unless x_bar_i < min_fraction
    small_term = too_small.mean() if min_size_reduction == "mean" else too_small.sum()
    return batch_term + lambda_s * small_term


def positional_loss(
    logits: Tensor, border_width: int = BORDER_WIDTH, center_size: int = CENTER_SIZE, reduction: Reduction = "mean"
) -> Tensor:
    """Positional loss (Eq. 5) per image: ``(mean_{p in B} x_p)^2 + (mean_{p in C} x_p - 1)^2``.

    ``B`` holds the pixels within ``border_width`` of the image border, ``C`` the ``center_size`` square
    starting at row ``(H - c) // 2`` and column ``(W - c) // 2``. ``"mean"`` averages over the batch.
    """
    foreground = foreground_probability(logits)
    _, height, width = foreground.shape
    if border_width < 1 or center_size < 1 or center_size > min(height, width):
        raise ValueError(
            f"border_width must be >= 1 and center_size in [1, min(H, W) = {min(height, width)}], "
            f"got border_width={border_width}, center_size={center_size}"
        )
    rows = torch.arange(height, device=foreground.device)
    cols = torch.arange(width, device=foreground.device)
    row_border = (rows < border_width) | (rows >= height - border_width)
    col_border = (cols < border_width) | (cols >= width - border_width)
    border = (row_border.unsqueeze(1) | col_border.unsqueeze(0)).to(foreground.dtype)
    border_mean = (foreground * border).sum((1, 2)) / border.sum()
    top, left = (height - center_size) // 2, (width - center_size) // 2
    center_mean = foreground[:, top : top + center_size, left : left + center_size].mean((1, 2))
    return _reduce(border_mean.square() + (center_mean - 1.0).square(), reduction)


def negative_loss(logits: Tensor, lambda_neg: float = LAMBDA_NEG, reduction: Reduction = "mean") -> Tensor:
    """Negative loss (Eq. 7, without the printed ``- 1``): ``lambda_neg * (mean_p x_p)^2`` per image."""
    sizes = foreground_probability(logits).mean((1, 2))
    return _reduce(lambda_neg * sizes.square(), reduction)


class RegularizedLossTerms(NamedTuple):
    """Unweighted terms of Eq. 6 (and Eq. 7) plus the weighted total, all scalars."""

    total: Tensor
    sparse_crf: Tensor
    volumetric: Tensor
    positional: Tensor
    negative: Tensor


def complete_regularized_terms(
    logits: Tensor,
    image: Tensor,
    negative: Tensor | None = None,
    *,
    sigma: float = DEFAULT_SIGMA,
    lambda_reg: float = LAMBDA_REG,
    lambda_v: float = LAMBDA_V,
    lambda_p: float = LAMBDA_P,
    lambda_neg: float = LAMBDA_NEG,
    lambda_s: float = LAMBDA_S,
    target_fraction: float = VOLUMETRIC_TARGET,
    min_fraction: float = VOLUMETRIC_MIN,
    border_width: int = BORDER_WIDTH,
    center_size: int = CENTER_SIZE,
    min_size_reduction: Literal["mean", "sum"] = "mean",
) -> RegularizedLossTerms:
    """Complete loss (Eq. 6) ``lambda_reg L_reg + lambda_v L_v + lambda_p L_p``, with its terms.

    ``negative`` is an optional ``(B,)`` bool tensor marking negative images (no object of the class): Eq. 6
    is then computed on the other images only and ``L_neg`` (Eq. 7, already weighted by ``lambda_neg``) on
    the negatives is added. The ``negative`` field holds that weighted Eq. 7 value; missing parts are 0.
    """
    check_logits(logits, channels=2)
    batch, _, height, width = logits.shape
    check_image(image, batch, height, width)
    positive = torch.ones(batch, dtype=torch.bool, device=logits.device)
    if negative is not None:
        if not isinstance(negative, Tensor) or negative.dtype != torch.bool:
            got = negative.dtype if isinstance(negative, Tensor) else type(negative).__name__
            raise TypeError(f"negative must be a torch.bool tensor of shape ({batch},), got {got}")
        if tuple(negative.shape) != (batch,):
            raise ValueError(f"negative must have shape ({batch},), got shape {tuple(negative.shape)}")
        positive = ~negative
    zero = zero_loss(logits)
    if bool(positive.all()):
        pos_logits, pos_image = logits, image
    else:
        pos_logits, pos_image = logits[positive], image[positive]
    if pos_logits.shape[0] > 0:
        reg = sparse_crf_loss(pos_logits, pos_image, sigma)
        vol = volumetric_loss(pos_logits, target_fraction, min_fraction, lambda_s, min_size_reduction)
        pos = positional_loss(pos_logits, border_width, center_size)
    else:
        reg = vol = pos = zero
    neg = (
        negative_loss(logits[negative], lambda_neg) if negative is not None and bool(negative.any()) else zero
    )
    total = lambda_reg * reg + lambda_v * vol + lambda_p * pos + neg
    return RegularizedLossTerms(total=total, sparse_crf=reg, volumetric=vol, positional=pos, negative=neg)


def complete_regularized_loss(
    logits: Tensor, image: Tensor, negative: Tensor | None = None, **params: Any
) -> Tensor:
    """Scalar complete loss (Eq. 6, + Eq. 7 on negatives); keywords as :func:`complete_regularized_terms`."""
    return complete_regularized_terms(logits, image, negative, **params).total


class SparseCRFLoss(nn.Module):
    """Module form of :func:`sparse_crf_loss`: ``loss(logits, image)``."""

    def __init__(self, sigma: float = DEFAULT_SIGMA, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_positive("sigma", sigma)
        _check_reduction(reduction)
        self.sigma = float(sigma)
        self.reduction = reduction

    def forward(self, logits: Tensor, image: Tensor) -> Tensor:
        return sparse_crf_loss(logits, image, self.sigma, self.reduction)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, reduction={self.reduction!r}"


class VolumetricLoss(nn.Module):
    """Module form of :func:`volumetric_loss`: ``loss(logits)``."""

    def __init__(
        self,
        target_fraction: float = VOLUMETRIC_TARGET,
        min_fraction: float = VOLUMETRIC_MIN,
        lambda_s: float = LAMBDA_S,
        min_size_reduction: Literal["mean", "sum"] = "mean",
    ) -> None:
        super().__init__()
        if min_size_reduction not in ("mean", "sum"):
            raise ValueError(f"min_size_reduction must be 'mean' or 'sum', got {min_size_reduction!r}")
        self.target_fraction = target_fraction
        self.min_fraction = min_fraction
        self.lambda_s = lambda_s
        self.min_size_reduction = min_size_reduction

    def forward(self, logits: Tensor) -> Tensor:
        return volumetric_loss(
            logits, self.target_fraction, self.min_fraction, self.lambda_s, self.min_size_reduction
        )


class PositionalLoss(nn.Module):
    """Module form of :func:`positional_loss`: ``loss(logits)``."""

    def __init__(self, border_width: int = BORDER_WIDTH, center_size: int = CENTER_SIZE, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.border_width = border_width
        self.center_size = center_size
        self.reduction = reduction

    def forward(self, logits: Tensor) -> Tensor:
        return positional_loss(logits, self.border_width, self.center_size, self.reduction)


class NegativeLoss(nn.Module):
    """Module form of :func:`negative_loss`: ``loss(logits)`` on negative images."""

    def __init__(self, lambda_neg: float = LAMBDA_NEG, reduction: Reduction = "mean") -> None:
        super().__init__()
        _check_reduction(reduction)
        self.lambda_neg = lambda_neg
        self.reduction = reduction

    def forward(self, logits: Tensor) -> Tensor:
        return negative_loss(logits, self.lambda_neg, self.reduction)


class CompleteRegularizedLoss(nn.Module):
    """Module form of Eq. 6 (+ Eq. 7): ``loss(logits, image, negative=None)``; defaults = normal stage.

    Call :meth:`set_stage` with :meth:`RegularizedLossSchedule.at` each epoch to follow the schedule, and
    :meth:`terms` to log the parts.
    """

    def __init__(
        self,
        sigma: float = DEFAULT_SIGMA,
        lambda_reg: float = LAMBDA_REG,
        lambda_v: float = LAMBDA_V,
        lambda_p: float = LAMBDA_P,
        lambda_neg: float = LAMBDA_NEG,
        lambda_s: float = LAMBDA_S,
        target_fraction: float = VOLUMETRIC_TARGET,
        min_fraction: float = VOLUMETRIC_MIN,
        border_width: int = BORDER_WIDTH,
        center_size: int = CENTER_SIZE,
        min_size_reduction: Literal["mean", "sum"] = "mean",
    ) -> None:
        super().__init__()
        check_positive("sigma", sigma)
        if min_size_reduction not in ("mean", "sum"):
            raise ValueError(f"min_size_reduction must be 'mean' or 'sum', got {min_size_reduction!r}")
        self.sigma = float(sigma)
        self.lambda_reg = float(lambda_reg)
        self.lambda_v = float(lambda_v)
        self.lambda_p = float(lambda_p)
        self.lambda_neg = float(lambda_neg)
        self.lambda_s = float(lambda_s)
        self.target_fraction = float(target_fraction)
        self.min_fraction = float(min_fraction)
        self.border_width = int(border_width)
        self.center_size = int(center_size)
        self.min_size_reduction = min_size_reduction

    def set_stage(self, params: StageParams) -> None:
        """Adopt the sigma and weights of one schedule epoch."""
        check_positive("sigma", params.sigma)
        self.sigma = float(params.sigma)
        self.lambda_reg = float(params.lambda_reg)
        self.lambda_v = float(params.lambda_v)
        self.lambda_p = float(params.lambda_p)
        self.lambda_neg = float(params.lambda_neg)

    def terms(self, logits: Tensor, image: Tensor, negative: Tensor | None = None) -> RegularizedLossTerms:
        return complete_regularized_terms(
            logits,
            image,
            negative,
            sigma=self.sigma,
            lambda_reg=self.lambda_reg,
            lambda_v=self.lambda_v,
            lambda_p=self.lambda_p,
            lambda_neg=self.lambda_neg,
            lambda_s=self.lambda_s,
            target_fraction=self.target_fraction,
            min_fraction=self.min_fraction,
            border_width=self.border_width,
            center_size=self.center_size,
            min_size_reduction=self.min_size_reduction,
        )

    def forward(self, logits: Tensor, image: Tensor, negative: Tensor | None = None) -> Tensor:
        return self.terms(logits, image, negative).total

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, lambda_reg={self.lambda_reg}, lambda_v={self.lambda_v}, "
            f"lambda_p={self.lambda_p}, lambda_neg={self.lambda_neg}, lambda_s={self.lambda_s}"
        )
