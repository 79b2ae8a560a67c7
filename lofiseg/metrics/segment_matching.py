"""Class-agnostic segment metrics of Dille et al. (Sec. 5, "Metrics"; Tables 1-3): recall, mIoU, boundary IoU.

Inputs are integer segment maps ``[H, W]`` with arbitrary ids. Ground-truth pixels equal to ``ignore_index``
(255) are dropped from every count. Pixels equal to ``background_id`` (None by default) belong to no segment
in either map: Dille et al. (Sec. 3.3) treat the unlabelled background as "no entity", so a background
pixel inside a predicted segment still enlarges that segment's area, but the background is never a
ground-truth segment to recall, and predicted segments are never penalised as false positives (Sec. 5).

Matching: the IoU matrix between all ground-truth and predicted segments is computed from one bincount over
(gt, pred) pixel pairs. The paper counts a ground-truth segment as found when a predicted segment has
IoU > 0.5 with it and names no assignment step; since predicted segments are disjoint, IoU > 0.5 pairs are
unique (Kirillov et al. 2019, panoptic quality, Thm. 1), so recall is the same with best-match or Hungarian
matching. Default ``matching="best"``: each ground-truth segment is paired with its highest-IoU predicted
segment; ``"hungarian"`` pairs one-to-one maximising the total IoU (``scipy.optimize.linear_sum_assignment``),
leaving surplus ground-truth segments with IoU 0. For every ground-truth segment:

* recall: fraction of ground-truth segments whose paired IoU > ``iou_threshold`` (0.5);
* mIoU: mean over ground-truth segments of the paired mask IoU (0 when nothing overlaps);
* boundary IoU (Cheng et al. 2021) of the same pair: ``|(G_d n G) n (P_d n P)| / |(G_d n G) u (P_d n P)|``,
  where ``X_d n X`` is the set of pixels of X within chessboard distance d of its contour (the image border
  counts as contour, as in the boundary-IoU reference code: d iterations of a 3x3 erosion of the zero-padded
  mask). d = max(1, round(dilation_ratio x image diagonal)) with Cheng et al.'s dilation_ratio = 0.02, or an
  explicit ``dilation`` in pixels. The rim of an ignored ground-truth area is not a ground-truth contour.

``AgnosticMeter`` pools over all ground-truth segments of the dataset (each segment counts once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import maximum_filter, minimum_filter
from scipy.optimize import linear_sum_assignment

from lofiseg.metrics.bsds import LabelArray, as_label_map

__all__ = [
    "AgnosticMeter",
    "SegmentOverlap",
    "agnostic_scores",
    "boundary_band",
    "boundary_dilation",
    "match_segments",
    "segment_overlap",
]

Matching = Literal["best", "hungarian"]
BOUNDARY_IOU_DILATION_RATIO = 0.02


@dataclass(frozen=True)
class SegmentOverlap:
    """IoU matrices ``[G, P]`` between ground-truth and predicted segments (rows follow ``gt_ids``)."""

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray
    boundary_iou: np.ndarray


def boundary_dilation(shape: tuple[int, ...], dilation_ratio: float = BOUNDARY_IOU_DILATION_RATIO) -> int:
    """Cheng et al.'s band width d = max(1, round(dilation_ratio x image diagonal)) in pixels."""
    if dilation_ratio <= 0:
        raise ValueError(f"dilation_ratio must be > 0, got {dilation_ratio}")
    return max(1, int(round(dilation_ratio * float(np.hypot(shape[0], shape[1])))))


def boundary_band(labels: LabelArray, dilation: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Inner contour band: pixels whose (2d+1)x(2d+1) window reaches another label or leaves the image.

    With ``valid`` (bool [H, W]) unevaluated pixels neither count as another label nor get marked, so the rim
    of an ignored area is no contour (as ``regions.segment_boundaries``).
    """
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1 pixel, got {dilation}")
    lab = as_label_map(labels, "labels")
    ok = np.ones(lab.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != lab.shape:
        raise ValueError(
            f"labels and valid must have the same shape, got labels {lab.shape} and valid {ok.shape}"
        )
    codes = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)
    size = 2 * dilation + 1
    # Outside the image reads -1 (another label); unevaluated pixels never lower the min nor raise the max.
    low = minimum_filter(np.where(ok, codes, codes.max() + 1), size=size, mode="constant", cval=-1)
    high = maximum_filter(np.where(ok, codes, -2), size=size, mode="constant", cval=-1)
    return ok & (low != high)


def _codes(labels: np.ndarray, background_id: int | None, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compact segment ids of the evaluated pixels and the id list; background -> ``len(ids)``."""
    values = labels[valid]
    is_segment = values != background_id if background_id is not None else np.ones(values.shape, dtype=bool)
    ids, codes = np.unique(values[is_segment], return_inverse=True)
    out = np.full(values.shape, len(ids), dtype=np.int64)
    out[is_segment] = codes
    return out, ids


def _pair_counts(gt_codes: np.ndarray, pred_codes: np.ndarray, n_gt: int, n_pred: int) -> np.ndarray:
    """``[n_gt + 1, n_pred + 1]`` pixel counts of (gt, pred) code pairs, last row/column = background."""
    size = (n_gt + 1) * (n_pred + 1)
    return np.bincount(gt_codes * (n_pred + 1) + pred_codes, minlength=size).reshape(n_gt + 1, n_pred + 1)


def _iou(table: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray) -> np.ndarray:
    union = gt_area[:, None] + pred_area[None, :] - table
    return np.divide(table, union, out=np.zeros(table.shape), where=union > 0)


def segment_overlap(
    pred: LabelArray,
    gt: LabelArray,
    *,
    dilation: int | None = None,
    dilation_ratio: float = BOUNDARY_IOU_DILATION_RATIO,
    ignore_index: int | None = 255,
    background_id: int | None = None,
) -> SegmentOverlap:
    """Mask-IoU and boundary-IoU matrices between every ground-truth and predicted segment."""
    p = as_label_map(pred, "pred")
    g = as_label_map(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {p.shape} and gt {g.shape}")
    valid = g != ignore_index if ignore_index is not None else np.ones(g.shape, dtype=bool)
    if not valid.any():
        raise ValueError(f"gt has no evaluated pixel: all {g.size} pixels equal ignore_index={ignore_index}")
    d = dilation if dilation is not None else boundary_dilation(g.shape, dilation_ratio)
    gt_codes, gt_ids = _codes(g, background_id, valid)
    pred_codes, pred_ids = _codes(p, background_id, valid)
    n_gt, n_pred = len(gt_ids), len(pred_ids)

    table = _pair_counts(gt_codes, pred_codes, n_gt, n_pred)
    iou = _iou(table[:n_gt, :n_pred], table[:n_gt].sum(axis=1), table[:, :n_pred].sum(axis=0))

    gt_band = boundary_band(g, d, valid)[valid]
    pred_band = boundary_band(p, d)[valid]
    gt_band_area = np.bincount(gt_codes[gt_band], minlength=n_gt + 1)[:n_gt]
    pred_band_area = np.bincount(pred_codes[pred_band], minlength=n_pred + 1)[:n_pred]
    both = gt_band & pred_band
    band_table = _pair_counts(gt_codes[both], pred_codes[both], n_gt, n_pred)[:n_gt, :n_pred]
    boundary_iou = _iou(band_table, gt_band_area, pred_band_area)
    return SegmentOverlap(gt_ids=gt_ids, pred_ids=pred_ids, iou=iou, boundary_iou=boundary_iou)


def match_segments(iou: np.ndarray, matching: Matching = "best") -> np.ndarray:
    """Predicted-segment column paired with each ground-truth row of ``iou`` ([G, P]); -1 when unpaired."""
    if iou.ndim != 2:
        raise ValueError(f"iou must be a [G, P] matrix, got shape {iou.shape}")
    pairs = np.full(iou.shape[0], -1, dtype=np.int64)
    if iou.shape[1] == 0:
        return pairs
    if matching == "best":
        pairs = iou.argmax(axis=1)
    elif matching == "hungarian":
        rows, cols = linear_sum_assignment(iou, maximize=True)
        pairs[rows] = cols
    else:
        raise ValueError(f"matching must be 'best' or 'hungarian', got {matching!r}")
    no_overlap = iou[np.arange(len(pairs)), np.maximum(pairs, 0)] <= 0
    pairs[no_overlap] = -1
    return pairs


def _paired_scores(overlap: SegmentOverlap, matching: Matching) -> tuple[np.ndarray, np.ndarray]:
    """Mask IoU and boundary IoU of each ground-truth segment with its paired prediction (0 if unpaired)."""
    pairs = match_segments(overlap.iou, matching)
    if overlap.iou.shape[1] == 0:
        return np.zeros(len(pairs)), np.zeros(len(pairs))
    rows, cols, paired = np.arange(len(pairs)), np.maximum(pairs, 0), pairs >= 0
    return (
        np.where(paired, overlap.iou[rows, cols], 0.0),
        np.where(paired, overlap.boundary_iou[rows, cols], 0.0),
    )


def _check_options(iou_threshold: float, matching: str) -> None:
    if matching not in ("best", "hungarian"):
        raise ValueError(f"matching must be 'best' or 'hungarian', got {matching!r}")
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1), got {iou_threshold}")


def _summary(mask_iou: np.ndarray, boundary_iou: np.ndarray, iou_threshold: float) -> dict[str, float]:
    n = len(mask_iou)
    if n == 0:
        return {"recall": math.nan, "miou": math.nan, "boundary_iou": math.nan, "num_gt_segments": 0.0}
    return {
        "recall": float((mask_iou > iou_threshold).mean()),
        "miou": float(mask_iou.mean()),
        "boundary_iou": float(boundary_iou.mean()),
        "num_gt_segments": float(n),
    }


def agnostic_scores(
    pred: LabelArray,
    gt: LabelArray,
    *,
    iou_threshold: float = 0.5,
    matching: Matching = "best",
    dilation: int | None = None,
    dilation_ratio: float = BOUNDARY_IOU_DILATION_RATIO,
    ignore_index: int | None = 255,
    background_id: int | None = None,
) -> dict[str, float]:
    """recall, miou, boundary_iou and num_gt_segments of one image; NaN scores when gt has no segment."""
    _check_options(iou_threshold, matching)
    overlap = segment_overlap(
        pred,
        gt,
        dilation=dilation,
        dilation_ratio=dilation_ratio,
        ignore_index=ignore_index,
        background_id=background_id,
    )
    return _summary(*_paired_scores(overlap, matching), iou_threshold)


class AgnosticMeter:
    """Dataset accumulator of Dille et al.'s metrics, pooled over all ground-truth segments."""

    def __init__(
        self,
        *,
        iou_threshold: float = 0.5,
        matching: Matching = "best",
        dilation: int | None = None,
        dilation_ratio: float = BOUNDARY_IOU_DILATION_RATIO,
        ignore_index: int | None = 255,
        background_id: int | None = None,
    ) -> None:
        _check_options(iou_threshold, matching)
        self.iou_threshold = iou_threshold
        self.matching: Matching = matching
        self.dilation = dilation
        self.dilation_ratio = dilation_ratio
        self.ignore_index = ignore_index
        self.background_id = background_id
        self.reset()

    def reset(self) -> None:
        self._mask_iou: list[np.ndarray] = []
        self._boundary_iou: list[np.ndarray] = []
        self.num_images = 0

    def update(self, pred: LabelArray, gt: LabelArray) -> None:
        """Add one image: integer segment maps ``[H, W]`` (numpy or torch)."""
        overlap = segment_overlap(
            pred,
            gt,
            dilation=self.dilation,
            dilation_ratio=self.dilation_ratio,
            ignore_index=self.ignore_index,
            background_id=self.background_id,
        )
        mask_iou, boundary_iou = _paired_scores(overlap, self.matching)
        self._mask_iou.append(mask_iou)
        self._boundary_iou.append(boundary_iou)
        self.num_images += 1

    def compute(self) -> dict[str, float]:
        """Keys recall, miou, boundary_iou (NaN if no ground-truth segment was seen), num_gt_segments."""
        if self.num_images == 0:
            raise ValueError("AgnosticMeter.compute() called before any update()")
        return _summary(
            np.concatenate(self._mask_iou), np.concatenate(self._boundary_iou), self.iou_threshold
        )
