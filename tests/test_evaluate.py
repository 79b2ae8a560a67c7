"""lofiseg.evaluate: the scoring the evaluate stages and the registry gate call, on hand-worked inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lofiseg.data.format import Dataset, DatasetWriter, Sample
from lofiseg.evaluate.gate import MetricsFileError, evaluation_identity, metric_at, read_metrics
from lofiseg.evaluate.regions import metrics_by_method
from lofiseg.evaluate.semantic import DeepLabScoring, miou_ratio, score_pseudo_labels
from lofiseg.infer.predict import resize_probs

CLASSES = ["background", "sun", "leaf"]


def test_resize_probs_is_bilinear_and_keeps_a_map_at_its_size():
    probs = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    assert resize_probs(probs, 2, 2) is probs
    wide = resize_probs(probs, 2, 4)  # half-pixel centres: columns at x = -0.25, 0.25, 0.75, 1.25 (clamped)
    assert wide[0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]
    assert torch.allclose(wide.sum(0), torch.ones(2, 4))  # still a distribution per pixel


def test_miou_ratio():
    assert miou_ratio({"miou": 0.3}, {"miou": 0.6}) == pytest.approx(0.5)
    assert miou_ratio(None, {"miou": 0.6}) is None
    assert miou_ratio({"miou": 0.3}, {"miou": 0.0}) is None


def test_pseudo_labels_are_scored_over_the_pixels_they_label(tmp_path):
    image = np.zeros((2, 2, 3), np.uint8)
    with DatasetWriter(tmp_path / "web") as writer:
        writer.add(Sample("a", image, np.array([[1, 0], [0, 0]], np.uint8), tags=("sun",)))
        writer.add(Sample("b", image, None, tags=("leaf",)))  # no ground truth: not scored
    with DatasetWriter(tmp_path / "pseudo") as writer:
        writer.add(Sample("a", image, np.array([[1, 1], [0, 255]], np.uint8), tags=("sun",)))
        writer.add(Sample("b", image, np.array([[2, 2], [2, 2]], np.uint8), tags=("leaf",)))
    scores = score_pseudo_labels(Dataset(tmp_path / "web"), Dataset(tmp_path / "pseudo"), CLASSES)
    # 3 labelled pixels of 4; truth (sun = 1) 1 0 / 0 -, labels 1 1 / 0 -: sun TP 1 FP 1, background TP 1 FN 1
    assert scores["labelled_fraction"] == 0.75
    assert scores["iou"] == {"background": 0.5, "sun": 0.5, "leaf": None}
    assert scores["miou"] == pytest.approx(0.5) and scores["pixel_acc"] == pytest.approx(2 / 3)


def test_deeplab_truth_is_mapped_by_class_name():
    scoring = DeepLabScoring(CLASSES, {"scenes": ["background", "leaf", "sun", "brick"]})
    truth = scoring.truth("scenes", np.array([[0, 1, 2, 3, 255]], np.uint8))
    assert truth.tolist() == [[0, 2, 1, 0, 255]]  # brick is not in the label space: background


def test_region_metrics_nest_the_further_sets_in_each_method():
    by_set = {"regions": {"cas": {"covering": 0.5}, "ce": {"covering": 0.4}}, "bsds": {"cas": {"covering": 0.3},
                                                                                      "ce": {"covering": 0.2}}}
    assert metrics_by_method(by_set) == {"cas": {"covering": 0.5, "bsds": {"covering": 0.3}},
                                         "ce": {"covering": 0.4, "bsds": {"covering": 0.2}}}


def test_gate_metric_and_evaluation_identity(tmp_path):
    file = tmp_path / "semantic.json"
    file.write_text(json.dumps({"deeplab_pseudo": {"miou": 0.4, "iou": [0.1]}}))
    metrics = read_metrics(file, "registry.models.x.metrics")
    assert metric_at(metrics, "deeplab_pseudo/miou", file, "gate") == 0.4
    with pytest.raises(MetricsFileError, match="has no key 'mIoU' under deeplab_pseudo"):
        metric_at(metrics, "deeplab_pseudo/mIoU", file, "gate")
    with pytest.raises(MetricsFileError, match="holds list"):
        metric_at(metrics, "deeplab_pseudo/iou", file, "gate")
    file.write_text("[1]")
    with pytest.raises(MetricsFileError, match="must hold a JSON object"):
        read_metrics(file, "key")
    measured = [("evaluate.semantic_scales", [1.0, 1.5]), ("evaluate.semantic_flip", True)]
    assert evaluation_identity("abc.dir", measured) == ("abc.dir evaluate.semantic_scales=[1.0, 1.5] "
                                                        "evaluate.semantic_flip=true")
    assert evaluation_identity(None, measured) is None
