"""What a multi-class segmentation network trains and validates on (Veksler Sec. 4.3): pseudo ground truth,
a ground-truth data set remapped to the label space, or the web images' own ground truth (the ceiling).

Plain arguments only: ``classes`` is the label space (``background`` first, id order), ``web_classes`` the
classes whose tags name a web image's object.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import IGNORE, Dataset, DatasetFormatError, Record
from lofiseg.data.holdout import hold_out
from lofiseg.data.labels import CLASSES_FILE, read_class_names, remap_labels, web_class
from lofiseg.data.loading import TensorSplit

log = logging.getLogger(__name__)

SUPERVISIONS = ("pseudo", "gt", "web_gt")
VAL_HOLDOUT = 0.1  # fraction of train lent to validation when a data set has no val split


class NoWebTruth(Exception):
    """The web set has no ground truth: the web_gt ceiling is skipped, with the reason in info.json."""


@dataclass
class Supervision:
    """What a run trains and validates on, in the label space ``classes``."""

    train: TensorSplit
    val: TensorSplit
    val_source: str  # "val split" or how the holdout was made
    dataset: Path


def tensor_digest(*splits: TensorSplit) -> str:
    """sha256 of exactly what training sees: ids, images and masks of the splits."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update("\n".join(split.ids).encode())
        digest.update(split.images.numpy().tobytes())
        if split.masks is not None:
            digest.update(split.masks.numpy().tobytes())
    return digest.hexdigest()


def split_records(data: Dataset, keep: Callable[[Record], bool] = lambda r: True,
                  ) -> tuple[list[Record], list[Record], str]:
    """(train, val, how val was chosen) among the records ``keep`` accepts: the val split, else
    :func:`~lofiseg.data.holdout.hold_out` of 10% of train (rounded half to even, at least one) in (sha256, id)
    order."""
    train, val = [r for r in data.split("train") if keep(r)], [r for r in data.split("val") if keep(r)]
    if not train:
        raise DatasetFormatError(f"{data.root}: no sample in the train split")
    if val:
        return train, val, "val split"
    if len(train) < 2:
        log.warning("%s: no val split and one train image: validating on it", data.root)
        return train, train, "train (no val split)"
    held = {r.id for r in hold_out(train, VAL_HOLDOUT, key=lambda r: (r.sha256, r.id), at_least=1,
                                   rounding="half_even")}
    count = len(held)
    log.warning("%s: no val split; holding out %d of %d train images for validation", data.root, count, len(train))
    return ([r for r in train if r.id not in held], [r for r in train if r.id in held],
            f"{count} of {len(train)} train images held out (no val split)")


def check_labels(split: TensorSplit, num_classes: int, where: Path) -> None:
    values = torch.unique(split.masks)
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.numel():
        raise DatasetFormatError(f"{where}: mask values {bad.tolist()[:10]} are outside the label space "
                                 f"0..{num_classes - 1} and {IGNORE} (ignore)")


def label_space(root: Path, name: str, declared: Callable[[str], list[str]]) -> list[str]:
    """The label space of a ground-truth data set: its classes.json, else ``declared(name)`` (what the data
    set's params entry implies; a ValueError there says why it cannot)."""
    names = read_class_names(root)
    if names is not None:
        return names
    try:
        return declared(name)
    except ValueError as err:
        raise DatasetFormatError(f"{root}: {err}, or add {CLASSES_FILE} (a JSON list, id order, background "
                                 f"first)") from None


def load_supervision(supervision: str, data_dir: Path, classes: Sequence[str], web_classes: Sequence[str],
                     image_size: int, gt_dataset: str, declared: Callable[[str], list[str]]) -> Supervision:
    """Train and val splits at ``image_size`` with masks in ``classes`` ids: ``pseudo`` (the pseudo-GT set
    ``data_dir``), ``gt`` (data set ``gt_dataset`` under ``data_dir``, remapped by class name: classes that
    are no web class -> background 0, void 255 kept; ``declared``:
    see :func:`label_space`) or ``web_gt`` (:func:`load_web_truth`)."""
    classes = list(classes)
    if supervision == "pseudo":
        root = data_dir
        names = read_class_names(root)
        if names is not None and names != classes:
            raise DatasetFormatError(f"{root / CLASSES_FILE}: label space {names} differs from params' "
                                     f"{classes}; run pseudo_label and pseudo_gt again")
        source = classes
    elif supervision == "gt":
        root = data_dir / gt_dataset
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: train_deeplab.gt_dataset {gt_dataset!r} is not under {data_dir}")
        source = label_space(root, gt_dataset, declared)
        if not set(source[1:]) & set(classes[1:]):
            raise DatasetFormatError(f"{root}: none of its classes {source[1:]} is in web.classes {classes[1:]}")
    elif supervision == "web_gt":
        return load_web_truth(data_dir, classes, web_classes, image_size)
    else:
        raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    data = Dataset(root)
    train_records, val_records, val_source = split_records(data)
    splits = [cached_load_split(data, records, image_size, desc=f"load {name}")
              for records, name in ((train_records, "train"), (val_records, "val"))]
    for split in splits:
        check_labels(split, len(source), root)
        if source != classes:
            split.masks = remap_labels(split.masks, source, classes, others=0)  # other classes: background
    return Supervision(splits[0], splits[1], val_source, root)


def load_web_truth(root: Path, classes: Sequence[str], web_classes: Sequence[str], image_size: int) -> Supervision:
    """The web images with their ground-truth masks as labels: each image's object (mask 1) gets the id in
    ``classes`` of its web class (its first tag in ``web_classes``), the rest (confusers included) background,
    255 stays ignore. The pseudo labels' ceiling: the same images with perfect labels. Raises
    :class:`NoWebTruth` when the web set has no masks (downloaded images)."""
    data = Dataset(root)

    def labelled(record: Record) -> bool:
        return record.has_mask and web_class(record, web_classes) is not None

    if not any(labelled(r) for r in data.split("train")):
        raise NoWebTruth(f"{root}: no train image of web classes {list(web_classes)} has a ground-truth mask")
    train_records, val_records, val_source = split_records(data, labelled)
    splits = []
    for records, name in ((train_records, "train"), (val_records, "val")):
        split = cached_load_split(data, records, image_size, desc=f"load {name}")
        check_labels(split, 2, root)  # binary object masks: 0, 1 and 255 only
        ids = torch.tensor([list(classes).index(web_class(r, web_classes)) for r in records], dtype=split.masks.dtype)
        split.masks = torch.where(split.masks == 1, ids[:, None, None], split.masks)
        splits.append(split)
    return Supervision(splits[0], splits[1], val_source, root)
