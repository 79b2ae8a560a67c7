"""Region and contour metrics of the BSDS500 benchmark, used by CAS (Sharma et al.) Tables 4 and 6.

Inputs are integer region maps ``[H, W]`` with arbitrary ids: one prediction and one or several ground truths
(BSDS has several human segmentations per image). Ground-truth pixels equal to ``ignore_index`` (255) are not
evaluated; prediction ids are all regions (255 included). Definitions follow the BSDS500 benchmark code
(Arbelaez et al. 2011, ``match_segmentations*.m``, ``evaluation_*_image.m``, ``collect_eval_*.m``):

* Ground-truth covering ``C(S -> G) = 1/N sum_{R in G} |R| max_{R' in S} |R n R'| / |R u R'|``, pooled over
  the ground truths (sum of the numerators over sum of the pixel counts).
* Rand index ``RI = 1 - D / C(N, 2)``, D the pixel pairs on which prediction and ground truth disagree (same
  region in one, different regions in the other), counted by scikit-learn's ``pair_confusion_matrix``; PRI =
  mean of RI over the ground truths. scikit-image's ``adapted_rand_error`` is a different quantity
  (1 - Rand F-score).
* Variation of information ``VI = H(S | G) + H(G | S)`` in bits (log2, as the BSDS code) via scikit-image
  ``variation_of_information``, averaged over the ground truths.
* Boundary F-measure (beta = 1): boundaries from ``seg2bdry``, i.e. a pixel is a boundary pixel when its 2x2
  block (itself, right, below, below-right; clipped at the border) holds two labels; the predicted boundary is
  thinned (``skimage.morphology.thin``, BSDS ``thinpb``), the ground truth is not. Boundary pixels are
  matched one-to-one by a maximum-cardinality bipartite matching (``scipy.sparse.csgraph``) over the pairs at
  Euclidean distance <= ``max_dist`` x image diagonal (BSDS default 0.0075), the count that BSDS
  ``correspondPixels`` maximises (its assignment makes an unmatched pixel cost far more than any match;
  distances only break ties). With thinning, a prediction equal to the ground truth can score F < 1 when
  thinning removes staircase pixels (``thin_pred=False`` turns it off). Precision pools the
  predicted pixels matched to any ground truth; recall pools the matched ground-truth pixels of all ground
  truths. With ignore pixels, boundaries are only drawn between two evaluated pixels.
* ODS / OIS over T candidate segmentations per image (thresholds, scales or cluster counts, same T for every
  image), as ``collect_eval_reg.m`` / ``collect_eval_bdry.m``: covering ODS = max_t pooled covering, OIS =
  pooled per-image best; PRI (VI) ODS = max (min) over t of the image mean, OIS = image mean of the per-image
  max (min); boundary F ODS = max_t F of the counts summed over images, OIS = F of the counts summed at each
  image's best t (first best on ties). BSDS' interpolation between neighbouring thresholds is not applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_bipartite_matching
from scipy.spatial import cKDTree
from skimage.metrics import variation_of_information as _skimage_vi
from skimage.morphology import thin

__all__ = [
    "BoundaryCounts",
    "RegionMeter",
    "as_label_map",
    "boundary_counts",
    "boundary_f_measure",
    "ground_truth_covering",
    "probabilistic_rand_index",
    "rand_index",
    "region_scores",
    "segment_boundaries",
    "variation_of_information",
]

LabelArray = np.ndarray | torch.Tensor
GroundTruths = LabelArray | Sequence[LabelArray]
BSDS_MAX_DIST = 0.0075


def as_label_map(x: LabelArray, name: str) -> np.ndarray:
    """An integer region map ``[H, W]`` as int64 numpy; TypeError for non-integer, ValueError for bad ndim."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer label map, got torch dtype {x.dtype}")
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label map, got dtype {x.dtype}")
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty [H, W] label map, got shape {x.shape}")
    return x.astype(np.int64, copy=False)


def _as_ground_truths(
    gts: GroundTruths, shape: tuple[int, ...], ignore_index: int | None
) -> list[np.ndarray]:
    """One [H, W] map, a [K, H, W] stack or a sequence of [H, W] maps -> list of int64 maps of ``shape``."""
    if isinstance(gts, np.ndarray | torch.Tensor) and gts.ndim == 3:
        maps = [as_label_map(g, f"gts[{k}]") for k, g in enumerate(gts)]
    elif isinstance(gts, np.ndarray | torch.Tensor):
        maps = [as_label_map(gts, "gts")]
    else:
        maps = [as_label_map(g, f"gts[{k}]") for k, g in enumerate(gts)]
    if not maps:
        raise ValueError("gts must hold at least one ground-truth segmentation, got none")
    for k, g in enumerate(maps):
        if g.shape != shape:
            raise ValueError(
                f"pred and gts[{k}] must have the same shape, got pred {shape} and gts[{k}] {g.shape}"
            )
        if ignore_index is not None and not (g != ignore_index).any():
            raise ValueError(f"gts[{k}] has no evaluated pixel: all pixels equal ignore_index={ignore_index}")
    return maps


def _valid(gt: np.ndarray, ignore_index: int | None) -> np.ndarray:
    return gt != ignore_index if ignore_index is not None else np.ones(gt.shape, dtype=bool)


def _compact_codes(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Region ids of the evaluated pixels renumbered 0..K-1 (1-D arrays for prediction and ground truth)."""
    return np.unique(pred[valid], return_inverse=True)[1], np.unique(gt[valid], return_inverse=True)[1]


def _contingency(pred_codes: np.ndarray, gt_codes: np.ndarray) -> np.ndarray:
    """Counts ``n[i, j]`` of pixels in predicted region i and ground-truth region j (one bincount)."""
    n_p, n_g = int(pred_codes.max()) + 1, int(gt_codes.max()) + 1
    pairs = pred_codes * n_g + gt_codes
    return np.bincount(pairs, minlength=n_p * n_g).reshape(n_p, n_g).astype(np.float64)


def _covering_numerator(table: np.ndarray) -> float:
    """``sum_{R in G} |R| max_{R' in S} IoU(R, R')`` from a contingency table (rows S, columns G)."""
    area_p = table.sum(axis=1, keepdims=True)
    area_g = table.sum(axis=0, keepdims=True)
    iou = table / (area_p + area_g - table)
    return float((area_g[0] * iou.max(axis=0)).sum())


def _rand_index(pred_codes: np.ndarray, gt_codes: np.ndarray) -> float:
    """RI of two 1-D labelings of the evaluated pixels (Rand 1971), ``1 - disagreeing pairs / all pairs``.

    Same value as ``sklearn.metrics.rand_score`` up to its last bit: rand_score divides the agreeing pairs, a
    different rounding that moves the last bit for about a third of the maps; 1 - D / P is the formula the
    recorded metrics were computed with, so they stay byte-identical.
    """
    if pred_codes.size < 2:
        raise ValueError(f"the Rand index needs at least 2 evaluated pixels, got {pred_codes.size}")
    from sklearn.metrics.cluster import pair_confusion_matrix  # lazy: 1-2 s of import a stage may not need

    pairs = pair_confusion_matrix(gt_codes, pred_codes)  # ordered pairs: every count doubled
    return float(1.0 - (pairs[0, 1] + pairs[1, 0]) / pairs.sum())


def _vi(pred_codes: np.ndarray, gt_codes: np.ndarray) -> float:
    """H(G | S) + H(S | G) in bits (scikit-image returns the two conditional entropies)."""
    return float(np.sum(_skimage_vi(gt_codes, pred_codes)))


@dataclass(frozen=True)
class _RegionStats:
    covering_numerator: float
    covering_pixels: float
    pri: float
    vi: float


def _region_stats(pred: np.ndarray, gts: list[np.ndarray], ignore_index: int | None) -> _RegionStats:
    numerator = pixels = ri = vi = 0.0
    for gt in gts:
        pred_codes, gt_codes = _compact_codes(pred, gt, _valid(gt, ignore_index))
        table = _contingency(pred_codes, gt_codes)
        numerator += _covering_numerator(table)
        pixels += table.sum()
        ri += _rand_index(pred_codes, gt_codes)
        vi += _vi(pred_codes, gt_codes)
    return _RegionStats(numerator, pixels, ri / len(gts), vi / len(gts))


def ground_truth_covering(pred: LabelArray, gts: GroundTruths, *, ignore_index: int | None = 255) -> float:
    """Covering of the ground truth(s) by the prediction, C(S -> G) (BSDS; CAS "GT-cov.")."""
    p = as_label_map(pred, "pred")
    stats = _region_stats(p, _as_ground_truths(gts, p.shape, ignore_index), ignore_index)
    return float(stats.covering_numerator / stats.covering_pixels)


def rand_index(pred: LabelArray, gt: LabelArray, *, ignore_index: int | None = 255) -> float:
    """Rand index between a prediction and one ground truth (fraction of agreeing pixel pairs)."""
    p = as_label_map(pred, "pred")
    g = _as_ground_truths(as_label_map(gt, "gt"), p.shape, ignore_index)[0]
    return _rand_index(*_compact_codes(p, g, _valid(g, ignore_index)))


def probabilistic_rand_index(pred: LabelArray, gts: GroundTruths, *, ignore_index: int | None = 255) -> float:
    """PRI: Rand index averaged over the ground truths (Unnikrishnan et al.; CAS "Rand. Index")."""
    p = as_label_map(pred, "pred")
    return _region_stats(p, _as_ground_truths(gts, p.shape, ignore_index), ignore_index).pri


def variation_of_information(pred: LabelArray, gts: GroundTruths, *, ignore_index: int | None = 255) -> float:
    """VI in bits, averaged over the ground truths (CAS "Var. Info.", lower is better)."""
    p = as_label_map(pred, "pred")
    return _region_stats(p, _as_ground_truths(gts, p.shape, ignore_index), ignore_index).vi


def segment_boundaries(labels: LabelArray, valid: np.ndarray | None = None) -> np.ndarray:
    """BSDS ``seg2bdry(seg, 'imageSize')``: True where the 2x2 block below-right of a pixel holds two labels.

    With ``valid`` (bool [H, W]) only pairs of evaluated pixels are compared and only evaluated pixels are
    marked, so the rim of an ignored area is no boundary.
    """
    lab = as_label_map(labels, "labels")
    ok = np.ones(lab.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != lab.shape:
        raise ValueError(
            f"labels and valid must have the same shape, got labels {lab.shape} and valid {ok.shape}"
        )
    lab_pad = np.pad(lab, ((0, 1), (0, 1)), mode="edge")
    ok_pad = np.pad(ok, ((0, 1), (0, 1)), mode="edge")
    corners = [
        (slice(None, -1), slice(None, -1)),
        (slice(None, -1), slice(1, None)),
        (slice(1, None), slice(None, -1)),
        (slice(1, None), slice(1, None)),
    ]
    top_left, top_right, bottom_left, bottom_right = ((lab_pad[c], ok_pad[c]) for c in corners)
    boundary = np.zeros(lab.shape, dtype=bool)
    for (la, va), (lb, vb) in (
        (top_left, top_right),
        (bottom_left, bottom_right),
        (top_left, bottom_left),
        (top_right, bottom_right),
    ):
        boundary |= (la != lb) & va & vb
    return boundary & ok


@dataclass(frozen=True)
class BoundaryCounts:
    """BSDS contour counts: precision = matched_pred / total_pred, recall = matched_gt / total_gt."""

    matched_pred: int
    total_pred: int
    matched_gt: int
    total_gt: int

    @property
    def precision(self) -> float:
        return self.matched_pred / self.total_pred if self.total_pred else 0.0

    @property
    def recall(self) -> float:
        return self.matched_gt / self.total_gt if self.total_gt else 0.0

    @property
    def f_measure(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def __add__(self, other: BoundaryCounts) -> BoundaryCounts:
        return BoundaryCounts(
            self.matched_pred + other.matched_pred,
            self.total_pred + other.total_pred,
            self.matched_gt + other.matched_gt,
            self.total_gt + other.total_gt,
        )


def _match(pred_points: np.ndarray, gt_points: np.ndarray, radius: float) -> np.ndarray:
    """Maximum one-to-one matching of points within ``radius``; True for each matched pred point."""
    if len(pred_points) == 0 or len(gt_points) == 0:
        return np.zeros(len(pred_points), dtype=bool)
    pairs = cKDTree(pred_points).sparse_distance_matrix(cKDTree(gt_points), radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(len(pred_points), dtype=bool)
    graph = csr_array(
        (np.ones(len(pairs)), (pairs["i"], pairs["j"])), shape=(len(pred_points), len(gt_points))
    )
    return maximum_bipartite_matching(graph, perm_type="column") >= 0


def _max_dist_px(shape: tuple[int, ...], max_dist: float, max_dist_px: float | None) -> float:
    radius = max_dist_px if max_dist_px is not None else max_dist * float(np.hypot(*shape))
    if radius < 0:
        raise ValueError(f"the boundary tolerance must be >= 0 pixels, got {radius}")
    return radius


def _boundary_counts(
    pred: np.ndarray, gts: list[np.ndarray], ignore_index: int | None, radius: float, thin_pred: bool
) -> BoundaryCounts:
    valids = [_valid(g, ignore_index) for g in gts]
    pred_bdry = segment_boundaries(pred, np.logical_or.reduce(valids))
    if thin_pred:
        pred_bdry = thin(pred_bdry)
    pred_points = np.argwhere(pred_bdry).astype(np.float64)
    matched_any = np.zeros(len(pred_points), dtype=bool)
    matched_gt = total_gt = 0
    for gt, valid in zip(gts, valids, strict=True):
        gt_points = np.argwhere(segment_boundaries(gt, valid)).astype(np.float64)
        matched_pred = _match(pred_points, gt_points, radius)
        matched_any |= matched_pred
        matched_gt += int(matched_pred.sum())  # one-to-one: as many gt pixels matched as pred pixels
        total_gt += len(gt_points)
    return BoundaryCounts(int(matched_any.sum()), len(pred_points), matched_gt, total_gt)


def boundary_counts(
    pred: LabelArray,
    gts: GroundTruths,
    *,
    max_dist: float = BSDS_MAX_DIST,
    max_dist_px: float | None = None,
    thin_pred: bool = True,
    ignore_index: int | None = 255,
) -> BoundaryCounts:
    """Matched / total boundary pixels (tolerance ``max_dist`` x diagonal, or ``max_dist_px`` pixels)."""
    p = as_label_map(pred, "pred")
    maps = _as_ground_truths(gts, p.shape, ignore_index)
    return _boundary_counts(p, maps, ignore_index, _max_dist_px(p.shape, max_dist, max_dist_px), thin_pred)


def boundary_f_measure(
    pred: LabelArray,
    gts: GroundTruths,
    *,
    max_dist: float = BSDS_MAX_DIST,
    max_dist_px: float | None = None,
    thin_pred: bool = True,
    ignore_index: int | None = 255,
) -> float:
    """BSDS contour F-measure (beta = 1) of one prediction against its ground truth(s)."""
    return boundary_counts(
        pred, gts, max_dist=max_dist, max_dist_px=max_dist_px, thin_pred=thin_pred, ignore_index=ignore_index
    ).f_measure


def region_scores(
    pred: LabelArray,
    gts: GroundTruths,
    *,
    max_dist: float = BSDS_MAX_DIST,
    max_dist_px: float | None = None,
    thin_pred: bool = True,
    ignore_index: int | None = 255,
) -> dict[str, float]:
    """covering, pri, vi and boundary_f of one prediction against its ground truth(s)."""
    p = as_label_map(pred, "pred")
    maps = _as_ground_truths(gts, p.shape, ignore_index)
    stats = _region_stats(p, maps, ignore_index)
    counts = _boundary_counts(p, maps, ignore_index, _max_dist_px(p.shape, max_dist, max_dist_px), thin_pred)
    return {
        "covering": float(stats.covering_numerator / stats.covering_pixels),
        "pri": stats.pri,
        "vi": stats.vi,
        "boundary_f": counts.f_measure,
    }


def _f_from_count_array(counts: np.ndarray) -> np.ndarray:
    """BSDS F (beta = 1) of count arrays ``[..., 4]`` = (matched_pred, total_pred, matched_gt, total_gt)."""
    precision = np.divide(
        counts[..., 0], counts[..., 1], out=np.zeros(counts.shape[:-1]), where=counts[..., 1] > 0
    )
    recall = np.divide(
        counts[..., 2], counts[..., 3], out=np.zeros(counts.shape[:-1]), where=counts[..., 3] > 0
    )
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


class RegionMeter:
    """ODS / OIS of covering, PRI, VI and boundary F over a dataset (CAS Tables 4 and 6).

    ``update(candidates, gts)`` takes T candidate segmentations of one image (``[T, H, W]``, a sequence of
    ``[H, W]``, or one ``[H, W]`` for T = 1) and its ground truth(s); T must be the same for all images.
    """

    def __init__(
        self,
        *,
        max_dist: float = BSDS_MAX_DIST,
        max_dist_px: float | None = None,
        thin_pred: bool = True,
        ignore_index: int | None = 255,
    ) -> None:
        self.max_dist = max_dist
        self.max_dist_px = max_dist_px
        self.thin_pred = thin_pred
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._covering: list[np.ndarray] = []  # per image [T, 2]: numerator, pixels
        self._pri: list[np.ndarray] = []  # per image [T]
        self._vi: list[np.ndarray] = []  # per image [T]
        self._boundary: list[np.ndarray] = []  # per image [T, 4]

    @property
    def num_images(self) -> int:
        return len(self._pri)

    def update(self, candidates: GroundTruths, gts: GroundTruths) -> None:
        if isinstance(candidates, np.ndarray | torch.Tensor) and candidates.ndim == 2:
            candidates = [candidates]
        preds = [as_label_map(c, f"candidates[{t}]") for t, c in enumerate(candidates)]
        if not preds:
            raise ValueError("candidates must hold at least one segmentation, got none")
        if self._pri and len(preds) != len(self._pri[0]):
            raise ValueError(
                f"every image needs the same number of candidates, got {len(preds)} after {len(self._pri[0])}"
            )
        for t, p in enumerate(preds[1:], start=1):
            if p.shape != preds[0].shape:
                raise ValueError(
                    f"candidates[0] and candidates[{t}] differ in shape: {preds[0].shape} vs {p.shape}"
                )
        maps = _as_ground_truths(gts, preds[0].shape, self.ignore_index)
        radius = _max_dist_px(preds[0].shape, self.max_dist, self.max_dist_px)
        stats = [_region_stats(p, maps, self.ignore_index) for p in preds]
        counts = [_boundary_counts(p, maps, self.ignore_index, radius, self.thin_pred) for p in preds]
        self._covering.append(np.array([[s.covering_numerator, s.covering_pixels] for s in stats]))
        self._pri.append(np.array([s.pri for s in stats]))
        self._vi.append(np.array([s.vi for s in stats]))
        self._boundary.append(
            np.array(
                [[c.matched_pred, c.total_pred, c.matched_gt, c.total_gt] for c in counts], dtype=np.float64
            )
        )

    def compute(self) -> dict[str, float]:
        """Keys covering_ods/ois, pri_ods/ois, vi_ods/ois, boundary_f_ods/ois; ValueError if never updated."""
        if not self._pri:
            raise ValueError("RegionMeter.compute() called before any update()")
        covering = np.stack(self._covering)  # [I, T, 2]
        pri, vi = np.stack(self._pri), np.stack(self._vi)  # [I, T]
        boundary = np.stack(self._boundary)  # [I, T, 4]
        pixels = covering[:, 0, 1].sum()
        best_t = _f_from_count_array(boundary).argmax(axis=1)
        best_counts = boundary[np.arange(len(boundary)), best_t].sum(axis=0)
        return {
            "covering_ods": float((covering[..., 0].sum(axis=0) / pixels).max()),
            "covering_ois": float(covering[..., 0].max(axis=1).sum() / pixels),
            "pri_ods": float(pri.mean(axis=0).max()),
            "pri_ois": float(pri.max(axis=1).mean()),
            "vi_ods": float(vi.mean(axis=0).min()),
            "vi_ois": float(vi.min(axis=1).mean()),
            "boundary_f_ods": float(_f_from_count_array(boundary.sum(axis=0)).max()),
            "boundary_f_ois": float(_f_from_count_array(best_counts)),
        }
