"""Cross-entropy losses on a softmax head: plain CE and class-agnostic CE (CACE).

Conventions shared by every loss in :mod:`lofiseg.losses`: logits are ``(B, M, H, W)`` float tensors, masks
are ``(B, H, W)`` integer label maps (long or uint8) in which ``255`` marks ignored pixels. Losses take
logits and apply the softmax over the channel dimension themselves (in float32 for half-precision logits).

CACE is the class-agnostic cross-entropy of Sharma et al., *Class-Agnostic Segmentation Loss and Its
Application to Salient Object Detection and Segmentation* (Sec. 4.2, "Models"), printed there as
``min(-y log p, -(1 - y) log p)``, which read literally is always 0 (one factor is 0 for binary ``y``). This
module implements the sensible reading: per image, the smaller of the mean cross-entropy against the mask
and against the flipped mask, ``min(CE(s, y), CE(s, 1 - y))``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = 255
_MASK_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_logits(logits: Tensor, *, name: str = "logits", channels: int | None = None) -> None:
    """Raise TypeError/ValueError unless ``logits`` is a float ``(B, M, H, W)`` tensor (``M == channels``)."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, M, H, W), got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() != 4:
        raise ValueError(f"{name} must have shape (B, M, H, W), got shape {tuple(logits.shape)}")
    if channels is not None and logits.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels (shape (B, {channels}, H, W)), "
            f"got shape {tuple(logits.shape)}"
        )
    if logits.shape[0] == 0 or logits.shape[2] == 0 or logits.shape[3] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(logits.shape)}")


def check_mask(mask: Tensor, logits: Tensor, *, name: str = "mask", logits_name: str = "logits") -> None:
    """Raise TypeError/ValueError unless ``mask`` is an integer ``(B, H, W)`` map matching ``logits``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(mask).__name__}")
    if mask.dtype not in _MASK_DTYPES:
        raise TypeError(
            f"{name} must be an integer label map (torch.long or torch.uint8), got dtype {mask.dtype}"
        )
    expected = (logits.shape[0], logits.shape[2], logits.shape[3])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"{name} must have shape (B, H, W) = {expected} to match {logits_name} of shape "
            f"{tuple(logits.shape)}, got shape {tuple(mask.shape)}"
        )
    if mask.device != logits.device:
        raise ValueError(f"{name} is on {mask.device} but {logits_name} is on {logits.device}")


def check_mask_values(mask: Tensor, *, max_label: int, ignore_index: int, name: str = "mask") -> None:
    """Raise ValueError if a label of ``mask`` is neither in ``[0, max_label]`` nor ``ignore_index``."""
    if mask.dtype == torch.uint8 and max_label >= 255:
        return  # every uint8 value is a valid label
    low, high = torch.aminmax(mask)
    if int(low) >= 0 and int(high) <= max_label:
        return
    labels = mask.long()
    invalid = (labels != ignore_index) & ((labels < 0) | (labels > max_label))
    if bool(invalid.any()):
        bad = sorted({int(v) for v in labels[invalid].unique()[:5].tolist()})
        raise ValueError(
            f"{name} must hold labels in [0, {max_label}] or the ignore index {ignore_index}, "
            f"got labels {bad}"
        )


def at_least_float32(tensor: Tensor) -> Tensor:
    """Half-precision (float16/bfloat16) tensors as float32, others unchanged: losses sum in >= fp32."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def zero_loss(logits: Tensor) -> Tensor:
    """A scalar 0 that stays attached to the graph, so ``backward()`` works on an all-ignored batch."""
    return logits.sum() * 0.0


def cross_entropy_loss(logits: Tensor, mask: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Softmax cross-entropy, mean over the non-ignored pixels of the whole batch.

    Takes logits ``(B, M, H, W)`` (softmax applied inside) and labels ``(B, H, W)`` in ``[0, M - 1]`` or
    ``ignore_index``. A batch without labelled pixels gives 0 with a (zero) gradient instead of NaN.
    """
    check_logits(logits)
    check_mask(mask, logits)
    check_mask_values(mask, max_label=logits.shape[1] - 1, ignore_index=ignore_index)
    labels = mask.long()
    per_pixel = F.cross_entropy(at_least_float32(logits), labels, ignore_index=ignore_index, reduction="none")
    labelled = (labels != ignore_index).sum()
    if int(labelled) == 0:
        return zero_loss(logits)
    return per_pixel.sum() / labelled


def class_agnostic_cross_entropy_loss(
    logits: Tensor,
    mask: Tensor,
    ignore_index: int = IGNORE_INDEX,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Class-agnostic CE (CACE, Sharma et al. Sec. 4.2): per image ``min(CE(s, y), CE(s, 1 - y))``.

    ``logits`` are ``(B, 2, H, W)`` (softmax applied inside); ``mask`` is binary ``{0, 1}`` with
    ``ignore_index`` for ignored pixels. ``CE`` is the mean over the image's labelled pixels, so the loss is
    invariant to flipping the mask of any image. ``reduction="mean"`` averages over the images that have at
    least one labelled pixel (0 with a gradient when there is none); ``"none"`` returns ``(B,)`` values with
    0 for images without labelled pixels.
    """
    check_logits(logits, channels=2)
    check_mask(mask, logits)
    check_mask_values(mask, max_label=1, ignore_index=ignore_index)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    labels = mask.long().flatten(1)  # (B, N)
    labelled = labels != ignore_index
    target = torch.where(labelled, labels, torch.zeros_like(labels))
    log_probs = F.log_softmax(at_least_float32(logits), dim=1).flatten(2)  # (B, 2, N)
    nll_mask = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)  # -log s_y(x)
    nll_flipped = -log_probs.gather(1, (1 - target).unsqueeze(1)).squeeze(1)  # -log s_{1-y}(x)
    weights = labelled.to(log_probs.dtype)
    counts = weights.sum(1)
    denom = counts.clamp_min(1.0)
    ce_mask = (nll_mask * weights).sum(1) / denom
    ce_flipped = (nll_flipped * weights).sum(1) / denom
    per_image = torch.minimum(ce_mask, ce_flipped)
    if reduction == "none":
        return per_image
    has_labels = counts > 0
    if not bool(has_labels.any()):
        return zero_loss(logits)
    return per_image[has_labels].mean()


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy_loss` (takes logits; ignore label 255 by default)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        return cross_entropy_loss(logits, mask, ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}"


class ClassAgnosticCrossEntropyLoss(nn.Module):
    """Module form of :func:`class_agnostic_cross_entropy_loss` (CACE; takes 2-channel logits)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, reduction: Literal["mean", "none"] = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        return class_agnostic_cross_entropy_loss(
            logits, mask, ignore_index=self.ignore_index, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"
