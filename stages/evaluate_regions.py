"""DVC stage `evaluate_regions`: every class-agnostic region model on the test split of each regions set.

Each method of ``train_regions.methods`` (model ``<models>/<method>/model.pt``) segments the test images of
every set in ``evaluate.regions_sets`` at the model's training size with the method's inference routine
(:mod:`lofiseg.infer.regions`); the label maps are resized (nearest) to the ground truth and scored with
BSDS covering, Rand index, variation of information, boundary F (all human segmentations of a BSDS image)
and Dille et al.'s recall at IoU > 0.5, matched mIoU and boundary IoU.

Outputs: ``metrics/regions.json`` shaped ``{method: {covering, rand_index, vi, boundary_f, recall50,
miou_matched, boundary_iou}}`` for the first set of ``evaluate.regions_sets``; further sets are nested in
each method under their name (``{method: {..., "<set>": {covering, ...}}}``). ``<report>/table.md`` holds,
per set, the CAS paper's Table 6 layout (contour and region metrics, ODS / OIS; one segmentation per image, so
ODS = OIS) and Dille et al.'s Table 2 layout (mIoU, B. IoU, recall, relative recall gain over the weakest
method). ``<report>/grid.png``: image, ground truth and every method's regions in random colours. All of it
is logged to MLflow (experiment ``<prefix>-evaluation``, run ``evaluate_regions``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, load_params
from lofiseg.data.format import Dataset, Record, read_mask
from lofiseg.data.layouts import ALT_MASKS_FIELD
from lofiseg.data.loading import load_split
from lofiseg.infer.regions import RegionEvaluator, resize_labels, segment_images
from lofiseg.models.bundle import load_bundle
from lofiseg.provenance import standard_tags
from lofiseg.track.tracker import Tracker
from lofiseg.viz.figures import markdown_table
from lofiseg.viz.images import image_grid, random_colours, save_png
from stages.cli import flatten_metrics, log, run, stage_parser


def ground_truths(dataset: Dataset, record: Record) -> list[np.ndarray]:
    """The record's mask, then its further human segmentations (BSDS ``alt_masks``), as int64 maps."""
    masks = [dataset.mask(record)]
    alt = record.extra.get(ALT_MASKS_FIELD, "")
    masks += [read_mask(dataset.root / rel) for rel in alt.split(";") if rel]
    return [m.astype(np.int64) for m in masks]


def evaluate_set(model, info: dict, method: str, dataset: Dataset, params: Params, name: str,
                 batch_size: int) -> tuple[dict[str, float], list[np.ndarray]]:
    records = dataset.split("test")
    if not records:
        raise ValueError(f"{dataset.root}: evaluate.regions_sets {name!r} has no test split")
    split = load_split(dataset, records, info["image_size"], with_masks=False, desc=f"load {name}")
    settings = params.train_regions.region_settings(params.seed, info)
    labels = segment_images(model, method, split.images, settings, batch_size, desc=f"{method} on {name}")
    evaluator = RegionEvaluator()
    resized = []
    for record, pred in zip(records, labels, strict=True):
        gts = ground_truths(dataset, record)
        evaluator.update(pred, gts)
        resized.append(resize_labels(pred, gts[0].shape))
    return evaluator.compute(), resized


def table6(scores: dict[str, dict[str, float]]) -> str:
    """CAS paper Table 6 layout: contour F and region metrics, ODS and OIS, one row per method."""
    header = ["method", "F-meas. ODS", "F-meas. OIS", "GT-cov. ODS", "GT-cov. OIS", "Rand. Index ODS",
              "Rand. Index OIS", "Var. Info. ODS", "Var. Info. OIS"]
    rows = []
    for method, s in scores.items():
        cells = [s["boundary_f"], s["covering"], s["rand_index"], s["vi"]]
        rows.append([method] + [f"{v:.2f}" for v in cells for _ in range(2)])
    return markdown_table(header, rows)


def table2(scores: dict[str, dict[str, float]]) -> str:
    """Dille et al. Table 2 layout: mIoU, boundary IoU, recall and recall gain over the lowest-recall method."""
    lowest = min(s["recall50"] for s in scores.values())
    rows = []
    for method, s in scores.items():
        gain = 100.0 * (s["recall50"] - lowest) / lowest if lowest > 0 else float("nan")
        rows.append([method, f"{s['miou_matched']:.3f}", f"{s['boundary_iou']:.3f}", f"{s['recall50']:.3f}",
                     f"{gain:.0f}"])
    return markdown_table(["method", "mIoU", "B. IoU", "Recall", "Delta %"], rows)


def evaluate_regions(params: Params, models_root: Path, raw: Path, metrics_path: Path,
                     report: Path) -> tuple[dict, list[Path]]:
    cfg = params.evaluate
    methods = params.train_regions.methods
    sets = {name: Dataset(raw / name) for name in cfg.regions_sets}
    by_set: dict[str, dict[str, dict[str, float]]] = {name: {} for name in sets}
    grid_labels: dict[str, list[np.ndarray]] = {}
    for method in methods:
        model, info = load_bundle(models_root / method / "model.pt")
        if info.get("method") != method:
            raise ValueError(f"{models_root / method / 'model.pt'}: holds method {info.get('method')!r}, "
                             f"expected {method!r}")
        for index, (name, dataset) in enumerate(sets.items()):
            scores, labels = evaluate_set(model, info, method, dataset, params, name, cfg.batch_size)
            by_set[name][method] = scores
            if index == 0:
                grid_labels[method] = labels[:cfg.grid_samples]
            log.info("regions %s on %s: %s", method, name, ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    first, *others = sets
    metrics = {method: {**by_set[first][method], **{name: by_set[name][method] for name in others}}
               for method in methods}
    atomic_write_json(metrics_path, metrics)
    files = [metrics_path]

    sections = []
    for name in sets:
        sections.append(f"## {name} (test split)\n\n### Contour and region metrics (CAS paper Table 6 layout)\n\n"
                        f"{table6(by_set[name])}\n### Segment metrics (Dille et al. Table 2 layout)\n\n"
                        f"{table2(by_set[name])}")
    text = ("# Class-agnostic multi-region segmentation\n\nOne segmentation per image, so ODS = OIS. VI in bits "
            "(lower is better). Recall: ground-truth segments matched with IoU > 0.5; Delta %: recall gain over "
            "the lowest-recall method.\n\n" + "\n".join(sections))
    files.append(atomic_write_text(report / "table.md", text))

    dataset = sets[first]
    records = dataset.split("test")[:cfg.grid_samples]
    rows = []
    for i, record in enumerate(records):
        gt = dataset.mask(record).astype(np.int64)
        rows.append([dataset.image(record), random_colours(gt)]
                    + [random_colours(grid_labels[m][i]) for m in methods])
    files.append(save_png(report / "grid.png", image_grid(rows, col_titles=["image", "ground truth", *methods])))
    return metrics, files



def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--models", type=Path, default=Path("models/regions"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--report", type=Path, default=Path("reports/regions"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    tags = {**standard_tags(".", [str(args.raw), str(args.models)]), "lofiseg.stage": "evaluate_regions"}
    with Tracker(f"{params.tracking.experiment_prefix}-evaluation", "evaluate_regions", tags=tags,
                 enabled=params.tracking.enabled, required=params.tracking.required) as tracker:
        metrics, files = evaluate_regions(params, args.models, args.raw, args.metrics / "regions.json", args.report)
        tracker.log_metrics({k: v for k, v in flatten_metrics(metrics, "regions.").items() if np.isfinite(v)}, step=0)
        for file in files:
            tracker.log_artifact(file, "regions")


if __name__ == "__main__":
    sys.exit(run(main))
