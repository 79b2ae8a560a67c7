"""Class-agnostic multi-region segmentation on real photographs: BSDS500, trained on train, scored on val
against every human segmentation at ODS / OIS over the region count (CAS paper Table 4).

Run: ``.venv/bin/python -m benchmarks.bench_real_regions --data ../shared/data/bsds500 [--size 64 --epochs 8]``;
writes benchmarks/results/bench_real_regions.md.

The data set is read the way a user's params would read it (``source: local``, ``layout: bsds``). The models
never see BSDS val before scoring: training's per-epoch validation (and anything chosen on it) uses a held-out
part of BSDS train (``--tune-fraction``, the layouts' sha256-of-id rule), and BSDS val becomes the scored split. Training and
inference are ``train_regions`` and ``evaluate_regions`` with the project's params.yaml plus the overrides
printed in the results (image size, epochs, the region-count sweep); images keep their aspect ratio (shorter
side at the size, random square crops in training, whole images at evaluation). MLflow tracking is off; every
file lives under a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from lofiseg.atomic import atomic_write_text
from lofiseg.config import Params, parse_params
from lofiseg.data.format import MANIFEST, Dataset
from lofiseg.data.layouts import build_dataset, carve_val
from lofiseg.evaluate.regions import load_region_model, score_regions
from lofiseg.viz.figures import markdown_table

RESULTS = Path(__file__).parent / "results" / "bench_real_regions.md"
PROJECT = Path(__file__).resolve().parent.parent
PAPER = {"covering": 0.38, "rand_index": 0.71, "vi": 1.98}  # CAS paper Table 4, BSDS500 row (ODS)


def benchmark_params(data: Path, fit: Path, size: int, epochs: int, sweep: list[int], methods: list[str]) -> Params:
    """params.yaml with BSDS500 (local, bsds layout), its fit copy and the benchmark's overrides."""
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    raw["download"]["datasets"]["bsds500"] = {"source": "local", "files": [{"uri": str(data)}], "layout": "bsds"}
    raw["download"]["datasets"]["bsds500_fit"] = {"source": "local", "files": [{"uri": str(fit)}],
                                                  "layout": "lofiseg"}
    raw["train_regions"].update(dataset="bsds500_fit", image_size=size, epochs=epochs, methods=methods)
    raw["evaluate"].update(regions_sets=["bsds500_fit"], regions_sweep=sweep)  # its test split = BSDS val
    raw["tracking"]["enabled"] = False
    return parse_params(raw, "params.yaml + bench_real_regions overrides")


def rewrite_manifest(root: Path, rows_of: Callable[[list[dict[str, str]]], list[dict[str, str]]]) -> Dataset:
    """The data set at ``root`` with its manifest rows replaced by ``rows_of(rows)``."""
    with open(root / MANIFEST, newline="") as f:
        rows = rows_of(list(csv.DictReader(f)))
    with open(root / MANIFEST, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Dataset(root)


def fit_splits(fraction: float) -> Callable[[list[dict[str, str]]], list[dict[str, str]]]:
    """Splits renamed: a held-out ``fraction`` of train -> val (training's validation), val -> test (scored)."""
    def rename(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        tune = carve_val(sorted(r["id"] for r in rows if r["split"] == "train"), fraction)
        return [{**r, "split": "test" if r["split"] == "val" else "val" if r["id"] in tune else r["split"]}
                for r in rows]
    return rename


def first_tests(limit: int) -> Callable[[list[dict[str, str]]], list[dict[str, str]]]:
    def keep(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        kept = set(sorted(r["id"] for r in rows if r["split"] == "test")[:limit])
        return [r for r in rows if r["split"] != "test" or r["id"] in kept]
    return keep


def run(data: Path, workdir: Path, size: int, epochs: int, sweep: list[int], methods: list[str],
        limit: int | None, tune_fraction: float) -> tuple[str, str]:
    from stages.train_regions import train_regions

    params = benchmark_params(data.resolve(), workdir / "raw" / "bsds500_fit", size, epochs, sweep, methods)
    built = build_dataset("bsds500", params.download.datasets["bsds500"], workdir / "bsds500", workdir / "cache",
                          params.download, progress=False)
    shutil.copytree(built, workdir / "raw" / "bsds500_fit")
    fit = rewrite_manifest(workdir / "raw" / "bsds500_fit", fit_splits(tune_fraction))
    if limit:  # a quick look: score the first `limit` val images only
        fit = rewrite_manifest(fit.root, first_tests(limit))
    counts = {s: len(fit.split(s)) for s in ("train", "val", "test")}
    scores, timings = {}, {}
    for method in methods:
        start = time.perf_counter()
        train_regions(params, method, workdir / "raw", workdir / "models" / method, workdir / "checkpoints")
        trained = time.perf_counter()
        model, info = load_region_model(workdir / "models" / method / "model.pt", method)
        settings = params.train_regions.region_settings(params.seed, info)
        scores[method], _ = score_regions(model, info["image_size"], method, fit, "bsds500", settings,
                                          params.evaluate.batch_size, "test", sweep)
        timings[method] = (trained - start, time.perf_counter() - trained)
        print(method, {k: round(v, 3) for k, v in scores[method].items()}, timings[method], flush=True)
    cfg = params.train_regions
    setup = (f"BSDS500 from `{data}`: train {counts['train']} images, training's validation {counts['val']} "
             f"(a held-out {tune_fraction:.0%} of BSDS train), scored: BSDS val {counts['test']} images against "
             f"every human segmentation, at full resolution.\n\nOverrides of params.yaml: `train_regions.image_size: "
             f"{size}` (shorter side; training crops {size} x {size}), `train_regions.epochs: {epochs}`, "
             f"`evaluate.regions_sweep: {sweep}` (ODS / OIS over max_regions), the fit copy's test split (= "
             f"BSDS val here); the rest as params.yaml: batch {cfg.batch_size}, lr {cfg.lr}, {cfg.model.arch} / "
             f"{cfg.model.encoder} (frozen encoder: {cfg.model.freeze_encoder}), M = {cfg.channels}, d = "
             f"{cfg.embedding_dim}, alpha {cfg.alpha}, CRF merge of regions < {cfg.min_area_fraction:.0%}.\n")
    header = ["method", "GT-cov. ODS", "GT-cov. OIS", "PRI ODS", "PRI OIS", "VI ODS", "VI OIS", "bdry F ODS",
              "bdry F OIS", "train s", "score s"]
    rows = [[m] + [f"{s.get(k, float('nan')):.2f}" for k in ("covering", "covering_ois", "rand_index",
                                                            "rand_index_ois", "vi", "vi_ois", "boundary_f",
                                                            "boundary_f_ois")]
            + [f"{timings[m][0]:.0f}", f"{timings[m][1]:.0f}"] for m, s in scores.items()]
    rows.append(["CAS paper (Table 4)", f"{PAPER['covering']:.2f}", "", f"{PAPER['rand_index']:.2f}", "",
                 f"{PAPER['vi']:.2f}", "", "", "", "", ""])
    return setup, markdown_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the BSDS500 folder (images/, groundTruth/)")
    parser.add_argument("--size", type=int, default=64, help="shorter side of training and inference")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--sweep", type=int, nargs="+", default=[2, 4, 6, 8, 12, 16, 20],
                        help="max_regions candidates of ODS / OIS")
    parser.add_argument("--methods", nargs="+", default=["cas", "projective", "ce", "discriminative"])
    parser.add_argument("--limit", type=int, default=None, help="score only the first N val images (a quick look)")
    parser.add_argument("--tune-fraction", type=float, default=0.2,
                        help="share of BSDS train held out as training's validation")
    args = parser.parse_args(argv)
    if not (args.data / "groundTruth").is_dir():
        raise SystemExit(f"error: --data {args.data}: no groundTruth/ folder; expected the BSDS500 folder")
    started = time.perf_counter()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_real_regions_") as tmp:
        setup, table = run(args.data, Path(tmp), args.size, args.epochs, args.sweep, args.methods, args.limit,
                           args.tune_fraction)
    text = "\n".join([
        "# Multi-region segmentation on BSDS500 (train -> val)\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average at start "
        f"{load:.2f} (other jobs share the CPUs: times are upper bounds).\n", setup,
        "ODS: the region count best for the whole set; OIS: best per image (BSDS benchmark, without its "
        "interpolation). VI in bits, lower is better. Wall time per model: training (s) and scoring (s).\n", table,
        f"\nTotal {time.perf_counter() - started:.0f} s. Command: `python -m benchmarks.bench_real_regions "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`.\n"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
