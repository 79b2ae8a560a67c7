"""The weakly supervised chain of Veksler Sec. 4.3 scored against ground truth.

* single-class models: F-beta at T = 2 mean(S) and MAE of each class's ``reg`` and ``gt`` model on its held-out
  web images (the paper's Table 2);
* pseudo labels: mIoU against the web images' ground truth over the pixels they do not ignore;
* DeepLab: mIoU and per-class IoU on the test split of each evaluation set, its ground truth mapped by class
  name onto the label space, with multi-scale / flip test-time inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lofiseg.data.format import IGNORE, Dataset, Record
from lofiseg.data.labels import class_records, remap_labels, web_class, web_truth_labels
from lofiseg.evaluate.scored_split import records_to_score
from lofiseg.infer.predict import predict_native
from lofiseg.metrics.saliency import SaliencyMeter
from lofiseg.metrics.semantic import ConfusionMeter, iou_report
from lofiseg.models.bundle import load_bundle

SINGLE_CLASS_SUPERVISIONS = ("reg", "gt")  # models/single/<class>/<supervision>/model.pt


def miou_ratio(part: dict | None, whole: dict | None) -> float | None:
    """mIoU of ``part`` as a fraction of ``whole``'s (None when either is missing or ``whole`` is 0)."""
    if not part or not whole or whole["miou"] <= 0:
        return None
    return part["miou"] / whole["miou"]


def score_single_class(web: Dataset, web_classes: Sequence[str], models: Path, batch_size: int) -> dict:
    """{class: {"reg": {fbeta, mae}, "gt": {...} | None, "gap": gt - reg | None}} on each class's test split of
    ``web``; the models are ``models/<class>/<reg|gt>/model.pt`` (a missing one scores None)."""
    out: dict = {}
    for name in web_classes:
        records = [r for r in class_records(web, name, "test") if r.has_mask]
        entry: dict = {}
        for supervision in SINGLE_CLASS_SUPERVISIONS:
            bundle = models / name / supervision / "model.pt"
            if not records or not bundle.is_file():  # no held-out ground truth, or the gt baseline was skipped
                entry[supervision] = None
                continue
            model, info = load_bundle(bundle)
            meter = SaliencyMeter()
            for record, probs in predict_native(model, web, records, info["image_size"], batch_size,
                                                desc=f"{name}-{supervision}"):
                meter.update(probs[1].clamp(0, 1).numpy(), web_truth_labels(web.mask(record), 1))
            scores = meter.compute()
            entry[supervision] = {"fbeta": float(scores["fbeta_adaptive"]), "mae": float(scores["mae"])}
        reg, gt = entry["reg"], entry["gt"]
        entry["gap"] = gt["fbeta"] - reg["fbeta"] if reg and gt else None
        out[name] = entry
    return out


def score_pseudo_labels(web: Dataset, pseudo: Dataset, classes: Sequence[str]) -> dict | None:
    """Pseudo labels against the web ground truth (object -> the image's class id in ``classes``, the label
    space: background first) where the web set has it; None when no pseudo-labelled image has ground truth."""
    meter = ConfusionMeter(len(classes))
    labelled = total = 0
    web_ids = {r.id for r in web}
    for record in pseudo:
        truth = web[record.id] if record.id in web_ids else None
        if truth is None or not truth.has_mask:
            continue
        label = pseudo.mask(record)
        target = web_truth_labels(web.mask(truth), classes.index(web_class(truth, classes[1:])))
        known = label != IGNORE
        labelled += int(known.sum())
        total += label.size
        meter.update(np.where(known, label, 0), np.where(known, target, IGNORE))
    if total == 0:
        return None
    return {**iou_report(meter.compute(), classes), "labelled_fraction": labelled / total}


@dataclass(frozen=True)
class DeepLabScoring:
    """How DeepLab is scored: the label space, each evaluation set's mask ids as class names (in evaluation
    order), and the test-time inference (DeepLab's multi-scale + flip, :func:`lofiseg.infer.predict.multi_scale_probs`)."""

    classes: Sequence[str]
    set_classes: Mapping[str, Sequence[str]]
    batch_size: int = 32
    scales: Sequence[float] = (1.0,)
    flip: bool = False
    grid_samples: int = 0  # predictions kept per set for the qualitative grid
    splits: Mapping[str, str] = field(default_factory=dict)  # the split scored per set, if not score_deeplab's

    def truth(self, name: str, mask: np.ndarray) -> np.ndarray:
        """Set ``name``'s ground truth in the label space: its classes that are not in it become background 0
        (as for ``train_deeplab@gt``), ignore stays ignore."""
        return remap_labels(mask, self.set_classes[name], self.classes, others=0)


def score_deeplab(bundle: Path, raw: Path, scoring: DeepLabScoring,
                  split: str = "test") -> tuple[dict, dict[str, list[tuple[Record, np.ndarray]]]]:
    """({set: confusion scores}, {set: [(record, predicted labels)] of its first ``grid_samples`` images}) of
    the DeepLab ``bundle`` on every set ``raw/<set>`` of ``scoring``: its split in ``scoring.splits``, else
    ``split``."""
    model, info = load_bundle(bundle)
    scores, samples = {}, {}
    for name in scoring.set_classes:
        dataset = Dataset(raw / name)
        meter = ConfusionMeter(len(scoring.classes))
        samples[name] = []
        records = records_to_score(dataset, scoring.splits.get(name, split), name)
        for record, probs in predict_native(model, dataset, records, info["image_size"],
                                            scoring.batch_size, desc=f"{bundle.parent.name} {name}",
                                            scales=scoring.scales, flip=scoring.flip):
            pred = probs.argmax(0).numpy().astype(np.uint8)
            meter.update(pred, scoring.truth(name, dataset.mask(record)))
            if len(samples[name]) < scoring.grid_samples:
                samples[name].append((record, pred))
        scores[name] = iou_report(meter.compute(), scoring.classes)
    return scores, samples
