"""DVC stage `evaluate_semantic`: the weakly supervised chain of Veksler Sec. 4.3, scored against ground truth.

* single-class models: F-beta (T = 2 mean(S)) of every ``reg`` and ``gt`` model on its class's held-out web
  images (test split), and the gap between them: the paper's Table 2;
* pseudo ground truth: mIoU of ``data/pseudo_gt`` against the web images' ground truth where it exists
  (synthetic web sets), over the pixels the pseudo labels do not ignore, and the fraction they label;
* DeepLab: mIoU and per-class IoU of ``train_deeplab@pseudo``, ``train_deeplab@gt`` (the upper bound) and
  ``train_deeplab@web_gt`` (the ceiling: the web images with perfect labels; absent without web ground truth)
  on the test split of every set in ``evaluate.semantic_sets``, ground truth mapped by class name onto
  web.classes; ``deeplab_ratio`` = pseudo / upper bound splits into ``pseudo_vs_ceiling`` (what the pseudo
  labels lose) times ``ceiling_ratio`` (what training on web images instead of the target domain loses).

Writes ``metrics/semantic.json`` for DVC, markdown tables, a per-class IoU bar chart and qualitative grids under
``reports/semantic``, and logs them to MLflow.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, load_params
from lofiseg.data.format import IGNORE, Dataset
from lofiseg.data.labels import remap_labels, web_class, web_truth_labels
from lofiseg.infer.predict import predict_native
from lofiseg.metrics.saliency import SaliencyMeter
from lofiseg.metrics.semantic import ConfusionMeter
from lofiseg.models.bundle import load_bundle
from lofiseg.provenance import standard_tags
from lofiseg.track.tracker import Tracker
from lofiseg.train.regularized_plan import class_records
from lofiseg.viz.figures import bars_figure, markdown_table, save_figure
from lofiseg.viz.images import colorize_labels, image_grid, save_png
from stages.cli import flatten_metrics, log, run, stage_parser

SUPERVISIONS = ("pseudo", "gt", "web_gt")  # web_gt: DeepLab on the web images' ground truth (the ceiling)


def ratio(part: dict | None, whole: dict | None) -> float | None:
    """mIoU of ``part`` as a fraction of ``whole``'s (None when either is missing or ``whole`` is 0)."""
    if not part or not whole or whole["miou"] <= 0:
        return None
    return part["miou"] / whole["miou"]


def score_single_class(params: Params, web: Dataset, models: Path) -> dict:
    """{class: {"reg": {fbeta, mae}, "gt": {...} | None, "gap": gt - reg | None}} on each class's test split."""
    out: dict = {}
    for name in params.web.classes:
        records = [r for r in class_records(web, name, "test") if r.has_mask]
        entry: dict = {}
        for supervision in ("reg", "gt"):
            bundle = models / name / supervision / "model.pt"
            if not records or not bundle.is_file():  # no held-out ground truth, or the gt baseline was skipped
                entry[supervision] = None
                continue
            model, info = load_bundle(bundle)
            meter = SaliencyMeter()
            for record, probs in predict_native(model, web, records, info["image_size"],
                                                params.evaluate.batch_size, desc=f"{name}-{supervision}"):
                meter.update(probs[1].clamp(0, 1).numpy(), web_truth_labels(web.mask(record), 1))
            scores = meter.compute()
            entry[supervision] = {"fbeta": float(scores["fbeta_adaptive"]), "mae": float(scores["mae"])}
        reg, gt = entry["reg"], entry["gt"]
        entry["gap"] = gt["fbeta"] - reg["fbeta"] if reg and gt else None
        out[name] = entry
    return out


def confusion_scores(meter: ConfusionMeter, classes: Sequence[str]) -> dict:
    scores = meter.compute()
    return {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
            "iou": {name: (None if np.isnan(v) else v) for name, v in zip(classes, scores["iou"], strict=True)}}


def score_pseudo_labels(params: Params, web: Dataset, pseudo: Dataset) -> dict | None:
    """Pseudo labels against the web ground truth (object -> the image's class id) where the web set has it."""
    classes = params.semantic_classes()
    meter = ConfusionMeter(len(classes))
    labelled = total = 0
    web_ids = {r.id for r in web}
    for record in pseudo:
        truth = web[record.id] if record.id in web_ids else None
        if truth is None or not truth.has_mask:
            continue
        label = pseudo.mask(record)
        target = web_truth_labels(web.mask(truth), classes.index(web_class(truth, params.web.classes)))
        known = label != IGNORE
        labelled += int(known.sum())
        total += label.size
        meter.update(np.where(known, label, 0), np.where(known, target, IGNORE))
    if total == 0:
        return None
    return {**confusion_scores(meter, classes), "labelled_fraction": labelled / total}


def semantic_truth(params: Params, dataset: str, mask: np.ndarray) -> np.ndarray:
    return remap_labels(mask, params.dataset_classes(dataset), params.semantic_classes())


def score_deeplab(params: Params, raw: Path, bundle: Path, split: str = "test") -> tuple[dict, dict]:
    """({set: scores}, {set: [(record, predicted labels)] of the first grid_samples images of ``split``})."""
    model, info = load_bundle(bundle)
    classes = params.semantic_classes()
    scores, samples = {}, {}
    for name in params.evaluate.semantic_sets:
        dataset = Dataset(raw / name)
        meter = ConfusionMeter(len(classes))
        samples[name] = []
        for record, probs in predict_native(model, dataset, dataset.split(split), info["image_size"],
                                            params.evaluate.batch_size, desc=f"{bundle.parent.name} {name}",
                                            scales=params.evaluate.semantic_scales,
                                            flip=params.evaluate.semantic_flip):
            pred = probs.argmax(0).numpy().astype(np.uint8)
            meter.update(pred, semantic_truth(params, name, dataset.mask(record)))
            if len(samples[name]) < params.evaluate.grid_samples:
                samples[name].append((record, pred))
        scores[name] = confusion_scores(meter, classes)
    return scores, samples


def test_time_inference(params: Params) -> str:
    """How DeepLab was run on the test images, in words (evaluate.semantic_scales / semantic_flip)."""
    scales, flip = params.evaluate.semantic_scales, params.evaluate.semantic_flip
    if scales == [1.0] and not flip:
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


def table2(single: dict) -> str:
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    rows = [[name, cell(e["reg"] and e["reg"]["fbeta"]), cell(e["gt"] and e["gt"]["fbeta"]), cell(e["gap"])]
            for name, e in single.items()]
    return markdown_table(["class", "reg F-beta", "gt F-beta", "gap (gt - reg)"], rows)


def miou_tables(metrics: dict, classes: Sequence[str]) -> str:
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    pseudo = metrics.get("pseudo_labels")
    columns = {"pseudo GT vs GT (web images)": pseudo, "DeepLab on pseudo GT": metrics["deeplab_pseudo"],
               "DeepLab on web GT (ceiling)": metrics.get("deeplab_web_gt"),
               "DeepLab on GT (upper bound)": metrics["deeplab_gt"]}
    head = markdown_table(
        [*columns, "ratio pseudo / GT", "pseudo / ceiling", "ceiling / GT"],
        [[cell(c and c["miou"]) for c in columns.values()]
         + [cell(metrics.get(k)) for k in ("deeplab_ratio", "pseudo_vs_ceiling", "ceiling_ratio")]])
    per_class = markdown_table(
        ["class", *columns], [[name] + [cell(c and c["iou"].get(name)) for c in columns.values()] for name in classes])
    return f"## mIoU\n\n{head}\n## IoU per class\n\n{per_class}"


def scenes_grid(params: Params, raw: Path, samples: dict) -> np.ndarray:
    name = params.evaluate.semantic_sets[0]
    dataset = Dataset(raw / name)
    rows = []
    for (record, pseudo_pred), (_, gt_pred) in zip(samples["pseudo"][name], samples["gt"][name], strict=True):
        truth = semantic_truth(params, name, dataset.mask(record))
        rows.append([dataset.image(record), colorize_labels(truth), colorize_labels(pseudo_pred),
                     colorize_labels(gt_pred)])
    return image_grid(rows, col_titles=["image", "truth", "DeepLab pseudo", "DeepLab GT"])


def pseudo_grid(params: Params, web: Dataset, pseudo: Dataset) -> np.ndarray:
    """For each class, its first pseudo-labelled image: image, web ground truth (if any), pseudo label."""
    rows, titles = [], []
    web_ids = {r.id for r in web}
    for name in params.web.classes:
        record = next((r for r in pseudo if name in r.tags), None)
        if record is None:
            continue
        truth = web[record.id] if record.id in web_ids else None
        gt = None
        if truth is not None and truth.has_mask:
            gt = colorize_labels(web_truth_labels(web.mask(truth), params.semantic_classes().index(name)))
        rows.append([pseudo.image(record), gt, colorize_labels(pseudo.mask(record))])
        titles.append(name)
    return image_grid(rows, row_titles=titles, col_titles=["web image", "truth (unused)", "pseudo label"])



def evaluate(params: Params, raw: Path, web_root: Path, pseudo_root: Path, single_models: Path,
             deeplab_models: Path, metrics_path: Path, report: Path) -> tuple[dict, list[Path]]:
    web, pseudo = Dataset(web_root), Dataset(pseudo_root)
    classes = params.semantic_classes()
    metrics: dict = {"classes": classes}
    metrics["pseudo_labels"] = score_pseudo_labels(params, web, pseudo)
    samples = {}
    first = params.evaluate.semantic_sets[0]
    for supervision in SUPERVISIONS:
        bundle = deeplab_models / supervision / "model.pt"
        if supervision == "web_gt" and not bundle.is_file():  # the web set has no ground truth: no ceiling
            metrics["deeplab_web_gt"] = None
            continue
        by_set, samples[supervision] = score_deeplab(params, raw, bundle)
        entry = dict(by_set[first])
        if len(by_set) > 1:
            entry["by_set"] = by_set
        metrics[f"deeplab_{supervision}"] = entry
        log.info("DeepLab on %s: mIoU %.3f on %s", supervision, entry["miou"], first)
    metrics["deeplab_ratio"] = ratio(metrics["deeplab_pseudo"], metrics["deeplab_gt"])
    metrics["pseudo_vs_ceiling"] = ratio(metrics["deeplab_pseudo"], metrics["deeplab_web_gt"])
    metrics["ceiling_ratio"] = ratio(metrics["deeplab_web_gt"], metrics["deeplab_gt"])
    metrics["single_class"] = score_single_class(params, web, single_models)
    atomic_write_json(metrics_path, metrics)

    files = [metrics_path]
    files.append(atomic_write_text(report / "table2.md", (
        "# Single-class models: regularized loss vs ground truth (Veksler Table 2 layout)\n\n"
        "F-beta at T = 2 mean(S) on each class's held-out web images.\n\n" + table2(metrics["single_class"]))))
    files.append(atomic_write_text(report / "miou.md", (
        f"# Weakly supervised semantic segmentation (Veksler Sec. 4.3)\n\nDeepLab scores on the test split of "
        f"{first} ({test_time_inference(params)}); pseudo GT scored on the web images it labels, over the pixels "
        "it does not ignore. Training augmentation: "
        + "; ".join(f"{name} {training_augmentation(deeplab_models / name / 'info.json')}" for name in SUPERVISIONS
                    if metrics[f"deeplab_{name}"] is not None)
        + ".\n\n" + miou_tables(metrics, classes))))
    groups = {name: {"pseudo GT": (metrics["pseudo_labels"] or {}).get("iou", {}).get(name),
                     "DeepLab pseudo": metrics["deeplab_pseudo"]["iou"][name],
                     "DeepLab GT": metrics["deeplab_gt"]["iou"][name]} for name in classes}
    files.append(save_figure(bars_figure(groups, "IoU", f"IoU per class ({first} test / web images)"),
                             report / "iou_per_class.png"))
    files.append(save_png(report / "scenes_grid.png", scenes_grid(params, raw, samples)))
    files.append(save_png(report / "pseudo_grid.png", pseudo_grid(params, web, pseudo)))
    return metrics, files


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--web", type=Path, default=Path("data/web"))
    parser.add_argument("--pseudo", type=Path, default=Path("data/pseudo_gt"))
    parser.add_argument("--single-models", type=Path, default=Path("models/single"))
    parser.add_argument("--deeplab-models", type=Path, default=Path("models/deeplab"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--report", type=Path, default=Path("reports/semantic"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    torch.set_grad_enabled(False)
    tags = {**standard_tags(".", [str(args.raw), str(args.pseudo), str(args.deeplab_models)]),
            "lofiseg.stage": "evaluate_semantic"}
    with Tracker(f"{params.tracking.experiment_prefix}-evaluation", "evaluate_semantic", tags=tags,
                 enabled=params.tracking.enabled, required=params.tracking.required) as tracker:
        metrics, files = evaluate(params, args.raw, args.web, args.pseudo, args.single_models, args.deeplab_models,
                                  args.metrics / "semantic.json", args.report)
        tracker.log_metrics(flatten_metrics(metrics, "semantic."), step=0)
        for file in files:
            tracker.log_artifact(file, "semantic")


if __name__ == "__main__":
    sys.exit(run(main))
