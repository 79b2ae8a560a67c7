"""Tiny stand-ins of real data sets, built by the tests: a local semantic set with its own class table (MSRC-v2's
shape), and BSDS500 ground-truth files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

CLASSES = ["void", "grass", "cow", "sheep", "sky"]  # mask ids 0..4; 0 is void (-> 255)
# id -> (object tag, split, class id drawn as the object)
PHOTOS = {
    "1_1_s": ("cow", "train", 2), "1_2_s": ("cow", "train", 2), "1_3_s": ("cow", "val", 2),
    "1_4_s": ("cow", "test", 2), "2_1_s": ("sheep", "train", 3), "2_2_s": ("sheep", "train", 3),
    "2_3_s": ("sheep", "test", 3), "3_1_s": ("", "train", 0),
}
SIZE = 32


def photo_mask(class_id: int) -> np.ndarray:
    """Sky on top, grass below, the object (class ``class_id``) in the middle, a void (0) outline around it."""
    mask = np.full((SIZE, SIZE), 1, np.uint8)
    mask[: SIZE // 4] = 4
    if class_id:
        mask[9:23, 9:23] = 0
        mask[10:22, 10:22] = class_id
    return mask


def write_msrc_like(root: Path) -> Path:
    """``images/<id>.jpg``, ``masks/<id>.png`` (class indices), ``groups.csv`` (id, group, object, split) and
    ``splits/<split>.txt``, as /work/shared/data/msrc_v2 lays them out."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    rows = ["id,group,object,split"]
    for sample_id, (tag, split, class_id) in PHOTOS.items():
        mask = photo_mask(class_id)
        colours = rng.integers(0, 256, (5, 3), dtype=np.uint8)
        Image.fromarray(colours[mask]).save(root / "images" / f"{sample_id}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"{sample_id}.png")
        rows.append(f"{sample_id},{sample_id.split('_')[0]},{tag},{split}")
    (root / "groups.csv").write_text("\n".join(rows) + "\n")
    for split in ("train", "val", "test"):
        ids = [i for i, (_, s, _) in PHOTOS.items() if s == split]
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def msrc_like_entry(root: Path) -> dict:
    """The ``download.datasets`` entry a user writes for it."""
    return {"source": "local", "files": [{"uri": str(root)}], "layout": "semantic", "images": "images/*.jpg",
            "masks": "masks/{stem}.png", "classes": CLASSES, "void_value": 0, "tags_file": "groups.csv",
            "tags_column": "object",
            "split_files": {s: f"splits/{s}.txt" for s in ("train", "val", "test")}}


def bsds_mat(segmentations: list[np.ndarray]) -> bytes:
    """A BSDS500 groundTruth .mat file: one cell per human segmentation (region ids; no boundaries drawn)."""
    cells = np.empty((1, len(segmentations)), dtype=object)
    for k, seg in enumerate(segmentations):
        cells[0, k] = {"Segmentation": seg.astype(np.uint16), "Boundaries": np.zeros(seg.shape, dtype=bool)}
    buf = io.BytesIO()
    savemat(buf, {"groundTruth": cells})
    return buf.getvalue()
