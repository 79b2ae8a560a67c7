"""Pseudo ground truth (Veksler Sec. 4.3): the per-pixel rule, the CRF refinement, the two stages."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
import yaml

from lofiseg.config import ModelParams
from lofiseg.data.format import Dataset, DatasetFormatError, DatasetWriter
from lofiseg.data.labels import read_class_names
from lofiseg.data.loading import load_split
from lofiseg.data.synthetic import generate_web
from lofiseg.infer.dense_crf import CRFParams
from lofiseg.infer.predict import predict_probs, resize_probs
from lofiseg.infer.pseudo_labels import pseudo_label
from lofiseg.models.bundle import load_bundle, save_bundle
from lofiseg.models.factory import build_model
from stages import pseudo_gt
from stages import pseudo_label as pseudo_label_stage
from tests.pipeline_repo import PROJECT, TINY, deep_merge

# --- the per-pixel rule -------------------------------------------------------------------------------------


def test_hand_worked_labels_confidence_boundary_and_ignore():
    p = np.array([[0.9, 0.7, 0.6, 0.5],
                  [0.4, 0.3, 0.1, 0.65]], dtype=np.float64)
    # label: class 3 where p > 1 - p, i.e. p > 0.5; p = 0.5 is a tie -> background
    # confidence 0.7: max(p, 1 - p) = [[.9, .7, .6, .5], [.6, .7, .9, .65]] < 0.7 -> 255
    #   0.7 (either side) sits on the boundary and is kept: "below" means strictly less
    expected = np.array([[3, 3, 255, 255],
                         [255, 0, 0, 255]], dtype=np.uint8)
    out = pseudo_label(p, class_id=3, confidence=0.7)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)
    # confidence 0.5 ignores nothing: max(p, 1 - p) >= 0.5 always
    assert np.array_equal(pseudo_label(p, 3, 0.5), np.array([[3, 3, 3, 0], [0, 0, 0, 3]], np.uint8))


def test_float32_boundary_and_two_channel_input():
    p = torch.tensor([[0.7, 0.3], [0.69, 0.31]], dtype=torch.float32)
    # 0.7 stored in float32 (0.69999999) is as confident as confidence 0.7; 0.69 is not
    out = pseudo_label(p, class_id=5, confidence=0.7)
    assert out.tolist() == [[5, 0], [255, 255]]
    two = torch.stack([1 - p, p])  # (2, H, W): channel 1 is the object
    assert np.array_equal(pseudo_label(two, 5, 0.5), np.array([[5, 0], [5, 0]], np.uint8))


def test_argument_errors():
    p = np.full((2, 2), 0.8)
    with pytest.raises(ValueError, match="class_id"):
        pseudo_label(p, 0)
    with pytest.raises(ValueError, match="class_id"):
        pseudo_label(p, 255)
    with pytest.raises(ValueError, match="confidence"):
        pseudo_label(p, 1, confidence=0.4)
    with pytest.raises(ValueError, match=r"probs_fg must hold finite probabilities"):
        pseudo_label(np.full((2, 2), 1.5), 1)
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(2, H, W\)"):
        pseudo_label(np.full((3, 2, 2), 0.3), 1)
    with pytest.raises(ValueError, match="image is required"):
        pseudo_label(p, 1, crf=CRFParams())


def test_crf_flips_an_isolated_noisy_pixel():
    image = np.full((16, 16, 3), 100, np.uint8)
    image[:, 8:] = 200  # two flat halves: left background, right object
    p = np.full((16, 16), 0.2, np.float32)
    p[:, 8:] = 0.8
    p[4, 3] = 0.9  # one confident object pixel inside the background half, same colour as its neighbours
    raw = pseudo_label(p, 2, 0.5)
    assert raw[4, 3] == 2 and (raw == 2).sum() == 16 * 8 + 1
    refined = pseudo_label(p, 2, 0.5, image=image, crf=CRFParams(iterations=5))
    assert refined[4, 3] == 0  # the pairwise terms outvote its unary
    assert (refined[:, :8] == 0).all() and (refined[:, 8:] == 2).all()


# --- the stages ---------------------------------------------------------------------------------------------

CLASSES = ["sun", "leaf"]  # TINY's web.classes: sun id 1, leaf id 2
MODEL_SIZE = 16  # the class models see 16 px, the web images are 32 px: probabilities are upsampled


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    with DatasetWriter(root / "web") as writer:
        for sample in generate_web(CLASSES, per_class=3, negatives=2, confuser_prob=0.3, test_per_class=1,
                                   image_size=32, seed=0):
            writer.add(sample)
    shutil.rmtree(root / "web" / "masks")  # the stage must never need the web set's ground truth
    for index, name in enumerate(CLASSES):
        torch.manual_seed(index)
        model = build_model(num_classes=2, **ModelParams(arch="tiny_unet", width=4).model_dump())
        save_bundle(root / "models" / name / "model.pt", model.eval(),
                    {"class": name, "supervision": "reg", "image_size": MODEL_SIZE, "channel": 1})
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    tiny = deep_merge(raw, TINY)
    tiny["pseudo_label"] = {"crf": True, "crf_iterations": 2, "confidence": 0.55, "splits": ["train"],
                            "batch_size": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))  # keeps web.classes order
    for name in CLASSES:
        pseudo_label_stage.main(["--params", str(root / "params.yaml"), "--class", name, "--data", str(root / "web"),
                                 "--model", str(root / "models" / name), "--out", str(root / "pseudo" / name)])
    return root


def test_pseudo_label_stage_writes_the_class_labels(workdir):
    root = workdir
    web, out = Dataset(root / "web"), Dataset(root / "pseudo" / "sun")
    out.validate(require_masks=True, allow_empty=True)
    sun_train = [r for r in web if r.tags == ("sun",) and r.split == "train"]
    assert [r.id for r in out] == [r.id for r in sun_train]  # train only (splits), no test, no negatives
    assert read_class_names(out.root) == ["background", "sun", "leaf"]
    assert set(out.extra_fields) >= {"class", "class_id", "foreground_fraction", "ignored_fraction"}

    model, info = load_bundle(root / "models" / "sun" / "model.pt")
    split = load_split(web, sun_train, MODEL_SIZE, with_masks=False)
    probs = predict_probs(model, split)
    for record, source, sample_probs in zip(out, sun_train, probs, strict=True):
        assert (out.root / record.image).read_bytes() == (web.root / source.image).read_bytes()  # byte for byte
        assert record.split == "train" and record.tags == ("sun",) and record.extra["class"] == "sun"
        mask = out.mask(record)
        assert set(np.unique(mask).tolist()) <= {0, 1, 255}
        image = web.image(source)
        expected = pseudo_label(resize_probs(sample_probs[1:2], 32, 32)[0], 1, 0.55, image=image,
                                crf=CRFParams(iterations=2))
        assert np.array_equal(mask, expected)
        assert float(record.extra["foreground_fraction"]) == pytest.approx((mask == 1).mean(), abs=1e-6)
        assert float(record.extra["ignored_fraction"]) == pytest.approx((mask == 255).mean(), abs=1e-6)


def test_pseudo_gt_is_the_union_with_class_ids(workdir):
    root = workdir
    pseudo_gt.main(["--params", str(root / "params.yaml"), "--parts", str(root / "pseudo"),
                    "--out", str(root / "pseudo_gt")])
    union = Dataset(root / "pseudo_gt")
    union.validate(require_masks=True, allow_empty=True)
    assert read_class_names(union.root) == ["background", "sun", "leaf"]
    parts = {name: Dataset(root / "pseudo" / name) for name in CLASSES}
    assert sorted(r.id for r in union) == sorted(r.id for p in parts.values() for r in p)
    for class_id, name in enumerate(CLASSES, start=1):
        for record in parts[name]:
            merged = union[record.id]
            assert merged.tags == (name,) and merged.split == record.split
            assert np.array_equal(union.mask(merged), parts[name].mask(record))
            assert set(np.unique(union.mask(merged)).tolist()) <= {0, class_id, 255}


def _copy_part(src, dst, corrupt: int | None = None):
    data = Dataset(src)
    with DatasetWriter(dst, extra_fields=data.extra_fields) as writer:
        for i, record in enumerate(data):
            mask = data.mask(record)
            if corrupt is not None and i == 1:
                mask = mask.copy()
                mask[0, 0] = corrupt
            writer.copy(data, record, mask, record.extra)


def test_pseudo_gt_rejects_a_foreign_value_naming_the_file(workdir, tmp_path):
    parts = tmp_path / "parts"
    _copy_part(workdir / "pseudo" / "sun", parts / "sun", corrupt=2)  # leaf's id inside sun's labels
    _copy_part(workdir / "pseudo" / "leaf", parts / "leaf")
    bad = Dataset(parts / "sun").records[1]
    where = re.escape(f"{parts / 'sun' / bad.mask} (data set {parts / 'sun'}, sample {bad.id!r})")
    with pytest.raises(DatasetFormatError, match=rf"^{where}: mask values \[2\] are not allowed.*class id 1"):
        pseudo_gt.main(["--params", str(workdir / "params.yaml"), "--parts", str(parts), "--out",
                        str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # atomic: nothing half-written


def test_pseudo_gt_names_a_missing_class(workdir, tmp_path, capsys):
    parts = tmp_path / "parts"
    _copy_part(workdir / "pseudo" / "sun", parts / "sun")
    argv = ["--params", str(workdir / "params.yaml"), "--parts", str(parts), "--out", str(tmp_path / "out")]
    with pytest.raises(DatasetFormatError, match=r"class\(es\) \['leaf'\]"):
        pseudo_gt.main(argv)
    from stages.cli import run

    assert run(pseudo_gt.main, argv) == 2
    assert "leaf" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
