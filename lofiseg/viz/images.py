"""Qualitative pictures: coloured label maps, mask overlays, titled image grids, contact sheets, PNG files.

Conventions: a 3-D ``(H, W, 3)`` uint8 array is an image (resized bilinearly); a 2-D integer or bool array is
a label map (coloured with :func:`colorize_labels`, resized nearest-neighbour); a 2-D float array in [0, 1] is a
score map (grey, bilinear). Titles use PIL's built-in bitmap font, so no font file is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lofiseg.atomic import atomic_write_bytes
from lofiseg.data.format import IGNORE, Sample, encode_png

GAP = 2  # pixels between cells and around the grid
BACKGROUND = 255  # grid background: white
EMPTY = 200  # a missing cell: light grey
TEXT_HEIGHT = 14  # band above the grid holding the column titles
IGNORE_COLOUR = (255, 255, 255)


def label_palette() -> np.ndarray:
    """(256, 3) uint8 palette: the Pascal VOC bit-interleaved colours for 0..254, white for 255 (ignore).

    Label l's bits b0 b1 b2 go to the top bits of R, G, B respectively, then the next three bits one place
    lower, and so on: 0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), 4 (0, 0, 128).
    """
    labels = np.arange(256)
    palette = np.zeros((256, 3), np.int64)
    for shift in range(8):  # 8 bit planes of the label, not a loop over pixels
        for channel in range(3):
            palette[:, channel] |= ((labels >> (3 * shift + channel)) & 1) << (7 - shift)
    palette[IGNORE] = IGNORE_COLOUR
    return palette.astype(np.uint8)


_PALETTE = label_palette()


def colorize_labels(mask: np.ndarray) -> np.ndarray:
    """(H, W) integer label map -> (H, W, 3) uint8 colours from the fixed palette (255 = white)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be a 2-D integer label map, got shape {mask.shape} dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask labels must lie in 0..255, got range {mask.min()}..{mask.max()}")
    return _PALETTE[mask.astype(np.intp)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the label colours into the image with weight ``alpha`` where the label is not 0 (background)."""
    _check_image(image, "image")
    if np.asarray(mask).shape != image.shape[:2]:
        raise ValueError(f"mask shape {np.asarray(mask).shape} must equal image size {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colours = colorize_labels(mask).astype(np.float32)
    weight = np.where(np.asarray(mask) != 0, np.float32(alpha), np.float32(0.0))[..., None]
    blended = image.astype(np.float32) * (1.0 - weight) + colours * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _check_image(image: np.ndarray, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"shape {image.shape} dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {got}")


def _as_rgb_cell(array: np.ndarray | None, cell: int) -> np.ndarray:
    """Fit one cell's content into cell x cell (aspect kept, centred on the grid background)."""
    out = np.full((cell, cell, 3), EMPTY if array is None else BACKGROUND, np.uint8)
    if array is None:
        return out
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 3:
        _check_image(array, "grid cell")
        rgb, resample = array, Image.Resampling.BILINEAR
    elif array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
        rgb, resample = colorize_labels(array), Image.Resampling.NEAREST
    elif array.ndim == 2 and np.issubdtype(array.dtype, np.floating):
        rgb = np.repeat((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
        resample = Image.Resampling.BILINEAR
    else:
        raise ValueError(f"grid cell must be (H, W, 3) uint8, (H, W) integer labels or (H, W) float scores, "
                         f"got shape {array.shape} dtype {array.dtype}")
    h, w = rgb.shape[:2]
    scale = cell / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), resample))
    top, left = (cell - nh) // 2, (cell - nw) // 2
    out[top:top + nh, left:left + nw] = rgb
    return out


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()


def _text_width(text: str) -> int:
    return int(_font().getbbox(text)[2]) if text else 0


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], row_titles: Sequence[str] | None = None,
               col_titles: Sequence[str] | None = None, cell: int = 96) -> np.ndarray:
    """Tile arrays into one (H, W, 3) uint8 picture, row by row; ``None`` or a short row leaves grey cells.

    Layout: ``GAP`` px around and between cells; with ``row_titles`` a left band as wide as the longest title
    + 2 * GAP; with ``col_titles`` a top band of ``TEXT_HEIGHT`` px. So H = top + R (cell + GAP) + GAP and
    W = left + C (cell + GAP) + GAP.
    """
    if not rows or any(not isinstance(row, Sequence) for row in rows):
        raise ValueError(f"rows must be a non-empty list of lists of arrays, got {type(rows).__name__}")
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell must be a positive int, got {cell!r}")
    n_rows, n_cols = len(rows), max(1, max(len(row) for row in rows))
    for name, titles, expected in (("row_titles", row_titles, n_rows), ("col_titles", col_titles, n_cols)):
        if titles is not None and len(titles) != expected:
            raise ValueError(f"{name} must have {expected} entries, got {len(titles)}")
    left = max((_text_width(t) for t in row_titles), default=0) + 2 * GAP if row_titles else 0
    top = TEXT_HEIGHT if col_titles else 0
    grid = np.full((top + n_rows * (cell + GAP) + GAP, left + n_cols * (cell + GAP) + GAP, 3), BACKGROUND, np.uint8)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            y, x = top + GAP + r * (cell + GAP), left + GAP + c * (cell + GAP)
            grid[y:y + cell, x:x + cell] = _as_rgb_cell(row[c] if c < len(row) else None, cell)
    if row_titles or col_titles:
        picture = Image.fromarray(grid)
        pen = ImageDraw.Draw(picture)
        for r, title in enumerate(row_titles or []):
            pen.text((GAP, top + GAP + r * (cell + GAP) + cell // 2 - 5), title, fill=(0, 0, 0), font=_font())
        for c, title in enumerate(col_titles or []):
            pen.text((left + GAP + c * (cell + GAP), 1), title, fill=(0, 0, 0), font=_font())
        grid = np.asarray(picture).copy()
    return grid


def contact_sheet(samples_by_set: Mapping[str, Sequence[Sample]], per_set: int = 8, cell: int = 96,
                  alpha: float = 0.5) -> np.ndarray:
    """For each set: a row of its first ``per_set`` images (titled with the set name) and a row of their
    masks overlaid (titled ``mask``; grey cells where a sample has no mask)."""
    if not samples_by_set:
        raise ValueError("samples_by_set must name at least one set")
    if isinstance(per_set, bool) or not isinstance(per_set, int) or per_set < 1:
        raise ValueError(f"per_set must be a positive int, got {per_set!r}")
    rows: list[list[np.ndarray | None]] = []
    titles: list[str] = []
    for name, samples in samples_by_set.items():
        chosen = list(samples)[:per_set]
        rows.append([s.image for s in chosen])
        rows.append([None if s.mask is None else overlay(s.image, s.mask, alpha) for s in chosen])
        titles += [str(name), "mask"]
    return image_grid(rows, row_titles=titles, cell=cell)


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a (H, W) or (H, W, 3|4) uint8 array as a PNG, atomically."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"save_png needs a (H, W) or (H, W, 3|4) uint8 array, got shape {array.shape} "
                         f"dtype {array.dtype}")
    return atomic_write_bytes(path, encode_png(array))


def random_colours(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: each label in a random colour (fixed by ``seed``), ignore (255) white."""
    palette = np.random.default_rng(seed).integers(30, 256, size=(int(labels.max()) + 1, 3), dtype=np.uint8)
    palette[np.arange(len(palette)) == 255] = 255
    return palette[labels]


def qualitative_grid(images: np.ndarray, columns: Mapping[str, Sequence[np.ndarray]]) -> np.ndarray:
    """A validation picture: one row per image of ``images`` (N, H, W, 3), the image then the i-th picture of
    each column (e.g. ground truth, prediction), under the titles ``image`` and the column names."""
    rows = [[image, *(column[i] for column in columns.values())] for i, image in enumerate(images)]
    return image_grid(rows, col_titles=["image", *columns])
