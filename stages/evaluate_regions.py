"""DVC stage `evaluate_regions`: every class-agnostic region model on one split of each regions set.

The split scored is ``test`` unless ``evaluate.splits`` names another for the set (BSDS500 here: val).

Each method of ``train_regions.methods`` (model ``<models>/<method>/model.pt``) segments the images of that
split of every set in ``evaluate.regions_sets``, each whole image with its shorter side at the model's training
size, with the method's inference routine
(:mod:`lofiseg.infer.regions`); :mod:`lofiseg.evaluate.regions` resizes the label maps (nearest) to the ground
truth and scores them with BSDS covering, Rand index, variation of information, boundary F (all human
segmentations of a BSDS image; ODS and OIS over the max_regions of ``evaluate.regions_sweep``) and Dille et
al.'s recall at IoU > 0.5, matched mIoU and boundary IoU.

Outputs: ``metrics/regions.json`` shaped ``{method: {covering, rand_index, vi, boundary_f, recall50,
miou_matched, boundary_iou}}`` (ODS; with a sweep also ``covering_ois``, ``rand_index_ois``, ``vi_ois``,
``boundary_f_ois``) for the first set of ``evaluate.regions_sets``; further sets are nested in each method under
their name (``{method: {..., "<set>": {covering, ...}}}``). ``<report>/table.md`` holds, per set, the CAS
paper's Table 6 layout (contour and region metrics, ODS / OIS; without a sweep one segmentation per image, so
ODS = OIS) and Dille et al.'s Table 2 layout (mIoU, B. IoU, recall, relative recall gain over the weakest
method). ``<report>/grid.png``: image, ground truth and every method's regions in random colours. All of it
is logged to MLflow (experiment ``<prefix>-evaluation``, run ``evaluate_regions``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, load_params
from lofiseg.data.format import Dataset
from lofiseg.evaluate.regions import metrics_by_method, score_region_models
from lofiseg.viz.images import image_grid, random_colours, save_png
from lofiseg.viz.regions_report import contour_region_table, segment_table
from stages.cli import run, stage_parser, tracked_evaluation


def evaluate_regions(params: Params, models_root: Path, raw: Path, metrics_path: Path,
                     report: Path) -> tuple[dict, list[Path]]:
    cfg = params.evaluate
    methods = params.train_regions.methods
    sets = {name: Dataset(raw / name) for name in cfg.regions_sets}
    by_set, grid_labels = score_region_models(models_root, methods, sets,
                                              partial(params.train_regions.region_settings, params.seed),
                                              cfg.batch_size, cfg.grid_samples,
                                              {name: cfg.split_of(name) for name in sets}, cfg.regions_sweep)
    metrics = metrics_by_method(by_set)
    atomic_write_json(metrics_path, metrics)
    files = [metrics_path]

    sections = []
    for name in sets:
        sections.append(f"## {name} ({cfg.split_of(name)} split)\n\n### Contour and region metrics (CAS paper Table 6 layout)\n\n"
                        f"{contour_region_table(by_set[name])}\n### Segment metrics (Dille et al. Table 2 layout)\n\n"
                        f"{segment_table(by_set[name])}")
    candidates = (f"ODS / OIS over max_regions {cfg.regions_sweep}" if len(set(cfg.regions_sweep)) > 1
                  else "One segmentation per image, so ODS = OIS")
    text = ("# Class-agnostic multi-region segmentation\n\n" + candidates + ". VI in bits "
            "(lower is better). Recall: ground-truth segments matched with IoU > 0.5; Delta %: recall gain over "
            "the lowest-recall method.\n\n" + "\n".join(sections))
    files.append(atomic_write_text(report / "table.md", text))

    dataset = sets[cfg.regions_sets[0]]
    records = dataset.split(cfg.split_of(cfg.regions_sets[0]))[:cfg.grid_samples]
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
    tracked_evaluation(params, "evaluate_regions", [args.raw, args.models], "regions", args.report,
                       lambda: evaluate_regions(params, args.models, args.raw, args.metrics / "regions.json",
                                                args.report))


if __name__ == "__main__":
    sys.exit(run(main))
