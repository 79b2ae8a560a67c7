"""Pseudo ground truth as ONE data set (Veksler Sec. 4.3): the union of every class's pseudo labels.

Each class's part is a data set whose masks may only hold 0 (background), the class's id in the label space
and 255 (ignore): "each individual image has only 2 labels". The union is written atomically with
``classes.json`` naming the label space.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lofiseg.data.format import IGNORE, MANIFEST, Dataset, DatasetFormatError, DatasetWriter
from lofiseg.data.labels import CLASSES_FILE, class_names_json, read_class_names

log = logging.getLogger(__name__)


def open_parts(parts: Path, classes: Sequence[str]) -> dict[str, Dataset]:
    """The data set of every object class (``classes[1:]``); a missing one is an error naming all missing."""
    missing = [name for name in classes[1:] if not (parts / name / MANIFEST).is_file()]
    if missing:
        raise DatasetFormatError(
            f"{parts}: no pseudo labels for class(es) {missing} (expected {', '.join(str(parts / m) for m in missing)}"
            f" with a {MANIFEST}; run `dvc repro pseudo_label@<class>` or python -m stages.pseudo_label)")
    extra = sorted(p.name for p in parts.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name not in classes)
    if extra:
        log.warning("%s: ignoring folders of classes not in web.classes: %s", parts, extra)
    datasets = {}
    for name in classes[1:]:
        datasets[name] = Dataset(parts / name)
        declared = read_class_names(parts / name)
        if declared is not None and declared != list(classes):
            raise DatasetFormatError(f"{parts / name / CLASSES_FILE}: label space {declared} differs from "
                                     f"params' {list(classes)}; run pseudo_label@{name} again")
    return datasets


def check_values(mask: np.ndarray, class_id: int, where: str) -> None:
    """A pseudo label map holds only {0, class_id, 255}."""
    values = np.unique(mask)
    bad = values[(values != 0) & (values != class_id) & (values != IGNORE)]
    if bad.size:
        raise DatasetFormatError(f"{where}: mask values {bad.tolist()[:10]} are not allowed; a pseudo label of "
                                 f"class id {class_id} holds only 0, {class_id} and {IGNORE}")


def write_union(parts: Mapping[str, Dataset], classes: Sequence[str], out: Path) -> int:
    """Write ``out``: every image of every class's part (``{class: data set}``, checked by
    :func:`check_values`; an image id in two parts is an error) with the union of their manifest columns and
    ``classes.json``; returns the number of images."""
    extra_fields = sorted({f for data in parts.values() for f in data.extra_fields})
    owner: dict[str, str] = {}
    total = sum(len(data) for data in parts.values())
    with DatasetWriter(out, extra_fields=extra_fields) as writer, \
            tqdm(total=total, desc="pseudo_gt", unit="img", file=sys.stderr) as bar:
        for name, data in parts.items():
            class_id = classes.index(name)
            for record in data:
                if record.id in owner:
                    raise DatasetFormatError(f"sample id {record.id!r} is in both {parts[owner[record.id]].root} "
                                             f"and {data.root}")
                owner[record.id] = name
                if not record.has_mask:
                    raise DatasetFormatError(f"{data.root / MANIFEST}: sample {record.id!r} has no pseudo label")
                mask = data.mask(record)
                check_values(mask, class_id, data.describe(record, "mask"))
                writer.copy(data, record, mask, {k: record.extra.get(k, "") for k in extra_fields})
                bar.update(1)
        writer.add_file(CLASSES_FILE, class_names_json(classes))
    return total
