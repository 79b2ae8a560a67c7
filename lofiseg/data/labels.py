"""Semantic label spaces: remapping a data set's class ids to another class list, by class name.

A label space is a list of class names whose index is the label id: ``["background", "sun", "leaf"]`` means
0 background, 1 sun, 2 leaf. The multi-class models use ``Params.semantic_classes()`` (background, then
``web.classes`` in params order); a data set with ground truth may number its classes differently (the
synthetic scenes follow ``synthetic.classes``, Pascal VOC its 20 classes), so its masks are remapped by name
before training or evaluation. A data set may declare its own label space in ``classes.json`` at its root.

A class's web images are the records tagged with it (:func:`class_records`); every other record is a negative
image for it (Veksler Eq. 7).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from lofiseg.data.format import IGNORE, Dataset, DatasetFormatError, Record

if TYPE_CHECKING:
    import torch

CLASSES_FILE = "classes.json"
BACKGROUND = "background"


Mask = TypeVar("Mask", np.ndarray, "torch.Tensor")


def _check_classes(name: str, classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(f"{name} must be a sequence of class names, got {type(classes).__name__}")
    classes = list(classes)
    if not classes:
        raise ValueError(f"{name} must hold at least the background class, got []")
    if len(classes) > IGNORE:
        raise ValueError(f"{name} has {len(classes)} classes; ids must stay below {IGNORE} (ignore)")
    if not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"{name} must hold non-empty strings, got {classes}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{name} holds duplicate names: {classes}")
    return classes


def label_lookup(source_classes: Sequence[str], target_classes: Sequence[str], ignore: int = IGNORE,
                 others: int | None = None) -> np.ndarray:
    """The (256,) uint8 table of :func:`remap_labels`: source id -> target id.

    Id 0 is background on both sides and stays 0 whatever its name; a source class is found in
    ``target_classes`` by name, else it becomes ``others`` (None: ``ignore``); every other entry (``ignore`` itself, ids beyond the
    source list, which :func:`remap_labels` rejects before the lookup) is ``ignore``.
    """
    source = _check_classes("source_classes", source_classes)
    target = _check_classes("target_classes", target_classes)
    if isinstance(ignore, bool) or not isinstance(ignore, int) or not len(target) <= ignore <= 255:
        raise ValueError(f"ignore must be an int in [{len(target)}, 255] (outside the target ids), got {ignore!r}")
    if others is not None and not 0 <= others < len(target):
        raise ValueError(f"others must be a target id 0..{len(target) - 1} or None (ignore), got {others!r}")
    index = {name: i for i, name in enumerate(target)}
    absent = ignore if others is None else others
    table = np.full(256, ignore, dtype=np.uint8)
    table[: len(source)] = [0 if i == 0 else index.get(name, absent) for i, name in enumerate(source)]
    return table


def remap_labels(mask: Mask, source_classes: Sequence[str], target_classes: Sequence[str],
                 ignore: int = IGNORE, others: int | None = None) -> Mask:
    """Relabel an integer label map from ``source_classes`` ids to ``target_classes`` ids, by class name.

    ``mask`` is a numpy array or torch tensor of any shape holding ids ``0..len(source_classes) - 1`` or
    ``ignore``. Background (0) stays 0; a class absent from ``target_classes`` becomes ``others`` (e.g. 0:
    every class that is not a web class is background), or ``ignore`` when None; ``ignore`` stays ``ignore``. One table lookup, no loop over pixels. Returns the same kind of array (uint8 values, the
    input's dtype kept for torch).
    """
    table = label_lookup(source_classes, target_classes, ignore, others)
    num_source = len(source_classes)
    torch = sys.modules.get("torch")  # a tensor exists only once torch is loaded: numpy callers never import it
    if torch is not None and isinstance(mask, torch.Tensor):
        if mask.is_floating_point() or mask.dtype == torch.bool:
            raise TypeError(f"mask must hold integer ids, got dtype {mask.dtype}")
        values = mask.long()
        bad = values[((values < 0) | (values >= num_source)) & (values != ignore)]
        if bad.numel():
            raise ValueError(f"mask holds ids {sorted(set(bad.unique().tolist()))[:10]} outside the source "
                             f"classes 0..{num_source - 1} and ignore {ignore}")
        return torch.from_numpy(table).to(mask.device)[values].to(mask.dtype)
    array = np.asarray(mask)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"mask must hold integer ids, got dtype {array.dtype}")
    values = array.astype(np.int64)
    bad = values[((values < 0) | (values >= num_source)) & (values != ignore)]
    if bad.size:
        raise ValueError(f"mask holds ids {np.unique(bad).tolist()[:10]} outside the source classes "
                         f"0..{num_source - 1} and ignore {ignore}")
    return table[values]


def read_class_names(root: str | os.PathLike) -> list[str] | None:
    """The label space a data set declares in ``<root>/classes.json`` (a JSON list of names), or None."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: not readable JSON ({err})") from err
    try:
        return _check_classes(str(path), names)
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(f"{path}: expected a JSON list of distinct class names: {err}") from err


def class_names_json(classes: Sequence[str]) -> bytes:
    """``classes.json`` content for a label space (for ``DatasetWriter.add_file``)."""
    return (json.dumps(_check_classes("classes", classes)) + "\n").encode()


def web_class(record: Record, classes: Sequence[str]) -> str | None:
    """The web class ``record`` is tagged with (its first tag in ``classes``), or None."""
    return next((t for t in record.tags if t in classes), None)


def web_truth_labels(mask: np.ndarray, class_id: int) -> np.ndarray:
    """A web image's ground-truth mask as semantic labels: its object (any label > 0) -> ``class_id``, ignore
    (255) kept, the rest (confusers of other classes included) background 0. Used only to measure."""
    return np.where(mask == IGNORE, IGNORE, np.where(mask > 0, class_id, 0)).astype(np.uint8)


# --- a class's web images (image-level tags) ---------------------------------------------------------

def class_records(dataset: Dataset, cls: str, split: str = "train") -> list[Record]:
    """The records of ``split`` tagged ``cls`` (the class's web images)."""
    return [r for r in dataset.split(split) if cls in r.tags]


def negative_records(dataset: Dataset, cls: str, split: str = "train") -> list[Record]:
    """The records of ``split`` NOT tagged ``cls``: the other classes' images, negatives for Eq. 7."""
    return [r for r in dataset.split(split) if cls not in r.tags]


def require_class_records(dataset: Dataset, cls: str, split: str = "train") -> list[Record]:
    """:func:`class_records`, or DatasetFormatError naming the class and the tags the split does hold."""
    records = class_records(dataset, cls, split)
    if not records:
        tags = sorted({t for r in dataset.split(split) for t in r.tags})
        raise DatasetFormatError(f"{dataset.root}: no {split} image tagged {cls!r} to train class {cls!r} on; "
                                 f"the {split} split's tags are {tags}")
    return records
