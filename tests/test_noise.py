"""Low-fidelity label noise: flips keep geometry, are deterministic, nested across rates, and recorded."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lofiseg.data.format import Dataset, DatasetFormatError, DatasetWriter, Sample, dataset_digest
from lofiseg.data.noise import (
    corrupt,
    drop_regions,
    make_noisy_copy,
    permute_labels,
    sample_rng,
    shift_boundaries,
)
from lofiseg.evaluate.gate import eval_set_identity
from stages import noise as noise_stage
from stages.cli import run
from tests.pipeline_repo import PROJECT


def test_binary_flip_keeps_ignore_and_geometry():
    mask = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)
    flipped, perm = permute_labels(mask, np.random.default_rng(0))
    assert perm == {0: 1, 1: 0}
    assert flipped.tolist() == [[1, 0, 255], [0, 0, 1]]


def test_empty_binary_mask_flips_to_full():
    flipped, _ = permute_labels(np.zeros((2, 2), np.uint8), np.random.default_rng(0))
    assert flipped.tolist() == [[1, 1], [1, 1]]


def test_multi_region_permutation_is_not_identity_and_keeps_segments():
    mask = np.array([[3, 3, 7], [9, 9, 7], [255, 3, 7]], np.uint8)
    for seed in range(20):
        noisy, perm = permute_labels(mask, np.random.default_rng(seed))
        assert sorted(perm) == [3, 7, 9] and sorted(perm.values()) == [3, 7, 9]
        assert any(a != b for a, b in perm.items())
        # same partition: pixels share a label after iff they shared one before
        same_before = mask.reshape(-1, 1) == mask.reshape(1, -1)
        same_after = noisy.reshape(-1, 1) == noisy.reshape(1, -1)
        assert np.array_equal(same_before, same_after)
        assert noisy[2, 0] == 255


def test_flip_decision_is_nested_across_rates():
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    ids = [f"img{i}" for i in range(400)]
    flipped = {r: {i for i in ids if corrupt(mask, r, sample_rng(7, i)).flipped} for r in (0.0, 0.1, 0.5, 1.0)}
    assert flipped[0.0] == set() and flipped[1.0] == set(ids)
    assert flipped[0.1] <= flipped[0.5]
    assert 0.05 < len(flipped[0.1]) / 400 < 0.15 and 0.42 < len(flipped[0.5]) / 400 < 0.58


def test_deterministic_by_seed_and_id():
    mask = np.array([[1, 2], [3, 0]], np.uint8)
    a = corrupt(mask, 0.5, sample_rng(1, "x"))
    b = corrupt(mask, 0.5, sample_rng(1, "x"))
    assert a.flipped == b.flipped and np.array_equal(a.mask, b.mask)


def test_shift_boundaries_by_hand():
    mask = np.zeros((5, 5), np.uint8)
    mask[2, 2] = 1
    grown = shift_boundaries(mask, 1)
    assert grown.sum() == 5  # the pixel and its 4 neighbours at distance 1 (diagonals are at sqrt 2)
    square = np.zeros((5, 5), np.uint8)
    square[1:4, 1:4] = 2
    shrunk = shift_boundaries(square, -1)
    assert shrunk.tolist()[2] == [0, 0, 2, 0, 0] and (shrunk == 2).sum() == 1


def test_drop_regions_sets_ignore():
    mask = np.array([[0, 1], [2, 2]], np.uint8)
    out, dropped = drop_regions(mask, 1.0, np.random.default_rng(0))
    assert dropped == (1, 2) and out.tolist() == [[0, 255], [255, 255]]


def test_bad_rate():
    with pytest.raises(ValueError, match="rate must be in"):
        corrupt(np.zeros((2, 2), np.uint8), 1.5, np.random.default_rng(0))


def test_noisy_copy_only_touches_train_and_records_it(tmp_path):
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "src") as w:
        for i in range(30):
            mask = np.zeros((8, 8), np.uint8)
            mask[2:6, 2:6] = 1
            split = "train" if i < 20 else "test"
            w.add(Sample(f"a{i:02d}", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), mask, split))
    counts = make_noisy_copy(tmp_path / "src", tmp_path / "noisy", rate=0.5, seed=0)
    src, noisy = Dataset(tmp_path / "src"), Dataset(tmp_path / "noisy")
    assert counts["train"] == 20 and 0 < counts["flipped"] < 20
    for rec in noisy:
        assert (tmp_path / "noisy" / rec.image).read_bytes() == (tmp_path / "src" / rec.image).read_bytes()
        changed = not np.array_equal(noisy.mask(rec), src.mask(rec.id))
        assert changed == (rec.extra["noise_flipped"] == "1")
        assert rec.extra["noise_rate"] == "0.5"
        if rec.split == "test":
            assert not changed
    assert sum(r.extra["noise_flipped"] == "1" for r in noisy) == counts["flipped"]


def _source_set(root: Path) -> Path:
    """A tiny saliency-like set under ``root/saliency``: 4 train and 2 val images with binary masks."""
    rng = np.random.default_rng(0)
    with DatasetWriter(root / "saliency") as w:
        for i in range(6):
            mask = np.zeros((8, 8), np.uint8)
            mask[2:6, 2:6] = 1
            w.add(Sample(f"a{i}", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), mask,
                         "train" if i < 4 else "val"))
    return root / "saliency"


def test_noise_stage_names_the_truncated_source_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A truncated image in data/raw/<set>: the message names the file to replace, its data set and id, never
    the stage's temporary copy; no output is left."""
    source = _source_set(tmp_path / "raw")
    image = source / "images" / "a2.png"
    image.write_bytes(image.read_bytes()[:50])
    where = f"{image} (data set {source}, sample 'a2'): unreadable or corrupt image"
    with pytest.raises(DatasetFormatError) as caught:
        make_noisy_copy(source, tmp_path / "noisy", rate=0.5, seed=0)
    assert str(caught.value).startswith(where) and ".tmp-" not in str(caught.value)
    argv = ["--params", str(PROJECT / "params.yaml"), "--rate", "0.5", "--raw", str(tmp_path / "raw"),
            "--out", str(tmp_path / "noisy")]
    assert run(noise_stage.main, argv) == 2
    err = capsys.readouterr().err
    assert f"error: {where}" in err and ".tmp-" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # neither the output nor a temporary folder


def test_noise_names_the_source_mask_of_a_wrong_format_or_size(tmp_path: Path) -> None:
    source = _source_set(tmp_path / "raw")
    mask = source / "masks" / "a1.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(mask)  # RGB: not a label map
    with pytest.raises(DatasetFormatError, match=rf"^{re.escape(str(mask))} \(data set {re.escape(str(source))}, "
                                                 r"sample 'a1'\): mask must be a single-channel"):
        make_noisy_copy(source, tmp_path / "noisy", rate=0.5, seed=0)
    Image.fromarray(np.zeros((4, 8), np.uint8)).save(mask)  # another size than its image
    with pytest.raises(DatasetFormatError, match=rf"^{re.escape(str(mask))} \(data set {re.escape(str(source))}, "
                                                 r"sample 'a1'\): mask size 8x4 != image size 8x8"):
        make_noisy_copy(source, tmp_path / "noisy", rate=0.5, seed=0)
    assert not (tmp_path / "noisy").exists()


def test_boundary_noise_alone_changes_the_data_identity(tmp_path: Path) -> None:
    """noise.boundary_px changes only masks: the copies' images are the same bytes, yet their digest (the
    training fingerprints' data part) and their evaluation-set identity differ."""
    source = _source_set(tmp_path / "raw")
    make_noisy_copy(source, tmp_path / "b0", rate=0.0, seed=0, boundary_px=0)
    make_noisy_copy(source, tmp_path / "b1", rate=0.0, seed=0, boundary_px=1)
    b0, b1 = Dataset(tmp_path / "b0"), Dataset(tmp_path / "b1")
    assert [r.sha256 for r in b0] == [r.sha256 for r in b1]
    assert [r.mask_sha256 for r in b0] != [r.mask_sha256 for r in b1]
    assert dataset_digest(b0.root) != dataset_digest(b1.root)
    assert eval_set_identity(str(b0.root)) != eval_set_identity(str(b1.root))
    make_noisy_copy(source, tmp_path / "again", rate=0.0, seed=0, boundary_px=1)
    assert dataset_digest(tmp_path / "again") == dataset_digest(b1.root)
    assert eval_set_identity(str(tmp_path / "again")) == eval_set_identity(str(b1.root))
