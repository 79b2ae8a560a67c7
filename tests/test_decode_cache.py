"""lofiseg.data.decode_cache: load_split's tensors from a content-keyed cache, never stale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lofiseg.data import decode_cache
from lofiseg.data.decode_cache import CACHE_ENV, cached_load_split, decode_cache_dir, entry_key
from lofiseg.data.format import Dataset, DatasetFormatError, DatasetWriter, Sample, encode_png
from lofiseg.data.loading import load_split


def write_set(root: Path, seed: int = 0, mask_offset: int = 0, masks: bool = True) -> Dataset:
    """Four 40 x 48 samples (decoded at 32 px: every load resizes), masks with labels 0..2."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root) as writer:
        for i in range(4):
            image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            mask = ((np.arange(40 * 48).reshape(40, 48) // 7 + i + mask_offset) % 3).astype(np.uint8)
            writer.add(Sample(f"s{i}", image, mask if masks else None, split="train", tags=(f"t{i}",)))
    return Dataset(root)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def assert_same(got, want) -> None:
    assert torch.equal(got.images, want.images) and got.images.dtype == torch.uint8
    assert (got.masks is None and want.masks is None) or torch.equal(got.masks, want.masks)
    assert got.ids == want.ids and got.tags == want.tags
    assert (got.extents is None and want.extents is None) or torch.equal(got.extents, want.extents)


def test_a_second_load_reads_the_cache_and_equals_decoding(tmp_path, cache, monkeypatch):
    data = write_set(tmp_path / "a")
    records = data.split("train")
    first = cached_load_split(data, records, 32)
    assert_same(first, load_split(data, records, 32))
    assert len(list(cache.glob("*.pt"))) == 2  # images and masks

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(decode_cache, "load_split", no_decoding)
    assert_same(cached_load_split(data, records, 32), first)
    with pytest.raises(AssertionError, match="decoded although cached"):  # other records: another entry
        cached_load_split(data, records[1:3], 32)
    with pytest.raises(AssertionError, match="decoded although cached"):
        cached_load_split(data, records, 16)


def test_a_changed_file_is_decoded_again_even_with_the_manifest_unchanged(tmp_path, cache):
    data = write_set(tmp_path / "a")
    records = data.split("train")
    cached_load_split(data, records, 32)
    path = data.root / records[2].image
    path.write_bytes(encode_png(np.full((40, 48, 3), 200, dtype=np.uint8)))  # same name, same manifest
    mask_path = data.root / records[0].mask
    mask_path.write_bytes(encode_png(np.zeros((40, 48), dtype=np.uint8)))
    again = cached_load_split(data, records, 32)
    assert_same(again, load_split(data, records, 32))
    assert bool((again.images[2] == 200).all()) and int(again.masks[0].max()) == 0


def test_copies_with_other_masks_share_the_decoded_images(tmp_path, cache):
    clean, noisy = write_set(tmp_path / "clean"), write_set(tmp_path / "noisy", mask_offset=1)
    a = cached_load_split(clean, clean.split("train"), 32)
    b = cached_load_split(noisy, noisy.split("train"), 32)
    assert torch.equal(a.images, b.images) and not torch.equal(a.masks, b.masks)
    assert len(list(cache.glob("*.pt"))) == 3  # one image entry, two mask entries


def test_image_only_sets_unreadable_entries_and_errors(tmp_path, cache):
    web = write_set(tmp_path / "web", masks=False)
    records = web.split("train")
    split = cached_load_split(web, records, 32, with_masks=False)
    assert split.masks is None and [p.name for p in cache.glob("*.pt")]
    for entry in cache.glob("*.pt"):
        entry.write_bytes(b"not a tensor")
    assert_same(cached_load_split(web, records, 32, with_masks=False), load_split(web, records, 32, False))
    assert torch.load(next(cache.glob("*.pt")), weights_only=True).dtype == torch.uint8  # written again
    with pytest.raises(DatasetFormatError, match="has no mask"):
        cached_load_split(web, records, 32)
    (web.root / records[0].image).unlink()
    with pytest.raises(DatasetFormatError, match="s0.png.*image file is missing"):
        cached_load_split(web, records, 32, with_masks=False)


def test_the_cache_can_be_turned_off_and_defaults_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    assert decode_cache_dir() is None
    data = write_set(tmp_path / "a")
    assert_same(cached_load_split(data, data.split("train"), 32), load_split(data, data.split("train"), 32))
    assert not (tmp_path / ".cache").exists()
    monkeypatch.delenv(CACHE_ENV)
    assert decode_cache_dir() == Path(".cache/lofiseg/decoded")


def test_every_input_of_the_tensors_enters_the_key():
    base = entry_key("images", ["png:aa", "png:bb"], 32, {})
    assert base == entry_key("images", ["png:aa", "png:bb"], 32, {})
    others = [entry_key("masks", ["png:aa", "png:bb"], 32, {}), entry_key("images", ["png:bb", "png:aa"], 32, {}),
              entry_key("images", ["png:aa", "png:bb"], 64, {}), entry_key("images", ["png:aa"], 32, {}),
              entry_key("images", ["png:aa", "png:bb"], 32, {"resize": "crop"})]
    assert len({base, *others}) == 6
