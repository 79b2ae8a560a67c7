"""DVC stage `evaluate_saliency`: every salient-object model on held-out sets with ground truth.

Saliency part: each (loss, noise rate) model on the clean test split (``evaluate.splits`` may name another) of
every set in ``evaluate.saliency_sets``: MAE, F-beta at T = 2 mean(S), max-F and weighted F-beta. Writes the metrics JSON
for DVC, a plots folder for ``dvc plots``, static PNG plots, a markdown table shaped like the CAS paper's
Table 3, and a qualitative grid, and logs the same files to MLflow.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, load_params, rate_key
from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import Dataset
from lofiseg.evaluate.saliency import score_saliency
from lofiseg.infer.predict import predict_probs
from lofiseg.models.bundle import load_bundle
from lofiseg.viz.figures import lines_figure, markdown_table, save_figure
from lofiseg.viz.images import colorize_labels, image_grid, save_png
from stages.cli import log, run, stage_parser, tracked_evaluation

AUDITED = "ce-audited"  # models/saliency/ce-audited/<rate>: CE trained on data/audited/<rate>


def table3(metrics: dict, losses: Sequence[str], rates: Sequence[str], eval_set: str) -> str:
    """The CAS paper's Table 3 layout: rows noise rate, columns loss, cells F-beta / MAE."""
    rows = [[rate] + [f"{metrics[loss][rate][eval_set]['fbeta_adaptive']:.3f} / "
                      f"{metrics[loss][rate][eval_set]['mae']:.3f}" for loss in losses] for rate in rates]
    return markdown_table(["noise rate"] + [f"{loss} F-beta / MAE" for loss in losses], rows)


def noisy_label_grid(params: Params, models: dict, noisy_root: Path, count: int) -> np.ndarray:
    """Train images of the noisiest copy (flipped ones first): image, ground truth, the noisy label it was
    trained on, and each loss's prediction at that rate."""
    rate = rate_key(max(params.noise.rates))
    noisy = Dataset(noisy_root / rate)
    clean = Dataset(noisy_root / rate_key(min(params.noise.rates)))
    train = sorted(noisy.split("train"), key=lambda r: (r.extra.get("noise_flipped") != "1", r.id))[:count]
    size = params.train_saliency.image_size
    split = cached_load_split(noisy, train, size, desc="load grid")
    gt = cached_load_split(clean, [clean[r.id] for r in train], size, desc="load grid gt").masks
    preds = {loss: predict_probs(m, split, count)[:, info["channel"]]
             for loss, (m, info) in models.items() if info["noise_rate"] == float(rate)}
    rows = [[split.images[i].permute(1, 2, 0).numpy(), colorize_labels(gt[i].numpy()),
             colorize_labels(split.masks[i].numpy())] + [p[i].numpy() for p in preds.values()]
            for i in range(len(split))]
    titles = ["image", "truth", f"noisy {rate}"] + [f"{loss} {rate}" for loss in preds]
    return image_grid(rows, col_titles=titles)


def evaluate_saliency(params: Params, models_root: Path, raw: Path, noisy_root: Path, metrics_path: Path,
                      report: Path) -> tuple[dict, list[Path]]:
    cfg = params.evaluate
    losses = params.train_saliency.losses
    rates = [rate_key(r) for r in sorted(params.noise.rates)]
    sets = {name: Dataset(raw / name) for name in cfg.saliency_sets}
    metrics: dict = {}
    loaded: dict = {}
    for loss in losses:
        for rate in rates:
            model, info = load_bundle(models_root / loss / rate / "model.pt")
            loaded[(loss, rate)] = (model, info)
            for name, dataset in sets.items():
                scores = score_saliency(model, info, dataset, cfg.batch_size, cfg.split_of(name))
                metrics.setdefault(loss, {}).setdefault(rate, {})[name] = scores
                log.info("saliency %s @ %s on %s: %s", loss, rate, name,
                         ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    for rate in rates:  # train_audited@<rate> (audit.retrain_rates): CE on the audited copy, when trained
        bundle = models_root / AUDITED / rate / "model.pt"
        if bundle.is_file():
            model, info = load_bundle(bundle)
            for name, dataset in sets.items():
                metrics.setdefault(AUDITED, {}).setdefault(rate, {})[name] = score_saliency(
                    model, info, dataset, cfg.batch_size)
    atomic_write_json(metrics_path, metrics)

    files = [metrics_path]
    tables = []
    for name in sets:
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["noise_rate", *losses])
        for rate in rates:
            writer.writerow([rate, *(f"{metrics[loss][rate][name]['fbeta_adaptive']:.4f}" for loss in losses)])
        files.append(atomic_write_text(report / "plots" / f"{name}.csv", rows.getvalue()))
        series = {loss: [(float(r), metrics[loss][r][name]["fbeta_adaptive"]) for r in rates] for loss in losses}
        fig = lines_figure(series, "noise rate (fraction of images with flipped labels)", "F-beta (adaptive)",
                           f"{name}: F-beta vs label noise")
        files.append(save_figure(fig, report / f"fbeta_vs_noise_{name}.png"))
        tables.append(f"## {name} ({cfg.split_of(name)} split)\n\n{table3(metrics, losses, rates, name)}")
    files.append(atomic_write_text(report / "table3.md", "# Saliency under label noise (CAS paper Table 3 "
                                   "layout)\n\nCells: F-beta at T = 2 mean(S) / MAE.\n\n" + "\n".join(tables)))
    by_loss = {loss: loaded[(loss, rate)] for loss in losses for rate in rates if rate == rates[-1]}
    grid = noisy_label_grid(params, by_loss, noisy_root, cfg.grid_samples)
    files.append(save_png(report / "grid.png", grid))
    return metrics, files


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--noisy", type=Path, default=Path("data/noisy"))
    parser.add_argument("--saliency-models", type=Path, default=Path("models/saliency"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    parser.add_argument("--report", type=Path, default=Path("reports/saliency"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    tracked_evaluation(params, "evaluate_saliency", [args.raw, args.saliency_models], "saliency", args.report,
                       lambda: evaluate_saliency(params, args.saliency_models, args.raw, args.noisy,
                                                 args.metrics / "saliency.json", args.report))


if __name__ == "__main__":
    sys.exit(run(main))
