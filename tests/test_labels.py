"""remap_labels: a data set's class ids to another label space, by class name; the web images' labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lofiseg.data.format import DatasetFormatError, Record
from lofiseg.data.labels import (
    class_names_json,
    label_lookup,
    read_class_names,
    remap_labels,
    web_class,
    web_truth_labels,
)
from lofiseg.data.masks import VOC_CLASSES

SCENES = ["background", "sun", "leaf", "brick", "star"]  # synthetic.classes order, ids 0..4
SEMANTIC = ["background", "leaf", "sun"]  # web.classes order: leaf 1, sun 2; brick and star unknown


def test_remap_by_name_background_unknown_and_ignore():
    mask = np.array([[0, 1, 2, 3],
                     [4, 255, 1, 0]], dtype=np.uint8)
    # 0 -> 0; sun (1) -> 2; leaf (2) -> 1; brick (3), star (4) -> 255; 255 stays 255
    expected = np.array([[0, 2, 1, 255],
                         [255, 255, 2, 0]], dtype=np.uint8)
    out = remap_labels(mask, SCENES, SEMANTIC)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_remap_torch_keeps_type_and_dtype():
    mask = torch.tensor([[0, 1], [2, 255]], dtype=torch.uint8)
    out = remap_labels(mask, SCENES, SEMANTIC)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert out.tolist() == [[0, 2], [1, 255]]
    long_out = remap_labels(mask.long(), SCENES, SEMANTIC)
    assert long_out.dtype == torch.int64 and long_out.tolist() == [[0, 2], [1, 255]]


def test_identity_and_background_by_position():
    mask = np.arange(3, dtype=np.uint8).reshape(1, 3)
    assert np.array_equal(remap_labels(mask, SEMANTIC, SEMANTIC), mask)
    # id 0 is background on both sides whatever it is called
    assert remap_labels(mask, ["_bg_", "leaf", "x"], SEMANTIC).tolist() == [[0, 1, 255]]


def test_custom_ignore_value_and_lookup_table():
    table = label_lookup(["background", "sun"], SEMANTIC, ignore=200)
    assert table.shape == (256,) and table[0] == 0 and table[1] == 2 and table[2] == 200
    assert remap_labels(np.array([[1, 200]]), ["background", "sun", "star"], SEMANTIC, ignore=200).tolist() == \
        [[2, 200]]


def test_ids_outside_the_source_classes_are_an_error():
    with pytest.raises(ValueError, match=r"ids \[5, 7\] outside the source classes 0..4"):
        remap_labels(np.array([[5, 7, 0]], dtype=np.uint8), SCENES, SEMANTIC)
    with pytest.raises(ValueError, match=r"ids \[9\]"):
        remap_labels(torch.tensor([[9]]), SCENES, SEMANTIC)
    with pytest.raises(TypeError, match="integer ids"):
        remap_labels(np.zeros((2, 2), np.float32), SCENES, SEMANTIC)
    with pytest.raises(ValueError, match="duplicate"):
        remap_labels(np.zeros((2, 2), np.uint8), ["background", "sun", "sun"], SEMANTIC)
    with pytest.raises(ValueError, match="ignore must be an int"):
        label_lookup(SCENES, SEMANTIC, ignore=1)


def test_classes_json_round_trip(tmp_path):
    assert read_class_names(tmp_path) is None
    (tmp_path / "classes.json").write_bytes(class_names_json(SEMANTIC))
    assert read_class_names(tmp_path) == SEMANTIC
    (tmp_path / "classes.json").write_text('{"not": "a list"}')
    with pytest.raises(DatasetFormatError, match="classes.json"):
        read_class_names(tmp_path)
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"


def test_web_truth_labels_give_the_object_its_class_id_and_keep_ignore():
    mask = np.array([[0, 1, 2], [255, 3, 0]], dtype=np.uint8)
    labels = web_truth_labels(mask, 3)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[0, 3, 3], [255, 3, 0]]  # 255 is not overflowed into another class
    record = Record("a", "train", ("web", "leaf"), "images/a.png", "", "web", "0")
    assert web_class(record, ["sun", "leaf"]) == "leaf"
    assert web_class(record, ["sun"]) is None
