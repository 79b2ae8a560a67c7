"""Visual helpers: palette, overlays and grids checked pixel by pixel on tiny hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lofiseg.data.format import Sample
from lofiseg.viz.figures import curves_figure, save_figure
from lofiseg.viz.images import (
    BACKGROUND,
    EMPTY,
    GAP,
    TEXT_HEIGHT,
    colorize_labels,
    contact_sheet,
    image_grid,
    label_palette,
    overlay,
    save_png,
)

RED = (128, 0, 0)  # label 1


def _solid(colour, h=2, w=2) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def test_palette_hand_values():
    # VOC bit interleaving: bit 0 -> R's top bit, bit 1 -> G, bit 2 -> B, bit 3 -> R's next bit (64) ...
    # 5 = 0b101 -> R 128, B 128; 8 = 0b1000 -> R 64; 9 -> R 128 + 64 = 192; 255 (ignore) -> white.
    palette = label_palette()
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                5: (128, 0, 128), 8: (64, 0, 0), 9: (192, 0, 0), 255: (255, 255, 255)}
    for label, colour in expected.items():
        assert tuple(palette[label]) == colour, label
    assert len({tuple(c) for c in palette}) == 256  # every label has its own colour


def test_colorize_labels():
    got = colorize_labels(np.array([[0, 1], [2, 255]], np.uint8))
    assert got.dtype == np.uint8 and got.shape == (2, 2, 3)
    np.testing.assert_array_equal(got, [[[0, 0, 0], [128, 0, 0]], [[0, 128, 0], [255, 255, 255]]])
    with pytest.raises(ValueError, match=r"2-D integer label map, got shape \(2, 2, 3\)"):
        colorize_labels(got)
    with pytest.raises(ValueError, match="0..255"):
        colorize_labels(np.array([[0, 300]]))


def test_overlay_blends_labelled_pixels_only():
    image = _solid((100, 100, 100), 1, 2)
    got = overlay(image, np.array([[0, 1]], np.uint8), alpha=0.5)
    # label 0 untouched; label 1: 0.5 * 100 + 0.5 * (128, 0, 0) = (114, 50, 50)
    np.testing.assert_array_equal(got, [[[100, 100, 100], [114, 50, 50]]])
    np.testing.assert_array_equal(overlay(image, np.array([[0, 1]], np.uint8), alpha=1.0)[0, 1], RED)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\], got 1.5"):
        overlay(image, np.zeros((1, 2), np.uint8), alpha=1.5)
    with pytest.raises(ValueError, match=r"mask shape \(2, 2\) must equal image size \(1, 2\)"):
        overlay(image, np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"image must be an \(H, W, 3\) uint8 array, got shape \(1, 2\)"):
        overlay(np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.uint8))


def test_image_grid_layout_without_titles():
    # Two cells of 4 px: H = 1 * (4 + 2) + 2 = 8, W = 2 * (4 + 2) + 2 = 14. Cell (0, c) starts at y = 2,
    # x = 2 + 6c. A constant image stays constant under bilinear resizing; a label map is resized nearest, so
    # [[0, 1], [1, 0]] becomes 2x2 blocks.
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    grid = image_grid([[_solid((10, 200, 30)), labels]], cell=4)
    assert grid.shape == (8, 14, 3) and grid.dtype == np.uint8
    assert (grid[2:6, 2:6] == (10, 200, 30)).all()
    assert (grid[2:4, 8:10] == 0).all() and (grid[2:4, 10:12] == RED).all()
    assert (grid[4:6, 8:10] == RED).all() and (grid[4:6, 10:12] == 0).all()
    assert (grid[:2] == BACKGROUND).all() and (grid[:, 6:8] == BACKGROUND).all() and (grid[6:] == BACKGROUND).all()


def test_image_grid_missing_cells_scores_and_aspect():
    # Row 0 has one cell, row 1 two: row 0's second cell is EMPTY grey. A float map is grey levels.
    # A 2x4 image in an 8 px cell is scaled x2 to 4x8 and centred: rows 2..5 of the cell, background elsewhere.
    wide = _solid((0, 0, 255), 2, 4)
    grid = image_grid([[wide], [np.full((2, 2), 0.5), None]], cell=8)
    assert grid.shape == (2 * 10 + 2, 2 * 10 + 2, 3)
    cell00 = grid[2:10, 2:10]
    assert (cell00[2:6] == (0, 0, 255)).all() and (cell00[:2] == BACKGROUND).all() and (cell00[6:] == BACKGROUND).all()
    assert (grid[2:10, 12:20] == EMPTY).all() and (grid[12:20, 12:20] == EMPTY).all()
    assert (grid[12:20, 2:10] == 128).all()  # 0.5 * 255 + 0.5 = 128


def test_image_grid_titles_are_drawn():
    grid = image_grid([[_solid((0, 255, 0))]], row_titles=["ab"], col_titles=["c"], cell=16)
    text_width = 12  # PIL's bitmap font: 6 px per character
    left = text_width + 2 * GAP
    assert grid.shape == (TEXT_HEIGHT + 16 + 2 * GAP, left + 16 + 2 * GAP, 3)
    assert (grid[TEXT_HEIGHT + GAP:TEXT_HEIGHT + GAP + 16, left + GAP:left + GAP + 16] == (0, 255, 0)).all()
    assert (grid[:TEXT_HEIGHT] < 128).any() and (grid[TEXT_HEIGHT:, :left] < 128).any()  # dark text pixels
    with pytest.raises(ValueError, match="row_titles must have 1 entries, got 2"):
        image_grid([[_solid((0, 0, 0))]], row_titles=["a", "b"])
    with pytest.raises(ValueError, match="grid cell must be"):
        image_grid([[np.zeros((2, 2, 3), np.float32)]])


def test_contact_sheet_shape_and_rows():
    samples = [Sample(f"s{i}", _solid((50 * i, 0, 0), 16, 16), np.ones((16, 16), np.uint8)) for i in range(4)]
    no_mask = [Sample("n", _solid((0, 0, 200), 16, 16), None)]
    sheet = contact_sheet({"a": samples, "bb": no_mask}, per_set=3, cell=16)
    left = 4 * 6 + 2 * GAP  # longest row title "mask": 4 chars x 6 px
    assert sheet.shape == (4 * 18 + GAP, left + 3 * 18 + GAP, 3) and sheet.dtype == np.uint8
    x0 = left + GAP
    assert (sheet[GAP:GAP + 16, x0 + 18:x0 + 34] == (50, 0, 0)).all()  # image row: sample 1
    # mask row: 0.5 * (50, 0, 0) + 0.5 * (128, 0, 0) = (89, 0, 0)
    assert (sheet[GAP + 18:GAP + 34, x0 + 18:x0 + 34] == (89, 0, 0)).all()
    assert (sheet[GAP + 54:GAP + 70, x0:x0 + 16] == EMPTY).all()  # set "bb": no mask -> grey cell
    with pytest.raises(ValueError, match="per_set must be a positive int, got 0"):
        contact_sheet({"a": samples}, per_set=0)


def test_save_png_round_trip(tmp_path):
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = save_png(tmp_path / "sub" / "x.png", array)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), array)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"uint8 array, got shape \(2, 3\) dtype float64"):
        save_png(tmp_path / "y.png", np.zeros((2, 3)))


def test_a_saved_figure_is_the_same_bytes_and_names_no_software(tmp_path):
    """curves.png is in a DVC output: no matplotlib version in it, and the same history gives the same file."""
    history = [{"epoch": 0, "train_loss": 0.9}, {"epoch": 1, "train_loss": 0.5}]
    first = save_figure(curves_figure(history, ["train_loss"], "t"), tmp_path / "a.png")
    second = save_figure(curves_figure(history, ["train_loss"], "t"), tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    with Image.open(first) as im:
        assert "Software" not in im.info
