"""Mask normalisation on tiny arrays, every expected value worked out by hand from the encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

from lofiseg.data.masks import (
    MaskEncodingError,
    binary_from_0_255,
    from_bsds,
    from_trimap,
    from_voc_palette,
    relabel_regions,
    voc_colormap,
)


def save_bsds(path: Path, segmentations: list[np.ndarray]) -> Path:
    """A groundTruth .mat in the BSDS500 structure: a 1 x N cell array of structs (Segmentation, Boundaries)."""
    cells = np.empty((1, len(segmentations)), dtype=object)
    for k, seg in enumerate(segmentations):
        boundaries = np.zeros(seg.shape, dtype=bool)
        boundaries[:, 1:] |= seg[:, 1:] != seg[:, :-1]
        cells[0, k] = {"Segmentation": seg.astype(np.uint16), "Boundaries": boundaries}
    savemat(path, {"groundTruth": cells})
    return path


# --- binary SOD masks -------------------------------------------------------------------------------------

def test_binary_threshold_at_128() -> None:
    arr = np.array([[0, 127, 128], [200, 255, 1]], dtype=np.uint8)
    # >= 128 is object: 0 -> 0, 127 -> 0, 128 -> 1, 200 -> 1, 255 -> 1, 1 -> 0
    expected = np.array([[0, 0, 1], [1, 1, 0]], dtype=np.uint8)
    out = binary_from_0_255(arr)
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_binary_custom_threshold_rgb_and_bool() -> None:
    grey = np.array([[10, 60]], dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    # threshold 50: 10 -> 0, 60 -> 1, for the grey mask and its RGB copy alike
    assert binary_from_0_255(rgb, threshold=50).tolist() == [[0, 1]]
    assert binary_from_0_255(np.array([[True, False]])).tolist() == [[1, 0]]


def test_binary_rejects_bad_input() -> None:
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(MaskEncodingError, match="unequal R, G, B"):
        binary_from_0_255(colour)
    with pytest.raises(TypeError, match="dtype uint8"):
        binary_from_0_255(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(H, W, 3\|4\), got \(2, 2, 2\)"):
        binary_from_0_255(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="threshold must be an int in 1..255, got 0"):
        binary_from_0_255(np.zeros((2, 2), dtype=np.uint8), threshold=0)


# --- Pascal VOC -------------------------------------------------------------------------------------------

def test_voc_colormap_matches_the_devkit() -> None:
    cmap = voc_colormap()
    # labelcolormap: bit 0 of the index -> red's top bit, bit 1 -> green, bit 2 -> blue, then the next 3 bits
    # one place lower. 1 = 0b1 -> (128, 0, 0); 15 = 0b001111 -> (128+64, 128, 128);
    # 255 = all bits -> r gets bits 0,3,6 -> 128+64+32 = 224, g bits 1,4,7 -> 224, b bits 2,5 -> 128+64 = 192
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[15].tolist() == [192, 128, 128]
    assert cmap[255].tolist() == [224, 224, 192]


def test_voc_indices_kept_and_void_stays_ignore() -> None:
    arr = np.array([[0, 15, 255], [20, 1, 0]], dtype=np.uint8)
    # indices 0..20 are the labels themselves; 255 (void border) is already the format's ignore value
    assert np.array_equal(from_voc_palette(arr), arr)


def test_voc_rgb_colours_map_back_to_indices() -> None:
    labels = np.array([[0, 15], [255, 1]], dtype=np.uint8)
    rgb = voc_colormap()[labels]
    assert np.array_equal(from_voc_palette(rgb), labels)
    off_palette = rgb.copy()
    off_palette[0, 0] = (1, 2, 3)
    with pytest.raises(MaskEncodingError, match="#010203"):
        from_voc_palette(off_palette)


def test_voc_unexpected_index() -> None:
    with pytest.raises(MaskEncodingError, match=r"\[21, 30\]; allowed 0..20 and 255"):
        from_voc_palette(np.array([[0, 21, 30]], dtype=np.uint8))


# --- Oxford-IIIT Pet trimaps ------------------------------------------------------------------------------

def test_trimap() -> None:
    arr = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.uint8)
    # 1 pet -> 1, 2 background -> 0, 3 border -> 255
    expected = np.array([[1, 0, 255], [255, 0, 1]], dtype=np.uint8)
    assert np.array_equal(from_trimap(arr), expected)


def test_trimap_unexpected_values() -> None:
    with pytest.raises(MaskEncodingError, match=r"\[0, 7\]; allowed 1 \(pet\)"):
        from_trimap(np.array([[1, 0, 7]], dtype=np.uint8))


# --- BSDS human segmentations -----------------------------------------------------------------------------

def test_relabel_regions_compact_in_id_order() -> None:
    seg = np.array([[5, 5, 9], [300, 9, 5]], dtype=np.uint16)
    # ids present 5 < 9 < 300 -> labels 1, 2, 3
    assert relabel_regions(seg).tolist() == [[1, 1, 2], [3, 2, 1]]
    with_zero = np.array([[0, 4], [4, 7]], dtype=np.uint16)
    # 0 = unlabelled -> 255; 4 -> 1, 7 -> 2
    assert relabel_regions(with_zero).tolist() == [[255, 1], [1, 2]]


def test_relabel_regions_too_many() -> None:
    seg = np.arange(1, 256, dtype=np.uint16).reshape(15, 17)  # 255 distinct regions > 254
    with pytest.raises(MaskEncodingError, match="255 regions; at most 254"):
        relabel_regions(seg)
    fits = np.arange(1, 255, dtype=np.uint16).reshape(2, 127)  # 254 regions: ids 1..254 -> labels 1..254
    assert np.array_equal(relabel_regions(fits), fits.astype(np.uint8))


def test_from_bsds_reads_every_human_segmentation(tmp_path: Path) -> None:
    first = np.array([[1, 1, 2], [1, 2, 2]])
    second = np.array([[1, 2, 3], [4, 5, 6]])
    third = np.array([[3, 3, 3], [7, 7, 7]])
    masks = from_bsds(save_bsds(tmp_path / "100007.mat", [first, second, third]))
    assert len(masks) == 3
    assert all(m.dtype == np.uint8 for m in masks)
    assert masks[0].tolist() == [[1, 1, 2], [1, 2, 2]]  # already compact
    assert masks[1].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert masks[2].tolist() == [[1, 1, 1], [2, 2, 2]]  # ids 3, 7 -> 1, 2


def test_from_bsds_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MaskEncodingError, match="absent.mat: BSDS ground-truth file is missing"):
        from_bsds(tmp_path / "absent.mat")
    other = tmp_path / "other.mat"
    savemat(other, {"labels": np.zeros((2, 2))})
    with pytest.raises(MaskEncodingError, match=r"other\.mat: no 'groundTruth' variable \(found \['labels'\]\)"):
        from_bsds(other)
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a matlab file at all" * 10)
    with pytest.raises(MaskEncodingError, match=r"garbage\.mat: unreadable MATLAB file"):
        from_bsds(garbage)
    many = np.arange(1, 301).reshape(15, 20)
    with pytest.raises(MaskEncodingError, match=r"many\.mat: groundTruth\{1\}: segmentation has 300 regions"):
        from_bsds(save_bsds(tmp_path / "many.mat", [many]))
