"""The dataset format: round trip, atomic writes, and every validation error names the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lofiseg.data.format import Dataset, DatasetFormatError, DatasetWriter, Sample


def _sample(i: int, split: str = "train", size: int = 8, mask_value: int = 1) -> Sample:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2] = mask_value
    return Sample(id=f"s{i}", image=image, mask=mask, split=split, tags=("sun",), source="test")


def _write(root, n=3):
    samples = [_sample(i, split) for i, split in zip(range(n), ["train", "val", "test"] * n, strict=False)]
    with DatasetWriter(root) as w:
        for s in samples:
            w.add(s)
    return samples


def test_round_trip(tmp_path):
    samples = _write(tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    assert len(ds) == 3 and [r.split for r in ds] == ["train", "val", "test"]
    for s in samples:
        assert np.array_equal(ds.image(s.id), s.image)
        assert np.array_equal(ds.mask(s.id), s.mask)
        assert ds[s.id].tags == ("sun",)
    ds.validate(max_label=1, require_masks=True)


def test_failed_write_leaves_previous_dataset_untouched(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.raises(RuntimeError), DatasetWriter(root) as w:
        w.add(_sample(9))
        raise RuntimeError("killed mid-way")
    assert sorted(p.name for p in root.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary folder left behind


def test_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), DatasetWriter(tmp_path / "ds") as w:
        w.add(_sample(0))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetFormatError, match="manifest is missing"):
        Dataset(tmp_path / "ds")


def test_duplicate_id_in_writer(tmp_path):
    with pytest.raises(DatasetFormatError, match="duplicate sample id 's0'"), DatasetWriter(tmp_path / "ds") as w:
        w.add(_sample(0))
        w.add(_sample(0))


def test_duplicate_id_in_manifest(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    manifest = root / "manifest.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"manifest.csv: duplicate ids \['s0'\]"):
        Dataset(root)


def test_corrupt_image_named(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    (root / "images" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetFormatError, match=r"images/s1.png: (sha256|unreadable)"):
        Dataset(root).validate()
    with pytest.raises(DatasetFormatError, match=r"images/s1.png: unreadable or corrupt image"):
        Dataset(root).validate(check_sha256=False)


def test_missing_image_and_mask_named(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    (root / "masks" / "s2.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"masks/s2.png: mask file is missing"):
        Dataset(root).validate()
    (root / "images" / "s0.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"images/s0.png: image file is missing"):
        Dataset(root).validate()


def test_mask_size_mismatch_named(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    Image.fromarray(np.zeros((4, 8), np.uint8)).save(root / "masks" / "s1.png")
    with pytest.raises(DatasetFormatError, match=r"masks/s1.png: mask size 8x4 != image size 8x8"):
        Dataset(root).validate()


def test_unexpected_mask_values_named(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    bad = np.zeros((8, 8), np.uint8)
    bad[0, 0], bad[0, 1], bad[0, 2] = 7, 255, 1
    Image.fromarray(bad).save(root / "masks" / "s0.png")
    with pytest.raises(DatasetFormatError, match=r"masks/s0.png: unexpected mask values \[7\]; allowed 0..1"):
        Dataset(root).validate(max_label=1)
    Dataset(root).validate(max_label=7)  # 255 is always allowed (ignore)


def test_rgb_mask_rejected(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "masks" / "s0.png")
    with pytest.raises(DatasetFormatError, match=r"masks/s0.png: mask must be a single-channel"):
        Dataset(root).validate()


def test_empty_mask(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(root) as w:
        w.add(_sample(0, mask_value=255))  # half ignore, half background: fine
        s = _sample(1)
        s.mask[:] = 255
        w.add(s)
    with pytest.raises(DatasetFormatError, match=r"masks/s1.png: mask has no labelled pixel"):
        Dataset(root).validate()
    Dataset(root).validate(allow_empty=True)


def test_writer_rejects_mask_of_wrong_size(tmp_path):
    s = _sample(0)
    s.mask = np.zeros((3, 3), np.uint8)
    with pytest.raises(DatasetFormatError, match=r"sample 's0': mask size 3x3 != image size 8x8"):
        with DatasetWriter(tmp_path / "ds") as w:
            w.add(s)
    assert not (tmp_path / "ds").exists()


def test_missing_manifest_column(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    text = (root / "manifest.csv").read_text().replace("sha256", "checksum")
    (root / "manifest.csv").write_text(text)
    with pytest.raises(DatasetFormatError, match=r"missing columns \['sha256'\]"):
        Dataset(root)


def test_tags_only_samples_and_extra_fields(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter(root, extra_fields=("origin",)) as w:
        s = _sample(0)
        s.mask = None
        s.extra = {"origin": "web"}
        w.add(s, image_ext="jpg")
    ds = Dataset(root)
    assert not ds["s0"].has_mask and ds["s0"].extra == {"origin": "web"}
    assert ds["s0"].image.endswith(".jpg")
    with pytest.raises(DatasetFormatError, match="has no mask"):
        ds.validate(require_masks=True)
