"""The semantic evaluation's report: Veksler's Table 2, the mIoU tables, the qualitative grids and how DeepLab
was trained and run, in words."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from lofiseg.data.format import Dataset, Record
from lofiseg.data.labels import web_truth_labels
from lofiseg.viz.figures import markdown_table
from lofiseg.viz.images import colorize_labels, image_grid


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def test_time_words(scales: Sequence[float], flip: bool) -> str:
    """How DeepLab was run on the test images, in words."""
    if list(scales) == [1.0] and not flip:
        return "one forward pass at the training size"
    return (f"softmax averaged over the image at {', '.join(f'{s:g}' for s in scales)} x the training size"
            + (" and the mirror images" if flip else ""))


def training_augmentation(info_file: Path) -> str:
    """How a DeepLab bundle was augmented in training, in words, from the ``augment`` of its info.json."""
    augment = json.loads(info_file.read_text()).get("augment") if info_file.is_file() else None
    if augment is None:
        return "not recorded"
    words = [f"2x2 mosaics ({augment['mosaic']:g})"] if augment["mosaic"] else []
    words += ["flip"] if augment["flip"] else []
    words += ["blur"] if augment["blur"] else []
    words += [f"rescale {augment['rescale'][0]:g}-{augment['rescale'][1]:g}"] if augment["rescale"] else []
    return ", ".join(words) or "none"


def single_class_table(single: Mapping[str, dict]) -> str:
    """Veksler Table 2 layout: per class, F-beta of the regularized-loss and ground-truth models and the gap."""
    rows = [[name, _cell(e["reg"] and e["reg"]["fbeta"]), _cell(e["gt"] and e["gt"]["fbeta"]), _cell(e["gap"])]
            for name, e in single.items()]
    return markdown_table(["class", "reg F-beta", "gt F-beta", "gap (gt - reg)"], rows)


def miou_tables(metrics: Mapping[str, object], classes: Sequence[str]) -> str:
    """mIoU of the pseudo labels and of each DeepLab with their ratios, then the IoU of every class."""
    pseudo = metrics.get("pseudo_labels")
    columns = {"pseudo GT vs GT (web images)": pseudo, "DeepLab on pseudo GT": metrics["deeplab_pseudo"],
               "DeepLab on web GT (ceiling)": metrics.get("deeplab_web_gt"),
               "DeepLab on GT (upper bound)": metrics["deeplab_gt"]}
    head = markdown_table(
        [*columns, "ratio pseudo / GT", "pseudo / ceiling", "ceiling / GT"],
        [[_cell(c and c["miou"]) for c in columns.values()]
         + [_cell(metrics.get(k)) for k in ("deeplab_ratio", "pseudo_vs_ceiling", "ceiling_ratio")]])
    per_class = markdown_table(
        ["class", *columns], [[name] + [_cell(c and c["iou"].get(name)) for c in columns.values()] for name in classes])
    return f"## mIoU\n\n{head}\n## IoU per class\n\n{per_class}"


def scenes_grid(dataset: Dataset, truth: Callable[[np.ndarray], np.ndarray],
                pseudo_samples: Sequence[tuple[Record, np.ndarray]],
                gt_samples: Sequence[tuple[Record, np.ndarray]]) -> np.ndarray:
    """Image, ground truth (``truth`` maps a mask into the label space) and both DeepLabs' predictions."""
    rows = []
    for (record, pseudo_pred), (_, gt_pred) in zip(pseudo_samples, gt_samples, strict=True):
        rows.append([dataset.image(record), colorize_labels(truth(dataset.mask(record))),
                     colorize_labels(pseudo_pred), colorize_labels(gt_pred)])
    return image_grid(rows, col_titles=["image", "truth", "DeepLab pseudo", "DeepLab GT"])


def pseudo_grid(web: Dataset, pseudo: Dataset, classes: Sequence[str]) -> np.ndarray:
    """For each class of ``classes[1:]`` (the label space, background first), its first pseudo-labelled image:
    image, web ground truth (if any), pseudo label."""
    rows, titles = [], []
    web_ids = {r.id for r in web}
    for name in classes[1:]:
        record = next((r for r in pseudo if name in r.tags), None)
        if record is None:
            continue
        truth = web[record.id] if record.id in web_ids else None
        gt = None
        if truth is not None and truth.has_mask:
            gt = colorize_labels(web_truth_labels(web.mask(truth), classes.index(name)))
        rows.append([pseudo.image(record), gt, colorize_labels(pseudo.mask(record))])
        titles.append(name)
    return image_grid(rows, row_titles=titles, col_titles=["web image", "truth (unused)", "pseudo label"])
