"""DVC stage `evaluate_semantic`: the weakly supervised chain of Veksler Sec. 4.3, scored against ground truth.

* single-class models: F-beta (T = 2 mean(S)) of every ``reg`` and ``gt`` model on its class's held-out web
  images (test split), and the gap between them: the paper's Table 2;
* pseudo ground truth: mIoU of ``data/pseudo_gt`` against the web images' ground truth where it exists
  (synthetic web sets), over the pixels the pseudo labels do not ignore, and the fraction they label;
* DeepLab: mIoU and per-class IoU of ``train_deeplab@pseudo``, ``train_deeplab@gt`` (the upper bound) and
  ``train_deeplab@web_gt`` (the ceiling: the web images with perfect labels; absent without web ground truth)
  on the test split (or ``evaluate.splits.<set>``) of every set in ``evaluate.semantic_sets``, ground truth
  mapped by class name onto web.classes (other classes background); ``deeplab_ratio`` = pseudo / upper bound splits into ``pseudo_vs_ceiling`` (what the pseudo
  labels lose) times ``ceiling_ratio`` (what training on web images instead of the target domain loses).

With ``train_deeplab.enabled: false`` the DeepLab entries are null and only the rest is scored.

Writes ``metrics/semantic.json`` for DVC, markdown tables, a per-class IoU bar chart and qualitative grids under
``reports/semantic``, and logs them to MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, load_params
from lofiseg.data.format import Dataset
from lofiseg.evaluate.semantic import (
    miou_ratio,
    score_deeplab,
    score_pseudo_labels,
    score_single_class,
)
from lofiseg.viz.figures import bars_figure, save_figure
from lofiseg.viz.images import save_png
from lofiseg.viz.semantic_report import (
    miou_tables,
    pseudo_grid,
    scenes_grid,
    single_class_table,
    test_time_words,
    training_augmentation,
)
from stages.cli import log, run, stage_parser, tracked_evaluation

SUPERVISIONS = ("pseudo", "gt", "web_gt")  # web_gt: DeepLab on the web images' ground truth (the ceiling)


def evaluate(params: Params, raw: Path, web_root: Path, pseudo_root: Path, single_models: Path,
             deeplab_models: Path, metrics_path: Path, report: Path) -> tuple[dict, list[Path]]:
    web, pseudo = Dataset(web_root), Dataset(pseudo_root)
    classes = params.semantic_classes()
    deeplab = params.train_deeplab.enabled  # false: single-class models and pseudo labels only
    scoring = params.deeplab_scoring() if deeplab else None
    metrics: dict = {"classes": classes}
    metrics["pseudo_labels"] = score_pseudo_labels(web, pseudo, classes)
    samples = {}
    first = params.evaluate.semantic_sets[0]
    for supervision in SUPERVISIONS:
        bundle = deeplab_models / supervision / "model.pt"
        # off, or the web set has no ground truth (no ceiling)
        if scoring is None or (supervision == "web_gt" and not bundle.is_file()):
            metrics[f"deeplab_{supervision}"] = None
            continue
        by_set, samples[supervision] = score_deeplab(bundle, raw, scoring)
        entry = dict(by_set[first])
        if len(by_set) > 1:
            entry["by_set"] = by_set
        metrics[f"deeplab_{supervision}"] = entry
        log.info("DeepLab on %s: mIoU %.3f on %s", supervision, entry["miou"], first)
    deeplab_iou = {name: (metrics[f"deeplab_{name}"] or {}).get("iou", {}) for name in ("pseudo", "gt")}
    metrics["deeplab_ratio"] = miou_ratio(metrics["deeplab_pseudo"], metrics["deeplab_gt"])
    metrics["pseudo_vs_ceiling"] = miou_ratio(metrics["deeplab_pseudo"], metrics["deeplab_web_gt"])
    metrics["ceiling_ratio"] = miou_ratio(metrics["deeplab_web_gt"], metrics["deeplab_gt"])
    metrics["single_class"] = score_single_class(web, list(params.web.classes), single_models,
                                                 params.evaluate.batch_size)
    atomic_write_json(metrics_path, metrics)

    files = [metrics_path]
    files.append(atomic_write_text(report / "table2.md", (
        "# Single-class models: regularized loss vs ground truth (Veksler Table 2 layout)\n\n"
        "F-beta at T = 2 mean(S) on each class's held-out web images.\n\n"
        + single_class_table(metrics["single_class"]))))
    inference = test_time_words(params.evaluate.semantic_scales, params.evaluate.semantic_flip)
    files.append(atomic_write_text(report / "miou.md", (
        f"# Weakly supervised semantic segmentation (Veksler Sec. 4.3)\n\nDeepLab scores on the "
        f"{params.evaluate.split_of(first)} split of {first} ({inference}); pseudo GT scored on the web images it labels, over the pixels "
        "it does not ignore. Training augmentation: "
        + "; ".join(f"{name} {training_augmentation(deeplab_models / name / 'info.json')}" for name in SUPERVISIONS
                    if metrics[f"deeplab_{name}"] is not None)
        + ".\n\n" + miou_tables(metrics, classes))))
    groups = {name: {"pseudo GT": (metrics["pseudo_labels"] or {}).get("iou", {}).get(name),
                     "DeepLab pseudo": deeplab_iou["pseudo"].get(name),
                     "DeepLab GT": deeplab_iou["gt"].get(name)} for name in classes}
    files.append(save_figure(bars_figure(groups, "IoU", f"IoU per class ({first} test / web images)"),
                             report / "iou_per_class.png"))
    if scoring is not None:
        scenes = scenes_grid(Dataset(raw / first), lambda mask: scoring.truth(first, mask),
                             samples["pseudo"][first], samples["gt"][first])
        files.append(save_png(report / "scenes_grid.png", scenes))
    files.append(save_png(report / "pseudo_grid.png", pseudo_grid(web, pseudo, classes)))
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
    tracked_evaluation(params, "evaluate_semantic", [args.raw, args.pseudo, args.deeplab_models], "semantic",
                       args.report, lambda: evaluate(params, args.raw, args.web, args.pseudo, args.single_models,
                                                     args.deeplab_models, args.metrics / "semantic.json",
                                                     args.report))


if __name__ == "__main__":
    sys.exit(run(main))
