"""Class-agnostic segmentation (CAS) loss, Sharma et al., Eq. 1.

For an image with regions ``r_1 .. r_N`` (the distinct labels of its mask, 255 ignored) and softmax output
``s`` with ``M`` channels, with ``s_hat(r)`` the mean of ``s`` over region ``r``::

    CAS = alpha * sum_i (1/|r_i|) sum_{x in r_i} ||s(x) - s_hat(r_i)||^2              (uniformer)
          - (1 - alpha) * sum_i sum_{j != i} ||s_hat(r_i) - s_hat(r_j)||^2            (discriminator)

The pair sum runs over ordered pairs, so each unordered pair counts twice, as printed in Eq. 1.

This module follows Eq. 1, not the authors' public code. That code differs: its uniformer covers only the
foreground region, it counts each pair once, adds ``eps = 3e-5`` and divides by a constant 40. As a result
it is not invariant to flipping the mask, while Eq. 1 is invariant to any permutation of the region labels.
That invariance is what the low-fidelity experiment (region labels flipped at random) relies on.

Implementation: labels ``0..254`` need not be contiguous; each image gets a 256-bin table (one bin per label
value, plus one bin that collects ignored pixels and is dropped), filled with one ``scatter_add`` over the
pixels. Region means are gathered back per pixel for the uniformer. The discriminator uses the exact identity
``sum_{i != j} ||a_i - a_j||^2 = 2 N sum_i ||a_i - a_bar||^2`` (``a_bar`` the mean of the ``N`` region
means), which is O(N) and free of cancellation. Total cost is O(B * M * H * W).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from lofiseg.losses.ce import (
    IGNORE_INDEX,
    at_least_float32,
    check_logits,
    check_mask,
    check_mask_values,
    zero_loss,
)

DEFAULT_ALPHA = 0.1
_LABEL_BINS = 256  # one bin per possible label value 0..255 (uint8 masks)


class CASTerms(NamedTuple):
    """Unweighted per-image terms of Eq. 1, each of shape ``(B,)``."""

    uniformer: Tensor  # sum_i (1/|r_i|) sum_{x in r_i} ||s(x) - s_hat(r_i)||^2
    discriminator: Tensor  # sum_i sum_{j != i} ||s_hat(r_i) - s_hat(r_j)||^2 (ordered pairs)
    num_regions: Tensor  # number of distinct non-ignored labels (int64)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_ignore_index(ignore_index: int) -> None:
    if not 0 <= int(ignore_index) < _LABEL_BINS:
        raise ValueError(f"ignore_index must be in [0, {_LABEL_BINS - 1}] for CAS, got {ignore_index}")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def cas_terms(probs: Tensor, mask: Tensor, ignore_index: int = IGNORE_INDEX) -> CASTerms:
    """Uniformer and discriminator of Eq. 1 per image, from probabilities ``(B, M, H, W)``.

    ``mask`` is a ``(B, H, W)`` integer map with labels in ``[0, 255]``; ``ignore_index`` pixels belong to
    no region. Images without labelled pixels get 0 for both terms and ``num_regions == 0``.
    """
    check_logits(probs, name="probs")
    check_mask(mask, probs, logits_name="probs")
    _check_ignore_index(ignore_index)
    check_mask_values(mask, max_label=_LABEL_BINS - 1, ignore_index=ignore_index)
    probs = at_least_float32(probs)
    batch, channels, height, width = probs.shape
    pixels = height * width
    labels = mask.reshape(batch, pixels).long()
    labelled = labels != ignore_index
    dump_bin = _LABEL_BINS  # ignored pixels land here; the bin is excluded from every sum below
    bins = torch.where(labelled, labels, torch.full_like(labels, dump_bin))  # (B, P)
    table = _LABEL_BINS + 1

    offsets = torch.arange(batch, device=bins.device).unsqueeze(1) * table
    counts = torch.bincount((bins + offsets).flatten(), minlength=batch * table).reshape(batch, table)
    present = counts > 0
    present[:, dump_bin] = False
    inverse_size = torch.where(
        present, 1.0 / counts.clamp_min(1).to(probs.dtype), torch.zeros((), dtype=probs.dtype)
    )

    s = probs.reshape(batch, channels, pixels)
    pixel_bins = bins.unsqueeze(1).expand(batch, channels, pixels)
    sums = s.new_zeros(batch, channels, table).scatter_add(2, pixel_bins, s)
    means = sums * inverse_size.unsqueeze(1)  # (B, M, table): s_hat(r) for present bins, 0 elsewhere

    deviation = s - means.gather(2, pixel_bins)  # s(x) - s_hat(r(x))
    pixel_weight = inverse_size.gather(1, bins)  # 1/|r(x)|, 0 for ignored pixels
    uniformer = (deviation.square().sum(1) * pixel_weight).sum(1)

    num_regions = present.sum(1)
    regions = num_regions.to(probs.dtype)
    present_f = present.to(probs.dtype).unsqueeze(1)
    centre = (means * present_f).sum(2) / regions.clamp_min(1.0).unsqueeze(1)  # mean of the region means
    spread = ((means - centre.unsqueeze(2)).square() * present_f).sum((1, 2))
    discriminator = 2.0 * regions * spread
    return CASTerms(uniformer=uniformer, discriminator=discriminator, num_regions=num_regions)


def cas_loss_from_probs(
    probs: Tensor,
    mask: Tensor,
    alpha: float = DEFAULT_ALPHA,
    ignore_index: int = IGNORE_INDEX,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """CAS loss (Eq. 1) on probabilities ``(B, M, H, W)`` (the softmax output ``s``).

    ``reduction="mean"`` averages over the images that have at least one labelled pixel (an ignore-only
    image contributes nothing; an all-ignored batch gives 0 with a gradient). ``"none"`` returns ``(B,)``
    with 0 for ignore-only images. Per image the loss lies in ``[-(1 - alpha) * 2 N (N - 1), alpha * N)``.
    """
    _check_alpha(alpha)
    _check_reduction(reduction)
    terms = cas_terms(probs, mask, ignore_index=ignore_index)
    per_image = alpha * terms.uniformer - (1.0 - alpha) * terms.discriminator
    if reduction == "none":
        return per_image
    has_regions = terms.num_regions > 0
    if not bool(has_regions.any()):
        return zero_loss(probs)
    return per_image[has_regions].mean()


def cas_loss(
    logits: Tensor,
    mask: Tensor,
    alpha: float = DEFAULT_ALPHA,
    ignore_index: int = IGNORE_INDEX,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """CAS loss (Eq. 1) on logits ``(B, M, H, W)``: softmax over channels, :func:`cas_loss_from_probs`."""
    check_logits(logits)
    return cas_loss_from_probs(
        torch.softmax(at_least_float32(logits), dim=1),
        mask,
        alpha=alpha,
        ignore_index=ignore_index,
        reduction=reduction,
    )


class CASLoss(nn.Module):
    """Module form of :func:`cas_loss` (takes logits; ``alpha = 0.1`` as in the paper)."""

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        ignore_index: int = IGNORE_INDEX,
        reduction: Literal["mean", "none"] = "mean",
    ) -> None:
        super().__init__()
        _check_alpha(alpha)
        _check_ignore_index(ignore_index)
        _check_reduction(reduction)
        self.alpha = float(alpha)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        return cas_loss(
            logits, mask, alpha=self.alpha, ignore_index=self.ignore_index, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
