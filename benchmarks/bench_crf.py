"""Dense-CRF speed and memory at 256x256 (5 mean-field iterations), and the CAS multi-region post-processing.

Run: ``.venv/bin/python -m benchmarks.bench_crf``; writes benchmarks/results/bench_crf.md. Each case runs in a
fresh spawned process so its peak-RSS increase (ru_maxrss after minus before the timed calls) is its own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

SIZE = 256
REPEATS = 10
RESULTS = Path(__file__).parent / "results" / "bench_crf.md"


def _scene(num_regions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 256x256 image of ``num_regions`` Voronoi cells with their own colours, plus per-pixel cell ids."""
    rng = np.random.default_rng(seed)
    centres = rng.random((num_regions, 2)) * SIZE
    rows, cols = np.mgrid[:SIZE, :SIZE]
    distances = (rows[..., None] - centres[:, 0]) ** 2 + (cols[..., None] - centres[:, 1]) ** 2
    cells = distances.argmin(-1)
    colours = rng.integers(0, 256, (num_regions, 3))
    noise = rng.normal(0, 8, (SIZE, SIZE, 3))
    image = np.clip(colours[cells] + noise, 0, 255).astype(np.uint8)
    return image, cells


def _noisy_softmax(cells: np.ndarray, num_labels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = 2.0 * np.eye(num_labels)[cells % num_labels] + rng.normal(0, 1.0, (SIZE, SIZE, num_labels))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).transpose(2, 0, 1).astype(np.float32)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _run_case(case: str, queue: mp.Queue) -> None:
    from lofiseg.infer.clustering import postprocess_regions
    from lofiseg.infer.dense_crf import dense_crf

    if case.startswith("dense_crf"):
        num_labels = int(case.split("M=")[1])
        image, cells = _scene(num_labels)
        probs = _noisy_softmax(cells, num_labels)

        def call() -> object:
            return dense_crf(image, probs, iterations=5)

        accuracy_in = float((probs.argmax(0) == cells % num_labels).mean())
    else:
        image, cells = _scene(12)
        # descriptors: a noisy 8-D code per cell plus a few 0.5%-area specks of their own code
        rng = np.random.default_rng(1)
        codes = rng.random((12, 8))
        descriptors = (codes[cells] + rng.normal(0, 0.05, (SIZE, SIZE, 8))).transpose(2, 0, 1).astype(np.float32)
        for speck in range(6):  # 18x18 = 324 px = 0.49% of the image each
            top, left = 20 + 36 * speck, 30 + 30 * speck
            descriptors[:, top : top + 18, left : left + 18] = rng.random((8, 1, 1)) + 1.0

        def call() -> object:
            return postprocess_regions(image, descriptors)

        accuracy_in = float("nan")
    before = _peak_mb()
    result = call()  # warm-up, also the first allocation
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - start) * 1000)
    if case.startswith("dense_crf"):
        accuracy_out = float((np.asarray(result).argmax(0) == cells % num_labels).mean())
    else:
        labels = np.asarray(result)
        accuracy_out = float(len(np.unique(labels)))  # number of regions kept
    queue.put((case, statistics.median(times), min(times), _peak_mb() - before, _peak_mb(), accuracy_in, accuracy_out))


def main() -> None:
    context = mp.get_context("spawn")
    rows = []
    for case in ("dense_crf M=2", "dense_crf M=21", "postprocess_regions"):
        queue = context.Queue()
        process = context.Process(target=_run_case, args=(case, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    load = os.getloadavg()
    lines = [
        "# Dense CRF benchmark",
        "",
        f"256x256 image, 5 mean-field iterations (pydensecrf), default kernels (gaussian sxy 3 compat 3, bilateral "
        f"sxy 80 srgb 13 compat 10). Median / best of {REPEATS} calls after one warm-up, each case in a fresh "
        "process. Peak-RSS increase = ru_maxrss after the calls minus before them (includes the CRF's lattice "
        "and the returned arrays).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average during the "
        f"run {load[0]:.2f} / {load[1]:.2f} (other jobs share the CPUs, so times are upper bounds).",
        "",
        "| case | median ms | best ms | peak RSS increase MB | process peak RSS MB | argmax acc. in | out |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, median, best, delta, peak, acc_in, acc_out in rows:
        if case.startswith("dense_crf"):
            lines.append(f"| {case} | {median:.1f} | {best:.1f} | {delta:.1f} | {peak:.0f} | {acc_in:.3f} | "
                         f"{acc_out:.3f} |")
        else:
            lines.append(f"| {case} (12 colour cells, 8-D descriptors, k-means 20 + CRF merge < 2%) | {median:.1f} "
                         f"| {best:.1f} | {delta:.1f} | {peak:.0f} | - | {acc_out:.0f} regions kept |")
    lines += [
        "",
        "Accuracy columns: agreement of the argmax with the Voronoi cells the image was drawn from, before and "
        "after the CRF (noisy softmax input: +2 logit on the true label, N(0, 1) logit noise).",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
