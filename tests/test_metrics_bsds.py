"""BSDS region and contour metrics (CAS Tables 4 and 6) on 3x3 / 4x4 maps with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import rand_score

from lofiseg.metrics.bsds import (
    RegionMeter,
    boundary_counts,
    boundary_f_measure,
    ground_truth_covering,
    probabilistic_rand_index,
    rand_index,
    region_scores,
    segment_boundaries,
    variation_of_information,
)

# Prediction regions A (4 px, top-left 2x2), B (2 px, top-right column), C (3 px, bottom row).
PRED = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
# Ground truth regions X (6 px, top two rows), Y (3 px, bottom row); arbitrary ids.
GT = np.array([[5, 5, 5], [5, 5, 5], [7, 7, 7]])
# Contingency (rows A, B, C; columns X, Y): [[4, 0], [2, 0], [0, 3]].
# Covering: X best IoU = IoU(X, A) = 4/6, Y best = IoU(Y, C) = 3/3 -> (6 * 2/3 + 3 * 1) / 9 = 7/9
HAND_COVERING = 7 / 9
# RI: sum a^2 = 16 + 4 + 9 = 29, sum b^2 = 36 + 9 = 45, sum n^2 = 29
#     disagreeing pairs = 29/2 + 45/2 - 29 = 8 of C(9, 2) = 36 -> RI = 1 - 8/36 = 7/9
#     (check: X holds C(6,2) = 15 pairs, of which only C(4,2) + C(2,2) = 7 stay together in the prediction)
HAND_RI = 7 / 9
# VI: H(G | S) = 0 (every predicted region lies in one GT region);
#     H(S | G) = P(X) * H(4/6, 2/6) = 2/3 * 0.918296 = 0.612197 bits
H_THIRD = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))  # 0.918296
HAND_VI = 2 / 3 * H_THIRD


def test_single_ground_truth_region_metrics():
    assert ground_truth_covering(PRED, GT) == pytest.approx(HAND_COVERING)
    assert rand_index(PRED, GT) == pytest.approx(HAND_RI)
    assert variation_of_information(PRED, GT) == pytest.approx(HAND_VI)
    assert HAND_VI == pytest.approx(0.612197, abs=1e-6)


def _ri_from_contingency(pred: np.ndarray, gt: np.ndarray) -> float:
    """The contingency-table formula RI = 1 - (sum a^2 / 2 + sum b^2 / 2 - sum n^2) / C(N, 2) in float64."""
    table = np.histogram2d(np.unique(pred, return_inverse=True)[1].ravel(),
                           np.unique(gt, return_inverse=True)[1].ravel(),
                           bins=(len(np.unique(pred)), len(np.unique(gt))))[0]
    n = table.sum()
    disagreements = (table.sum(1) ** 2).sum() / 2 + (table.sum(0) ** 2).sum() / 2 - (table**2).sum()
    return float(1.0 - disagreements / (n * (n - 1) / 2))


def test_rand_index_is_the_contingency_formula_bit_for_bit_and_sklearn_rand_score():
    """rand_index (sklearn's pair counts) = the contingency formula exactly, and rand_score to the last bit."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        shape = tuple(rng.integers(2, 40, size=2))
        pred = rng.integers(0, rng.integers(1, 10), shape)
        gt = rng.integers(0, rng.integers(1, 10), shape)
        if trial % 2:  # blocky maps, like real segmentations
            pred = np.kron(pred, np.ones((3, 3), np.int64))
            gt = np.kron(gt, np.ones((3, 3), np.int64))
        assert rand_index(pred, gt, ignore_index=None) == _ri_from_contingency(pred, gt)
        assert rand_index(pred, gt, ignore_index=None) == pytest.approx(
            rand_score(gt.ravel(), pred.ravel()), abs=2e-16)


def test_several_ground_truths_average_like_bsds():
    # Second human segmentation = the prediction itself: RI 1, VI 0, covering numerator 9 of 9.
    gts = [GT, PRED]
    assert probabilistic_rand_index(PRED, gts) == pytest.approx((HAND_RI + 1) / 2)  # 0.888889
    assert variation_of_information(PRED, gts) == pytest.approx(HAND_VI / 2)  # 0.306099
    assert ground_truth_covering(PRED, np.stack(gts)) == pytest.approx((7 + 9) / 18)  # pooled


def test_region_ids_are_arbitrary():
    relabelled = np.select([PRED == 0, PRED == 1], [-3, 1000], 255)  # 255 is an ordinary id in pred
    assert region_scores(relabelled, GT * 11 + 255) == pytest.approx(region_scores(PRED, GT))


def test_ignore_pixels_are_not_evaluated():
    gt = GT.copy()
    gt[0:2, 2] = 255  # hide region B's pixels
    # Evaluated pixels: S = {A: 4 px, C: 3 px}, G = {X: 4 px, Y: 3 px} -> identical partitions.
    # Boundaries only between evaluated pixels: row 1, columns 0 and 1 in both maps -> F = 1.
    assert region_scores(PRED, gt, max_dist_px=0.5) == pytest.approx(
        {"covering": 1.0, "pri": 1.0, "vi": 0.0, "boundary_f": 1.0}
    )


def test_empty_prediction_single_region():
    pred = np.zeros((3, 3), np.int64)
    # Covering: IoU(X, all) = 6/9, IoU(Y, all) = 3/9 -> (6 * 6/9 + 3 * 3/9) / 9 = 5/9
    # RI: a = [9], b = [6, 3]: disagreements = 81/2 + 45/2 - 45 = 18 -> 1 - 18/36 = 0.5
    # VI = H(G) = H(2/3, 1/3) = 0.918296; no predicted boundary -> P = R = 0 -> F = 0 (BSDS convention)
    assert region_scores(pred, GT, max_dist_px=0.5) == pytest.approx(
        {"covering": 5 / 9, "pri": 0.5, "vi": H_THIRD, "boundary_f": 0.0}
    )


def test_empty_ground_truth_single_region():
    gt = np.zeros((3, 3), np.int64)
    # Covering: the one GT region's best IoU is with A: 4/9 -> 9 * 4/9 / 9 = 4/9
    # RI: a = [4, 2, 3], b = [9]: disagreements = 29/2 + 81/2 - 29 = 26 -> 1 - 26/36 = 10/36
    # VI = H(S) = 4/9 log2(9/4) + 2/9 log2(9/2) + 1/3 log2(3) = 1.530494; no GT boundary -> R = 0 -> F = 0
    h_pred = 4 / 9 * math.log2(9 / 4) + 2 / 9 * math.log2(9 / 2) + 1 / 3 * math.log2(3)
    assert region_scores(PRED, gt, max_dist_px=0.5) == pytest.approx(
        {"covering": 4 / 9, "pri": 10 / 36, "vi": h_pred, "boundary_f": 0.0}
    )


# Boundary maps (BSDS seg2bdry 'imageSize': a pixel is marked when its 2x2 block below-right holds 2 labels).
GT_HALVES = np.array([[0, 0, 1, 1]] * 4)  # boundary = column 1 (4 px)
GT_QUARTER = np.array([[0, 0, 0, 1]] * 4)  # boundary = column 2 (4 px)
PRED_STAIR = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
# PRED_STAIR boundary: (0,1), (1,1), (1,2), (2,2), (3,2) (5 px)


def test_segment_boundaries_follow_seg2bdry():
    assert segment_boundaries(GT_HALVES).astype(int).tolist() == [[0, 1, 0, 0]] * 4
    assert segment_boundaries(PRED_STAIR).astype(int).tolist() == [
        [0, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 0],
        [0, 0, 1, 0],
    ]
    # PRED: (0,1) sees 0|1, row 1 sees row 2 (label 2) below; GT: only row 1 sees row 2.
    assert segment_boundaries(PRED).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert segment_boundaries(GT).astype(int).tolist() == [[0, 0, 0], [1, 1, 1], [0, 0, 0]]


def test_boundary_f_exact_tolerance():
    # Exact positions only: (0,1), (1,1) match -> P = 2/5, R = 2/4 -> F = 2 * 0.4 * 0.5 / 0.9 = 0.444444
    counts = boundary_counts(PRED_STAIR, GT_HALVES, max_dist_px=0.5, thin_pred=False)
    assert (counts.matched_pred, counts.total_pred, counts.matched_gt, counts.total_gt) == (2, 5, 2, 4)
    assert counts.f_measure == pytest.approx(0.4 / 0.9)


def test_boundary_f_one_pixel_tolerance_is_one_to_one():
    # Within 1 px the 4 GT pixels can all be matched ((0,1)-(0,1), (1,1)-(1,1), (2,2)-(2,1), (3,2)-(3,1)),
    # but one-to-one matching leaves one of the 5 predicted pixels unmatched: P = 4/5, R = 1 -> F = 0.888889.
    counts = boundary_counts(PRED_STAIR, GT_HALVES, max_dist_px=1.0, thin_pred=False)
    assert (counts.matched_pred, counts.total_pred, counts.matched_gt, counts.total_gt) == (4, 5, 4, 4)
    assert counts.f_measure == pytest.approx(2 * 0.8 / 1.8)
    # The same tolerance given as a fraction of the diagonal (BSDS max_dist): 1.01 px / 5.657 px.
    relative = boundary_f_measure(PRED_STAIR, GT_HALVES, max_dist=1.01 / math.hypot(4, 4), thin_pred=False)
    assert relative == pytest.approx(2 * 0.8 / 1.8)


def test_boundary_f_several_ground_truths_pool_like_bsds():
    # vs GT_HALVES: (0,1), (1,1) match; vs GT_QUARTER (column 2): (1,2), (2,2), (3,2) match.
    # Precision: a predicted pixel matched by any GT -> 5/5; recall pooled: (2 + 3) / (4 + 4) = 5/8
    # F = 2 * 1 * 0.625 / 1.625 = 0.769231
    f = boundary_f_measure(PRED_STAIR, [GT_HALVES, GT_QUARTER], max_dist_px=0.5, thin_pred=False)
    assert f == pytest.approx(2 * 0.625 / 1.625)


def test_predicted_boundaries_are_thinned_like_bsds():
    # A 1-pixel region at (1, 1) marks the 2x2 square (0,0), (0,1), (1,0), (1,1); thinning keeps 1 pixel.
    dot = np.zeros((4, 4), np.int64)
    dot[1, 1] = 1
    thinned = boundary_counts(dot, dot, max_dist_px=0.5)
    assert (thinned.matched_pred, thinned.total_pred, thinned.matched_gt, thinned.total_gt) == (1, 1, 1, 4)
    assert boundary_f_measure(dot, dot, max_dist_px=0.5, thin_pred=False) == 1.0


def test_meter_ods_ois_hand_values():
    zeros = np.zeros((3, 3), np.int64)
    meter = RegionMeter(max_dist_px=0.5, thin_pred=False)
    meter.update([PRED, GT], GT)  # image 1: candidate 0 imperfect, candidate 1 perfect
    meter.update(torch.from_numpy(np.stack([GT, zeros])), GT)  # image 2: candidate 0 perfect, 1 one region
    scores = meter.compute()
    # Covering numerators (9 px per image): image 1 [7, 9], image 2 [9, 5]
    #   ODS = max(16, 14) / 18 = 0.888889; OIS = (9 + 9) / 18 = 1
    assert scores["covering_ods"] == pytest.approx(16 / 18)
    assert scores["covering_ois"] == pytest.approx(1.0)
    # PRI: image 1 [7/9, 1], image 2 [1, 1/2] -> ODS = max(0.888889, 0.75); OIS = mean(1, 1) = 1
    assert scores["pri_ods"] == pytest.approx((7 / 9 + 1) / 2)
    assert scores["pri_ois"] == pytest.approx(1.0)
    # VI: image 1 [0.612197, 0], image 2 [0, 0.918296] -> ODS = min(0.306099, 0.459148); OIS = 0
    assert scores["vi_ods"] == pytest.approx(HAND_VI / 2)
    assert scores["vi_ois"] == pytest.approx(0.0)
    # Boundary counts (matched_pred, total_pred, matched_gt, total_gt), GT boundary = row 1 (3 px):
    #   PRED vs GT [3, 4, 3, 3] (F 6/7), GT vs GT [3, 3, 3, 3] (F 1), zeros vs GT [0, 0, 0, 3] (F 0)
    #   ODS: t0 sums [6, 7, 6, 6] -> P 6/7, R 1 -> F = 12/13 = 0.923077; t1 sums [3, 3, 3, 6] -> F = 2/3
    #   OIS: best t per image -> [3, 3, 3, 3] + [3, 3, 3, 3] -> F = 1
    assert scores["boundary_f_ods"] == pytest.approx(12 / 13)
    assert scores["boundary_f_ois"] == pytest.approx(1.0)


def test_single_candidate_gives_equal_ods_and_ois():
    meter = RegionMeter(max_dist_px=0.5)
    meter.update(PRED, GT)
    scores = meter.compute()
    for name in ("covering", "pri", "vi", "boundary_f"):
        assert scores[f"{name}_ods"] == pytest.approx(scores[f"{name}_ois"])
    assert scores["covering_ods"] == pytest.approx(HAND_COVERING)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"pred and gts\[0\] must have the same shape, got pred \(3, 3\)"):
        region_scores(PRED, GT[:2])
    with pytest.raises(TypeError, match="integer label map"):
        region_scores(PRED.astype(np.float32), GT)
    with pytest.raises(ValueError, match=r"gts\[1\] has no evaluated pixel"):
        region_scores(PRED, [GT, np.full((3, 3), 255)])
    with pytest.raises(ValueError, match="at least one ground-truth"):
        region_scores(PRED, [])
    meter = RegionMeter()
    meter.update([PRED, GT], GT)
    with pytest.raises(ValueError, match="same number of candidates, got 1 after 2"):
        meter.update(PRED, GT)
    with pytest.raises(ValueError, match="before any update"):
        RegionMeter().compute()
