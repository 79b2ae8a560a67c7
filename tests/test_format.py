"""The dataset format: round trip, atomic writes, and every validation error names the file."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from lofiseg.data.format import Dataset, DatasetFormatError, DatasetWriter, Sample, dataset_digest


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
    Dataset(root).validate(max_label=7, check_sha256=False)  # 255 is always allowed (ignore)


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


def _edit_mask(root, sample_id: str) -> None:
    """Rewrite one mask of the data set at ``root`` (through the writer: the manifest follows), images kept."""
    data = Dataset(root)
    with DatasetWriter(root) as w:
        for record in data:
            mask = data.mask(record)
            if record.id == sample_id:
                mask = np.where(mask == 1, 0, 1).astype(np.uint8)
            w.copy(data, record, mask)


def test_manifest_records_each_mask_sha256_and_validate_checks_it(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    header = (root / "manifest.csv").read_text().splitlines()[0]
    assert header == "id,split,tags,image,mask,source,sha256,mask_sha256"
    record = Dataset(root)["s1"]
    assert record.mask_sha256 == hashlib.sha256((root / record.mask).read_bytes()).hexdigest()
    mask = np.asarray(Image.open(root / "masks" / "s1.png")).copy()
    mask[0, 0] = 1 - mask[0, 0]  # a valid mask, but not the one the manifest names
    Image.fromarray(mask).save(root / "masks" / "s1.png")
    with pytest.raises(DatasetFormatError, match=r"masks/s1.png: sha256 .* does not match the manifest"):
        Dataset(root).validate()
    Dataset(root).validate(check_sha256=False)


def test_manifest_without_mask_sha256_still_reads(tmp_path):
    root = tmp_path / "ds"
    samples = _write(root)
    manifest = root / "manifest.csv"
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(manifest, "w", newline="") as fh:  # the manifest as written before the column existed
        writer = csv.DictWriter(fh, fieldnames=["id", "split", "tags", "image", "mask", "source", "sha256"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    data = Dataset(root)
    assert data.extra_fields == () and all(r.mask_sha256 == "" for r in data)
    assert np.array_equal(data.mask("s0"), samples[0].mask)
    data.validate(max_label=1, require_masks=True)
    before = dataset_digest(root)
    mask = np.asarray(Image.open(root / "masks" / "s2.png")).copy()
    mask[0, 0] = 1 - mask[0, 0]
    Image.fromarray(mask).save(root / "masks" / "s2.png")
    assert dataset_digest(root) != before  # no mask hash in the manifest: the mask files themselves count


def test_dataset_digest_changes_when_only_a_mask_changes(tmp_path):
    root = tmp_path / "ds"
    _write(root)
    images = {p.name: p.read_bytes() for p in (root / "images").iterdir()}
    before = dataset_digest(root)
    assert dataset_digest(root) == before  # a pure function of the files
    _edit_mask(root, "s1")
    assert {p.name: p.read_bytes() for p in (root / "images").iterdir()} == images  # same images
    assert dataset_digest(root) != before
    after = dataset_digest(root)
    (root / "masks" / "alt").mkdir()
    (root / "masks" / "alt" / "s1_1.png").write_bytes(b"another annotation")  # a side file counts too
    assert dataset_digest(root) != after


def test_copy_errors_name_the_source_file_data_set_and_id(tmp_path):
    source = tmp_path / "raw"
    _write(source)
    (source / "images" / "s1.png").write_bytes((source / "images" / "s1.png").read_bytes()[:40])  # truncated
    data = Dataset(source)
    with pytest.raises(DatasetFormatError) as caught, DatasetWriter(tmp_path / "copy") as w:
        for record in data:
            w.copy(data, record, data.mask(record))
    message = str(caught.value)
    assert message.startswith(f"{source / 'images' / 's1.png'} (data set {source}, sample 's1'): unreadable or "
                              f"corrupt image")
    assert ".tmp-" not in message and not (tmp_path / "copy").exists()
    with pytest.raises(DatasetFormatError, match=r"masks/s0.png \(data set .*raw, sample 's0'\): mask size 4x4 "
                                                 r"!= image size 8x8"), DatasetWriter(tmp_path / "copy") as w:
        w.copy(data, data["s0"], np.zeros((4, 4), np.uint8))
