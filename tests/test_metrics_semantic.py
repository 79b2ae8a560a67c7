"""Confusion matrix, per-class IoU, mIoU and pixel accuracy, checked against hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lofiseg.metrics.semantic import ConfusionMeter, confusion_matrix, iou_from_confusion, semantic_scores

# 3 classes, one ignored pixel at (2, 0).
TARGET = np.array([[0, 0, 1], [1, 1, 2], [255, 2, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 2], [2, 2, 0]], dtype=np.int64)
# Valid (target, pred) pairs row by row: (0,0) (0,1) (1,1) | (1,1) (1,0) (2,2) | [ignored] (2,2) (2,0)
# -> M[t, p] = [[1, 1, 0], [1, 2, 0], [1, 0, 2]]
HAND_CONFUSION = [[1, 1, 0], [1, 2, 0], [1, 0, 2]]
# IoU_0 = 1 / (row 2 + col 3 - 1) = 1/4;  IoU_1 = 2 / (3 + 3 - 2) = 1/2;  IoU_2 = 2 / (3 + 2 - 2) = 2/3
HAND_IOU = [0.25, 0.5, 2 / 3]
HAND_MIOU = (0.25 + 0.5 + 2 / 3) / 3  # 0.472222
HAND_PIXEL_ACC = 5 / 8  # trace 1 + 2 + 2 over 8 valid pixels


def test_confusion_matrix_matches_hand_count():
    assert confusion_matrix(PRED, TARGET, 3).tolist() == HAND_CONFUSION


def test_scores_match_hand_values():
    scores = semantic_scores(PRED, TARGET, 3)
    assert scores["iou"] == pytest.approx(HAND_IOU)
    assert scores["miou"] == pytest.approx(HAND_MIOU)
    assert scores["pixel_acc"] == pytest.approx(HAND_PIXEL_ACC)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    # A 4th class appears in neither map: IoU_3 = 0 / 0 -> NaN; the mean stays over classes 0..2.
    scores = semantic_scores(PRED, TARGET, 4)
    assert math.isnan(scores["iou"][3])
    assert scores["iou"][:3] == pytest.approx(HAND_IOU)
    assert scores["miou"] == pytest.approx(HAND_MIOU)


def test_iou_from_confusion_nan_only_for_empty_union():
    # Class 1 predicted once but never in the target: IoU_1 = 0 / (0 + 1 - 0) = 0, not NaN.
    iou = iou_from_confusion(torch.tensor([[3, 1], [0, 0]]))
    assert iou.tolist() == pytest.approx([3 / 4, 0.0])


def test_empty_prediction_all_background():
    # target [[0, 1], [1, 1]], pred all 0 -> M = [[1, 0], [3, 0]]
    # IoU_0 = 1 / (1 + 4 - 1) = 1/4, IoU_1 = 0 / (3 + 0 - 0) = 0, mIoU = 1/8, acc = 1/4
    scores = semantic_scores(np.zeros((2, 2), np.int64), np.array([[0, 1], [1, 1]]), 2)
    assert scores["iou"] == pytest.approx([0.25, 0.0])
    assert scores["miou"] == pytest.approx(0.125)
    assert scores["pixel_acc"] == pytest.approx(0.25)


def test_empty_ground_truth_all_background():
    # Both maps all 0: IoU_0 = 4/4 = 1, class 1 absent everywhere -> NaN, mIoU = 1.
    scores = semantic_scores(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64), 2)
    assert scores["iou"][0] == 1.0 and math.isnan(scores["iou"][1])
    assert scores["miou"] == 1.0 and scores["pixel_acc"] == 1.0


def test_meter_accumulates_batches_and_torch_equals_numpy():
    meter = ConfusionMeter(3)
    meter.update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    meter.update(PRED[None], TARGET[None])  # [1, H, W] batch
    # Twice the same counts: IoU and accuracy are unchanged, the matrix doubles.
    assert meter.confusion.tolist() == [[2 * v for v in row] for row in HAND_CONFUSION]
    scores = meter.compute()
    assert scores["iou"] == pytest.approx(HAND_IOU)
    assert scores["miou"] == pytest.approx(HAND_MIOU)
    meter.reset()
    assert int(meter.confusion.sum()) == 0


def test_batch_equals_sum_of_images():
    batch_pred = np.stack([PRED, np.zeros_like(PRED)])
    batch_target = np.stack([TARGET, TARGET])
    expected = confusion_matrix(PRED, TARGET, 3) + confusion_matrix(np.zeros_like(PRED), TARGET, 3)
    assert torch.equal(confusion_matrix(batch_pred, batch_target, 3), expected)


def test_all_ignore_image_adds_nothing_and_empty_meter_raises():
    meter = ConfusionMeter(3)
    meter.update(PRED, np.full_like(TARGET, 255))
    with pytest.raises(ValueError, match="no valid pixels"):
        meter.compute()
    with pytest.raises(ValueError, match="no valid pixels"):
        semantic_scores(PRED, np.full_like(TARGET, 255), 3)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"pred \(3, 3\) and target \(2, 3\)"):
        confusion_matrix(PRED, TARGET[:2], 3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="argmax"):
        confusion_matrix(torch.rand(3, 3), TARGET, 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(PRED.astype(np.float32), TARGET, 3)
    with pytest.raises(ValueError, match=r"pred ids must lie in \[0, 3\), got values \[5\]"):
        confusion_matrix(np.where(PRED == 2, 5, PRED), TARGET, 3)
    with pytest.raises(ValueError, match=r"target ids .* got values \[7\]"):
        confusion_matrix(PRED, np.where(TARGET == 2, 7, TARGET), 3)
    with pytest.raises(ValueError, match="ignore_index must lie outside"):
        ConfusionMeter(3, ignore_index=1)
    with pytest.raises(ValueError, match=r"\[H, W\] or \[B, H, W\]"):
        confusion_matrix(PRED[None, None], TARGET[None, None], 3)
