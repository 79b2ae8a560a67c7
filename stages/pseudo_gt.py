"""DVC stage `pseudo_gt`: the union of every class's pseudo labels as ONE data set (Veksler Sec. 4.3).

``--parts`` holds one data set per class of ``web.classes`` (``<parts>/<class>``, written by
``pseudo_label@<class>``). Each image's mask may only hold 0 (background), its class's id in
``Params.semantic_classes()`` and 255 (ignore): "each individual image has only 2 labels". The union is
written atomically (a temporary folder renamed into place) with ``classes.json`` naming the label space.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lofiseg.config import load_params
from lofiseg.data.format import IGNORE, MANIFEST, Dataset, DatasetFormatError, DatasetWriter, read_mask
from lofiseg.data.labels import CLASSES_FILE, class_names_json, read_class_names
from stages.cli import log, run, stage_parser


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


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--parts", type=Path, required=True, help="folder of per-class pseudo-label data sets")
    parser.add_argument("--out", type=Path, required=True, help="output data set (the union)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    classes = params.semantic_classes()
    datasets = open_parts(args.parts, classes)
    extra_fields = sorted({f for data in datasets.values() for f in data.extra_fields})
    owner: dict[str, str] = {}
    total = sum(len(data) for data in datasets.values())
    with DatasetWriter(args.out, extra_fields=extra_fields) as writer, \
            tqdm(total=total, desc="pseudo_gt", unit="img", file=sys.stderr) as bar:
        for name, data in datasets.items():
            class_id = classes.index(name)
            for record in data:
                if record.id in owner:
                    raise DatasetFormatError(f"sample id {record.id!r} is in both {args.parts / owner[record.id]} "
                                             f"and {args.parts / name}")
                owner[record.id] = name
                if not record.has_mask:
                    raise DatasetFormatError(f"{data.root / MANIFEST}: sample {record.id!r} has no pseudo label")
                mask = read_mask(data.root / record.mask)
                check_values(mask, class_id, str(data.root / record.mask))
                image_path = data.root / record.image
                writer.add_encoded(record.id, image_path.read_bytes(), image_path.suffix.lstrip("."), mask,
                                   split=record.split, tags=record.tags, source=record.source,
                                   extra={k: record.extra.get(k, "") for k in extra_fields})
                bar.update(1)
        writer.add_file(CLASSES_FILE, class_names_json(classes))
    per_class = {name: len(data) for name, data in datasets.items()}
    log.info("pseudo_gt: %d images %s -> %s", total, per_class, args.out)


if __name__ == "__main__":
    sys.exit(run(main))
