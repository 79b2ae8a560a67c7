"""Semantic-segmentation metrics: confusion matrix, per-class IoU, mIoU and pixel accuracy.

Definitions (PASCAL VOC, used for the multi-class DeepLab of Veksler Sec. 4.3 and the CAS general
segmentation experiments): with the confusion matrix ``M[t, p]`` = number of pixels of target class ``t``
predicted as class ``p``,

    IoU_c = M[c, c] / (sum_p M[c, p] + sum_t M[t, c] - M[c, c]),   pixel_acc = trace(M) / sum(M).

Pixels whose target equals ``ignore_index`` (255) are excluded everywhere. A class absent from both the
prediction and the target has a 0/0 IoU: it is reported as NaN in ``iou`` and left out of the mean
(``miou`` is the mean over the classes with a defined IoU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ConfusionMeter", "confusion_matrix", "iou_from_confusion", "iou_report", "semantic_scores"]

LabelArray = np.ndarray | torch.Tensor


def _as_label_tensor(x: LabelArray, name: str) -> torch.Tensor:
    """Integer label map(s) as an int64 tensor on their own device; TypeError for non-integer input."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integer class ids, got numpy dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(
                f"{name} must hold integer class ids, got torch dtype {x.dtype} (take argmax over the class "
                "dimension first)"
            )
        return x.detach().to(torch.int64)
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _within(ids: torch.Tensor, num_classes: int) -> bool:
    if ids.numel() == 0:
        return True
    low, high = torch.aminmax(ids)
    return bool(low >= 0) and bool(high < num_classes)


def _outside(ids: torch.Tensor, num_classes: int) -> list[int]:
    """Up to 5 offending ids, for error messages."""
    return sorted(ids[(ids < 0) | (ids >= num_classes)].unique().tolist())[:5]


def _check_ignore_index(num_classes: int, ignore_index: int | None) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index must lie outside the class range [0, {num_classes}), got {ignore_index}"
        )


def confusion_matrix(
    pred: LabelArray, target: LabelArray, num_classes: int, *, ignore_index: int | None = 255
) -> torch.Tensor:
    """Confusion matrix ``M[target, pred]`` (int64, CPU) of one map ``[H, W]`` or a batch ``[B, H, W]``.

    One ``bincount`` over ``target * C + pred`` of the non-ignored pixels. Raises ValueError on a shape
    mismatch, on predicted ids outside ``[0, C)`` and on target ids outside ``[0, C) + {ignore_index}``.
    """
    _check_ignore_index(num_classes, ignore_index)
    pred_t = _as_label_tensor(pred, "pred")
    target_t = _as_label_tensor(target, "target").to(pred_t.device)
    if pred_t.shape != target_t.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred_t.shape)} "
            f"and target {tuple(target_t.shape)}"
        )
    if pred_t.ndim not in (2, 3):
        raise ValueError(f"pred and target must be [H, W] or [B, H, W], got shape {tuple(pred_t.shape)}")
    if not _within(pred_t, num_classes):
        raise ValueError(
            f"pred ids must lie in [0, {num_classes}), got values {_outside(pred_t, num_classes)}"
        )
    if ignore_index is None:
        target_valid, pred_valid = target_t.reshape(-1), pred_t.reshape(-1)
    else:
        valid = target_t != ignore_index
        target_valid, pred_valid = target_t[valid], pred_t[valid]
    if not _within(target_valid, num_classes):
        raise ValueError(
            f"target ids must lie in [0, {num_classes}) or equal ignore_index={ignore_index}, got values "
            f"{_outside(target_valid, num_classes)}"
        )
    pairs = target_valid * num_classes + pred_valid
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (float64) from a confusion matrix; NaN for classes absent from target and prediction."""
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square [C, C] matrix, got shape {tuple(confusion.shape)}")
    m = confusion.to(torch.float64)
    tp = torch.diagonal(m)
    union = m.sum(dim=0) + m.sum(dim=1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1.0), torch.full_like(tp, math.nan))


def _scores_from_confusion(confusion: torch.Tensor) -> dict[str, float | list[float]]:
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("no valid pixels: every target pixel equals ignore_index, IoU is undefined")
    iou = iou_from_confusion(confusion)
    defined = ~torch.isnan(iou)
    return {
        "miou": float(iou[defined].mean()),
        "iou": [float(v) for v in iou],
        "pixel_acc": float(torch.diagonal(confusion).sum()) / total,
    }


def semantic_scores(
    pred: LabelArray, target: LabelArray, num_classes: int, *, ignore_index: int | None = 255
) -> dict[str, float | list[float]]:
    """``{"miou", "iou", "pixel_acc"}`` of one map or batch (see ``ConfusionMeter`` for the conventions)."""
    return _scores_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index=ignore_index))


def iou_report(scores: dict[str, float | list[float]], classes: Sequence[str]) -> dict[str, object]:
    """``scores`` as reports record them: miou, pixel_acc and ``iou`` by class name (None where the class is
    absent from both truth and prediction)."""
    return {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
            "iou": {c: None if math.isnan(v) else v for c, v in zip(classes, scores["iou"], strict=True)}}


class ConfusionMeter:
    """Accumulates a confusion matrix over a dataset; ``compute()`` gives dataset-level IoU (not per image).

    ``update(pred, target)`` takes integer maps ``[H, W]`` or ``[B, H, W]`` (numpy or torch). An all-ignore
    batch adds nothing; ``compute()`` raises ValueError while no valid pixel has been seen.
    """

    def __init__(self, num_classes: int, *, ignore_index: int | None = 255) -> None:
        _check_ignore_index(num_classes, ignore_index)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: LabelArray, target: LabelArray) -> None:
        self.confusion += confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)

    def compute(self) -> dict[str, float | list[float]]:
        return _scores_from_confusion(self.confusion)
