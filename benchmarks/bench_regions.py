"""Class-agnostic multi-region segmentation: inference speed per 256x256 image, and the region-metrics table.

Run: ``.venv/bin/python -m benchmarks.bench_regions [--skip-training]``; writes
benchmarks/results/bench_regions.md.

1. Clustering time per 256x256 image for each inference routine (:mod:`lofiseg.infer.regions`) on
   synthetic descriptors of a 256 px multi-region image (the regions generator): cas/ce argmax and k-means
   (20 clusters) over a 20-channel softmax, projective mean-shift (45 degrees, d = 16, random signs), Euclidean
   mean-shift (discriminative, d = 16), projective multi-resolution (128 px + 256 px); with and without the
   dense-CRF merge of regions < 2 %. Median of ``REPEATS`` calls after a warm-up, 1 torch thread.
2. The four methods trained with the default params.yaml (train_regions: 8 epochs at 64 px, lite0 U-Net) on
   the default synthetic regions set (generated into a temporary folder), evaluated on its test split as the
   evaluate_regions stage does (lofiseg.evaluate.regions); plus inference variants of the same models (CAS with k-means, projective
   with multi-resolution refinement). MLflow store and all files under a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lofiseg.config import load_params
from lofiseg.data.format import Dataset, DatasetWriter
from lofiseg.data.loading import load_split
from lofiseg.data.synthetic import generate_regions, render_regions
from lofiseg.infer.regions import (
    RegionEvaluator,
    RegionSettings,
    cluster,
    segment,
    segment_images,
)
from lofiseg.metrics.bsds import ground_truth_covering
from lofiseg.viz.figures import markdown_table

SIZE = 256
REPEATS = 5
RESULTS = Path(__file__).parent / "results" / "bench_regions.md"
PROJECT = Path(__file__).resolve().parent.parent


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px image of 4-8 textured regions and its region map (compact ids)."""
    image, mask = render_regions(np.random.default_rng(seed), SIZE, 4, 8)
    return image, np.unique(mask, return_inverse=True)[1].reshape(mask.shape)


def _descriptors(kind: str, regions: np.ndarray, size: int, seed: int = 0) -> torch.Tensor:
    """Noisy descriptors (D, size, size) of the region map resized to ``size``."""
    rng = np.random.default_rng(seed)
    idx = np.linspace(0, SIZE - 1, size).round().astype(int)
    cells = regions[np.ix_(idx, idx)]
    n = int(regions.max()) + 1
    if kind == "softmax":
        logits = 3.0 * np.eye(20)[cells] + rng.normal(0, 1.0, (size, size, 20))
        out = np.exp(logits - logits.max(-1, keepdims=True))
        out /= out.sum(-1, keepdims=True)
    elif kind == "projective":
        lines = np.linalg.qr(rng.normal(size=(16, 16)))[0][:n]  # orthonormal lines, one per region
        out = lines[cells] * rng.choice([-1.0, 1.0], (size, size, 1)) + rng.normal(0, 0.15, (size, size, 16))
        out /= np.linalg.norm(out, axis=-1, keepdims=True)
    else:
        centres = rng.normal(0, 3.0, (n, 16))
        out = centres[cells] + rng.normal(0, 0.3, (size, size, 16))
    return torch.from_numpy(out.transpose(2, 0, 1).astype(np.float32))


def _median_ms(call) -> tuple[float, object]:
    result = call()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = call()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), result


def speed_table() -> str:
    torch.set_num_threads(1)
    image, regions = _scene()
    cases = [
        ("cas / ce argmax (M = 20)", "cas", "softmax", RegionSettings(), (1.0,)),
        ("cas / ce k-means (20 clusters)", "cas", "softmax", RegionSettings(clustering="kmeans"), (1.0,)),
        ("projective mean-shift (45 deg, d = 16)", "projective", "projective", RegionSettings(), (1.0,)),
        ("projective multi-resolution (128 + 256 px)", "projective", "projective",
         RegionSettings(scales=(0.5, 1.0)), (0.5, 1.0)),
        ("discriminative mean-shift (bandwidth 1.5, d = 16)", "discriminative", "embedding", RegionSettings(),
         (1.0,)),
    ]
    rows = []
    for name, method, kind, settings, scales in cases:
        descriptors = [_descriptors(kind, regions, int(SIZE * s)) for s in scales]
        if len(scales) == 1:
            cluster_ms, labels = _median_ms(lambda: cluster(method, descriptors[0], settings))  # noqa: B023
        else:
            cluster_ms = float("nan")
        total_ms, merged = _median_ms(lambda: segment(method, image, descriptors, settings))  # noqa: B023
        if len(scales) > 1:
            labels = merged
        rows.append([name, f"{cluster_ms:.0f}" if np.isfinite(cluster_ms) else "-", f"{total_ms:.0f}",
                     str(len(np.unique(labels))), str(len(np.unique(merged))),
                     f"{ground_truth_covering(merged, regions):.3f}"])
    header = ["routine", "clustering ms", "clustering + CRF merge (< 2 %) ms", "regions before merge",
              "regions after", "covering"]
    return markdown_table(header, rows) + (
        f"\n256 x 256 image with {int(regions.max()) + 1} regions; noisy synthetic descriptors (softmax: +3 logit on "
        "the region's channel, N(0, 1) noise; projective: one orthonormal line per region, random sign per "
        "pixel, N(0, 0.15) noise; embedding: centres N(0, 3), N(0, 0.3) noise). Median of "
        f"{REPEATS} calls after a warm-up, torch.set_num_threads(1). Mean-shift finds its modes on a 4096-point "
        "subsample (256 seeds) and then assigns all 65536 pixels.\n")


def metrics_table(workdir: Path) -> tuple[str, str]:
    from lofiseg.evaluate.regions import score_region_models
    from lofiseg.viz.regions_report import contour_region_table, segment_table
    from stages.train_regions import train_regions

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    os.environ.setdefault("MLFLOW_ARTIFACT_ROOT", str(workdir / "mlartifacts"))
    params = load_params(PROJECT / "params.yaml")
    synthetic = params.synthetic
    raw = workdir / "raw"
    with DatasetWriter(raw / "regions") as writer:
        for sample in generate_regions(synthetic.regions, synthetic.regions.min_regions,
                                       synthetic.regions.max_regions, synthetic.image_size, params.seed):
            writer.add(sample)
    timings = {}
    for method in params.train_regions.methods:
        start = time.perf_counter()
        train_regions(params, method, raw, workdir / "models" / method, workdir / "checkpoints")
        timings[method] = time.perf_counter() - start
    by_set, _ = score_region_models(workdir / "models", params.train_regions.methods,
                                    {"regions": Dataset(raw / "regions")},
                                    partial(params.train_regions.region_settings, params.seed),
                                    params.evaluate.batch_size, 0)

    from lofiseg.models.bundle import load_bundle

    dataset = Dataset(raw / "regions")
    records = dataset.split("test")
    scores = dict(by_set["regions"])
    base = params.train_regions.region_settings(params.seed)
    variants = {"cas (k-means 20)": ("cas", replace(base, clustering="kmeans")),
                "projective (multi-res 64 + 128 px)": ("projective", replace(base, scales=(1.0, 2.0)))}
    for name, (method, settings) in variants.items():
        model, info = load_bundle(workdir / "models" / method / "model.pt")
        split = load_split(dataset, records, info["image_size"], with_masks=False)
        evaluator = RegionEvaluator()
        for record, pred in zip(records, segment_images(model, method, split.images, settings), strict=True):
            evaluator.update(pred, [dataset.mask(record).astype(np.int64)])
        scores[name] = evaluator.compute()
    cfg = params.train_regions
    setup = (f"Default params: {cfg.epochs} epochs at {cfg.image_size} px, batch {cfg.batch_size}, lr {cfg.lr}, "
             f"{cfg.model.arch} / {cfg.model.encoder} (frozen: {cfg.model.freeze_encoder}), M = {cfg.channels}, "
             f"d = {cfg.embedding_dim}; synthetic regions set {synthetic.regions.train}/{synthetic.regions.val}/"
             f"{synthetic.regions.test} images, {synthetic.regions.min_regions}-{synthetic.regions.max_regions} "
             f"regions. Training wall time (s): " + ", ".join(f"{m} {t:.0f}" for m, t in timings.items()) + ".\n")
    return setup, f"{contour_region_table(scores)}\n{segment_table(scores)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-training", action="store_true", help="speed table only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    parts = ["# Class-agnostic multi-region segmentation benchmark\n",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average at "
             f"start {load_before[0]:.2f} (other jobs share the CPUs: times are upper bounds).\n",
             "## Inference time per 256 x 256 image\n", speed_table()]
    if not args.skip_training:
        with tempfile.TemporaryDirectory(prefix="bench_regions_") as tmp:
            setup, tables = metrics_table(Path(tmp))
        parts += ["## Region metrics on the default synthetic regions set (test split)\n", setup,
                  "One segmentation per image, so ODS = OIS; VI in bits, lower is better. Inference: the "
                  "evaluate_regions defaults (cas/ce argmax, mean-shift for projective/discriminative, CRF merge "
                  "of regions < 2 %), plus two variants of the same trained models.\n", tables]
    parts.append(f"\nTotal benchmark time {time.perf_counter() - started:.0f} s; load average at the end "
                 f"{os.getloadavg()[0]:.2f}.\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    from lofiseg.atomic import atomic_write_text

    atomic_write_text(RESULTS, "\n".join(parts))
    print(RESULTS.read_text())


if __name__ == "__main__":
    sys.exit(main())
