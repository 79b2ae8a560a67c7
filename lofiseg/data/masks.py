"""Normalise the common public mask encodings into the data set format (see :mod:`lofiseg.data.format`).

The format's label maps are (H, W) uint8: 0 background, 1..K regions or classes, 255 ignore. Every
normaliser here is a vectorised look-up; a value outside the encoding raises a :class:`MaskEncodingError`
naming the values found (callers add the file names).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lofiseg.data.format import IGNORE, DatasetFormatError

VOC_CLASSES = (  # label names of the VOC ids 0..20
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_NUM_CLASSES = len(VOC_CLASSES)  # background + 20 object classes
MAX_REGIONS = 254  # labels 1..254; 255 is reserved for ignore


class MaskEncodingError(DatasetFormatError):
    """A mask does not follow the encoding it was declared to have."""


def _require_uint8_2d(arr: np.ndarray, name: str, allow_rgb: bool = False) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype not in (np.uint8, np.bool_):
        raise TypeError(f"{name} must have dtype uint8 (or bool), got {arr.dtype}")
    ok_shape = arr.ndim == 2 or (allow_rgb and arr.ndim == 3 and arr.shape[2] in (3, 4))
    if not ok_shape:
        expected = "(H, W) or (H, W, 3|4)" if allow_rgb else "(H, W)"
        raise ValueError(f"{name} must have shape {expected}, got {arr.shape}")


def _unexpected(values: np.ndarray, allowed: str, encoding: str) -> MaskEncodingError:
    shown = values.tolist()[:10]
    return MaskEncodingError(f"unexpected {encoding} mask values {shown}; allowed {allowed}")


def binary_from_0_255(arr: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Saliency ground truth (0 background, 255 object; anti-aliased or averaged values in between) -> 0/1.

    A pixel is foreground when its value is >= ``threshold`` (128 is the usual 0.5 threshold of the SOD
    benchmarks, e.g. PASCAL-S's averaged masks). Grey masks stored as RGB(A) are accepted when the three
    colour channels are equal; bool masks map False -> 0, True -> 1.
    """
    _require_uint8_2d(arr, "arr", allow_rgb=True)
    if isinstance(threshold, bool) or not isinstance(threshold, int | np.integer) or not 1 <= threshold <= 255:
        raise ValueError(f"threshold must be an int in 1..255, got {threshold!r}")
    if arr.dtype == np.bool_:
        if arr.ndim != 2:
            raise ValueError(f"a bool arr must have shape (H, W), got {arr.shape}")
        return arr.astype(np.uint8)
    if arr.ndim == 3:
        rgb = arr[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
            raise MaskEncodingError("binary mask stored as colour image has unequal R, G, B channels; "
                                    "expected a grey (0..255) mask")
        arr = rgb[..., 0]
    return (arr >= threshold).astype(np.uint8)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The Pascal VOC palette, (n, 3) uint8: class c's colour from the bits of c (VOCdevkit ``labelcolormap``)."""
    c = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # 8 bit planes of the class index, not a loop over pixels
        for channel in range(3):
            bit = (c >> channel) & 1
            cmap[:, channel] |= bit << (7 - shift)
        c = c >> 3
    return cmap.astype(np.uint8)


def from_voc_palette(arr: np.ndarray, num_classes: int = VOC_NUM_CLASSES) -> np.ndarray:
    """Pascal VOC ``SegmentationClass`` PNG -> labels: indices 0..num_classes-1 kept, 255 (borders/void) kept.

    ``arr`` is the palette-index image (PIL mode ``P`` or ``L`` read without conversion), or the same mask
    decoded to RGB, whose colours are mapped back to indices through :func:`voc_colormap`.
    """
    _require_uint8_2d(arr, "arr", allow_rgb=True)
    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 1..255, got {num_classes}")
    if arr.ndim == 3:
        arr = _indices_from_voc_colours(arr[..., :3])
    else:
        arr = arr.astype(np.uint8)
    values = np.unique(arr)
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.size:
        raise _unexpected(bad, f"0..{num_classes - 1} and {IGNORE} (void)", "VOC palette")
    return arr


def _indices_from_voc_colours(rgb: np.ndarray) -> np.ndarray:
    cmap = voc_colormap(256).astype(np.int64)
    keys = (cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], packed), 0, keys.size - 1)
    found = keys[order][pos] == packed
    if not found.all():
        colours = np.unique(packed[~found])
        shown = [f"#{int(v):06x}" for v in colours[:10]]
        raise MaskEncodingError(f"colours {shown} are not in the Pascal VOC palette")
    return order[pos].astype(np.uint8)


_TRIMAP_LUT = np.full(256, -1, dtype=np.int16)
_TRIMAP_LUT[1] = 1  # pet (foreground)
_TRIMAP_LUT[2] = 0  # background
_TRIMAP_LUT[3] = IGNORE  # border / not classified


def from_trimap(arr: np.ndarray) -> np.ndarray:
    """Oxford-IIIT Pet trimap -> labels: 1 pet -> 1, 2 background -> 0, 3 border -> 255 (ignore)."""
    _require_uint8_2d(arr, "arr")
    mapped = _TRIMAP_LUT[arr.astype(np.uint8)]
    if (mapped < 0).any():
        raise _unexpected(np.unique(arr[mapped < 0]), "1 (pet), 2 (background), 3 (border)", "trimap")
    return mapped.astype(np.uint8)


def from_class_indices(arr: np.ndarray, num_classes: int, void_value: int | None = None) -> np.ndarray:
    """Class-index masks (ids ``0..num_classes - 1``, 255 ignore) -> labels; ``void_value`` (MSRC: 0) -> 255.

    One table lookup; any other value is an error naming it (a palette or 0/255 mask given as indices).
    """
    _require_uint8_2d(arr, "arr")
    if not 1 <= num_classes <= IGNORE:
        raise ValueError(f"num_classes must be in 1..{IGNORE}, got {num_classes}")
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE] = IGNORE
    if void_value is not None:
        lut[void_value] = IGNORE
    mapped = lut[arr.astype(np.uint8)]
    if (mapped < 0).any():
        allowed = f"0..{num_classes - 1} (the classes), {IGNORE} (ignore)"
        raise _unexpected(np.unique(arr[mapped < 0]), allowed, "class-index")
    return mapped.astype(np.uint8)


def one_class_mask(labels: np.ndarray, class_id: int) -> np.ndarray:
    """A semantic label map reduced to one class: ``class_id`` -> 1, 255 (ignore) kept, every other class 0."""
    return np.where(labels == IGNORE, IGNORE, labels == class_id).astype(np.uint8)


def relabel_regions(segmentation: np.ndarray) -> np.ndarray:
    """Region ids (any integer dtype, 0 = unlabelled) -> compact uint8 labels 1..K in increasing id order.

    Unlabelled pixels (id 0) become 255 (ignore). More than 254 regions cannot be stored in uint8 next to
    the ignore label and raise :class:`MaskEncodingError`.
    """
    if not isinstance(segmentation, np.ndarray) or segmentation.ndim != 2:
        raise ValueError(f"segmentation must be a 2-D array, got {getattr(segmentation, 'shape', None)}")
    if not np.issubdtype(segmentation.dtype, np.integer):
        raise TypeError(f"segmentation must have an integer dtype, got {segmentation.dtype}")
    if (segmentation < 0).any():
        raise MaskEncodingError("segmentation has negative region ids")
    ids, inverse = np.unique(segmentation, return_inverse=True)
    inverse = inverse.reshape(segmentation.shape)
    has_zero = ids[0] == 0
    regions = ids.size - int(has_zero)
    if regions > MAX_REGIONS:
        raise MaskEncodingError(f"segmentation has {regions} regions; at most {MAX_REGIONS} fit in uint8 "
                                f"labels 1..{MAX_REGIONS} (255 is ignore)")
    labels = inverse + (0 if has_zero else 1)  # region ids in order -> 1..K
    labels = np.where(segmentation == 0, IGNORE, labels)
    return labels.astype(np.uint8)


def from_bsds(mat_path: str | os.PathLike) -> list[np.ndarray]:
    """BSDS500 ``groundTruth/<split>/<id>.mat`` -> one label map per human segmentation, in file order.

    The file holds ``groundTruth``, a 1 x N MATLAB cell array of structs with ``Segmentation`` (uint16 region
    ids from 1) and ``Boundaries``. Each segmentation is relabelled compactly (:func:`relabel_regions`):
    BSDS partitions the whole image, so there is no background 0; ids are renumbered 1..K in increasing
    order, an id 0 (never in the released files) would become ignore, and more than 254 regions raise.
    """
    from scipy.io import loadmat  # scipy is heavy to import; only BSDS needs it

    path = Path(mat_path)
    if not path.is_file():
        raise MaskEncodingError(f"{path}: BSDS ground-truth file is missing")
    try:
        mat = loadmat(path)
    except (ValueError, OSError, TypeError, NotImplementedError) as exc:
        raise MaskEncodingError(f"{path}: unreadable MATLAB file ({exc})") from exc
    if "groundTruth" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise MaskEncodingError(f"{path}: no 'groundTruth' variable (found {keys}); not a BSDS500 file")
    cells = np.asarray(mat["groundTruth"]).ravel()
    if cells.size == 0:
        raise MaskEncodingError(f"{path}: 'groundTruth' holds no human segmentation")
    masks = []
    for k, cell in enumerate(cells):  # one entry per annotator (about 5), not per pixel
        struct = np.asarray(cell).ravel()
        names = struct.dtype.names or ()
        if struct.size != 1 or "Segmentation" not in names:
            raise MaskEncodingError(f"{path}: groundTruth{{{k + 1}}} is not a struct with a 'Segmentation' field")
        seg = np.asarray(struct[0]["Segmentation"])
        if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
            raise MaskEncodingError(f"{path}: groundTruth{{{k + 1}}}.Segmentation must be a 2-D integer array, "
                                    f"got shape {seg.shape} dtype {seg.dtype}")
        try:
            masks.append(relabel_regions(seg))
        except MaskEncodingError as exc:
            raise MaskEncodingError(f"{path}: groundTruth{{{k + 1}}}: {exc}") from None
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise MaskEncodingError(f"{path}: human segmentations differ in size: {sorted(shapes)}")
    return masks
