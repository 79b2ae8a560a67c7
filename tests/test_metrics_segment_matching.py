"""Class-agnostic segment metrics (Dille et al. Sec. 5): recall at IoU > 0.5, mIoU, boundary IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lofiseg.metrics.segment_matching import (
    AgnosticMeter,
    agnostic_scores,
    boundary_band,
    boundary_dilation,
    match_segments,
    segment_overlap,
)

# GT segments: 1 (4 px, top-left 2x2), 2 (4 px, top-right 2x2), 3 (8 px, bottom half).
GT = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]])
# Predicted segments: 7 (6 px, top rows cols 0-2), 8 (2 px, top rows col 3), 9 (8 px, bottom half).
PRED = np.array([[7, 7, 7, 8], [7, 7, 7, 8], [9, 9, 9, 9], [9, 9, 9, 9]])
# IoU (rows GT 1, 2, 3; columns pred 7, 8, 9):
#   1 vs 7: 4 / (4 + 6 - 4) = 2/3      2 vs 7: 2 / (4 + 6 - 2) = 1/4     2 vs 8: 2 / (4 + 2 - 2) = 1/2
#   3 vs 9: 8 / 8 = 1                  all other pairs do not overlap -> 0
HAND_IOU = [[2 / 3, 0, 0], [1 / 4, 1 / 2, 0], [0, 0, 1]]
# Best match: 1 -> 7 (2/3), 2 -> 8 (1/2), 3 -> 9 (1). Recall counts IoU > 0.5 strictly: 1 and 3 -> 2/3.
# mIoU = (2/3 + 1/2 + 1) / 3 = 0.722222.
# Boundary IoU: d = max(1, round(0.02 * 5.66)) = 1; in a 4x4 map every pixel lies within 1 px of the border
# or of another segment, so every band is its whole segment and boundary IoU = mask IoU.

# 6x6: one GT segment covering everything; prediction split into columns 0-2 (id 7) and 3-5 (id 8).
GT6 = np.ones((6, 6), np.int64)
PRED6 = np.full((6, 6), 7)
PRED6[:, 3:] = 8
# Mask IoU of GT with 7 and with 8: 18 / 36 = 0.5 (tie -> the first column, id 7).
# Bands (d = 1): GT = image ring, 20 px. Pred 7 = column 0 (6) + column 2 (6, next to id 8)
#   + column 1 rows 0 and 5 (2) = 14 px. GT ring within columns 0-2: row 0 (3) + row 5 (3) + column 0
#   rows 1-4 (4) = 10 px, all in pred 7's band -> boundary IoU = 10 / (20 + 14 - 10) = 10/24 = 0.416667.


def test_iou_matrix_matches_hand_values():
    overlap = segment_overlap(PRED, GT)
    assert overlap.gt_ids.tolist() == [1, 2, 3] and overlap.pred_ids.tolist() == [7, 8, 9]
    assert overlap.iou == pytest.approx(np.array(HAND_IOU))
    assert overlap.boundary_iou == pytest.approx(np.array(HAND_IOU))  # 4x4: bands = whole segments


def test_recall_is_strict_and_miou_uses_the_matched_pairs():
    scores = agnostic_scores(torch.from_numpy(PRED), torch.from_numpy(GT))
    assert scores["recall"] == pytest.approx(2 / 3)  # GT 2 sits at IoU exactly 0.5: not recalled
    assert scores["miou"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert scores["boundary_iou"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert scores["num_gt_segments"] == 3


def test_boundary_dilation_follows_cheng_et_al():
    # d = max(1, round(0.02 * diagonal)): 4x4 -> round(0.113) = 0 -> 1; 100x100 -> round(2.83) = 3;
    # 256x256 -> round(7.24) = 7
    assert [boundary_dilation(s) for s in ((4, 4), (100, 100), (256, 256))] == [1, 3, 7]


def test_boundary_bands_hand_values():
    ring = np.ones((6, 6), bool)
    ring[1:5, 1:5] = False
    assert boundary_band(GT6, 1).tolist() == ring.tolist()
    expected = ring.copy()
    expected[:, 2:4] = True  # the two columns next to the 7 | 8 split
    assert boundary_band(PRED6, 1).tolist() == expected.tolist()


def test_boundary_iou_differs_from_mask_iou():
    overlap = segment_overlap(PRED6, GT6, dilation=1)
    assert overlap.iou == pytest.approx(np.array([[0.5, 0.5]]))
    assert overlap.boundary_iou == pytest.approx(np.array([[10 / 24, 10 / 24]]))
    scores = agnostic_scores(PRED6, GT6)
    assert scores == pytest.approx(
        {"recall": 0.0, "miou": 0.5, "boundary_iou": 10 / 24, "num_gt_segments": 1}
    )


def test_hungarian_differs_when_two_gt_segments_share_a_prediction():
    merged = np.array([[7, 7, 7, 7], [7, 7, 7, 7], [9, 9, 9, 9], [9, 9, 9, 9]])
    # IoU: 1 vs 7 = 4/8, 2 vs 7 = 4/8, 3 vs 9 = 1. Best-match: both 1 and 2 take 7 -> mIoU (0.5+0.5+1)/3.
    # Hungarian (one-to-one, 2 predictions for 3 GT segments): one of 1/2 is left with 0 -> (0.5+0+1)/3.
    # Recall is 1/3 either way (only IoU 1 > 0.5).
    best = agnostic_scores(merged, GT)
    one_to_one = agnostic_scores(merged, GT, matching="hungarian")
    assert best["miou"] == pytest.approx(2 / 3) and one_to_one["miou"] == pytest.approx(0.5)
    assert best["recall"] == pytest.approx(1 / 3) and one_to_one["recall"] == pytest.approx(1 / 3)


def test_match_segments_marks_non_overlapping_rows_unpaired():
    iou = np.array([[0.0, 0.0], [0.2, 0.6], [0.7, 0.1]])
    assert match_segments(iou).tolist() == [-1, 1, 0]
    assert match_segments(iou, "hungarian").tolist() == [-1, 1, 0]
    assert match_segments(np.zeros((2, 0))).tolist() == [-1, -1]


def test_background_is_no_segment_but_counts_in_predicted_area():
    gt = np.array([[0, 0, 1, 1]] * 4)
    whole = np.full((4, 4), 5)
    # background_id = 0: only GT segment 1 (8 px); the prediction covers 16 px -> IoU 8/16 = 0.5, recall 0.
    # Bands (d = 1): GT 1 = all 8 px (col 1 is background); pred = ring of 12; GT pixels in the ring: col 3
    # (4) + col 2 rows 0 and 3 (2) = 6 -> boundary IoU = 6 / (8 + 12 - 6) = 6/14 = 0.428571.
    scores = agnostic_scores(whole, gt, background_id=0)
    assert scores == pytest.approx({"recall": 0.0, "miou": 0.5, "boundary_iou": 6 / 14, "num_gt_segments": 1})
    assert agnostic_scores(whole, gt)["num_gt_segments"] == 2  # without background_id, 0 is a segment
    assert agnostic_scores(gt, gt, background_id=0)["recall"] == 1.0


def test_ignore_pixels_are_dropped():
    gt = np.array([[1, 1, 255, 255]] * 4)
    whole = np.full((4, 4), 5)
    # Evaluated: columns 0-1 (8 px): GT 1 = 8 px, pred 5 = 8 px -> IoU 1. Bands on evaluated pixels:
    # pred ring -> col 0 (4) + col 1 rows 0, 3 (2); GT: the rim of the ignored area is no contour, so the same
    # 6 px -> boundary IoU 1.
    assert agnostic_scores(whole, gt) == pytest.approx(
        {"recall": 1.0, "miou": 1.0, "boundary_iou": 1.0, "num_gt_segments": 1}
    )


def test_empty_prediction_and_empty_ground_truth():
    gt = np.array([[0, 0, 1, 1]] * 4)
    empty = np.zeros((4, 4), np.int64)
    # No predicted segment: every GT segment is missed -> recall 0, mIoU 0, boundary IoU 0.
    assert agnostic_scores(empty, gt, background_id=0) == pytest.approx(
        {"recall": 0.0, "miou": 0.0, "boundary_iou": 0.0, "num_gt_segments": 1}
    )
    # No GT segment: nothing to recall -> NaN (documented), and the meter skips such images.
    scores = agnostic_scores(gt, empty, background_id=0)
    assert scores["num_gt_segments"] == 0 and math.isnan(scores["recall"]) and math.isnan(scores["miou"])


def test_meter_pools_over_ground_truth_segments():
    meter = AgnosticMeter(background_id=0)
    meter.update(PRED, GT)  # IoU 2/3, 1/2, 1; boundary IoU identical
    meter.update(PRED6, GT6)  # IoU 1/2, boundary IoU 10/24
    meter.update(np.array([[0, 0, 1, 1]] * 4), np.zeros((4, 4), np.int64))  # no GT segment: adds nothing
    scores = meter.compute()
    # recall (2 + 0) / 4 = 0.5; mIoU (2/3 + 1/2 + 1 + 1/2) / 4 = 0.666667;
    # boundary IoU (2/3 + 1/2 + 1 + 10/24) / 4 = 0.645833
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["miou"] == pytest.approx((2 / 3 + 1 / 2 + 1 + 1 / 2) / 4)
    assert scores["boundary_iou"] == pytest.approx((2 / 3 + 1 / 2 + 1 + 10 / 24) / 4)
    assert scores["num_gt_segments"] == 4


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"pred \(4, 4\) and gt \(3, 4\)"):
        agnostic_scores(PRED, GT[:3])
    with pytest.raises(TypeError, match="integer label map"):
        agnostic_scores(PRED.astype(np.float64), GT)
    with pytest.raises(ValueError, match="all 16 pixels equal ignore_index=255"):
        agnostic_scores(PRED, np.full((4, 4), 255))
    with pytest.raises(ValueError, match="matching must be 'best' or 'hungarian'"):
        AgnosticMeter(matching="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="before any update"):
        AgnosticMeter().compute()
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        boundary_band(GT, 0)
