"""Regularized losses (Veksler) forward + backward at 16 x 128^2: time per call and peak memory.

Run: ``.venv/bin/python -m benchmarks.bench_regularized``; writes benchmarks/results/bench_regularized.md.
Each case runs in a fresh spawned process. Peak memory of the first full-size forward + backward is the rise
of the process's peak RSS over its RSS just before the call: the peak (VmHWM) is reset through
``/proc/self/clear_refs`` when the kernel allows it; otherwise the ru_maxrss increase is reported, which can
only under-estimate.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

BATCH, SIZE = 16, 128
REPEATS = 10
RESULTS = Path(__file__).parent / "results" / "bench_regularized.md"
CASES = ("complete (Eq. 6, normal stage)", "sparse-CRF only (Eq. 3)", "dense-CRF, pooled by 4 (Sec. 3.1)")


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _run_case(case: str, threads: int, queue: mp.Queue) -> None:
    import torch

    from lofiseg.losses import CompleteRegularizedLoss, DenseCRFLoss, SparseCRFLoss

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, 2, SIZE, SIZE, generator=generator).requires_grad_(True)
    image = torch.randn(BATCH, 3, SIZE, SIZE, generator=generator)
    if case.startswith("complete"):
        loss = CompleteRegularizedLoss()
    elif case.startswith("sparse"):
        loss = SparseCRFLoss()
    else:
        loss = DenseCRFLoss(factor=4)

    def call() -> None:
        logits.grad = None
        loss(logits, image).backward()

    # Warm up the kernels on a tiny input only: a full-size warm-up would leave its freed blocks in the
    # allocator (glibc raises its mmap threshold after a large free), hiding the next call's allocations.
    tiny = torch.randn(2, 2, 16, 16, requires_grad=True)
    loss(tiny, torch.randn(2, 3, 16, 16)).backward()
    baseline = _status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    exact = _reset_peak() and baseline is not None
    call()
    if exact:
        peak_mb = ((_status_kib("VmHWM") or 0) - (baseline or 0)) / 1024.0
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) / 1024.0
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    queue.put((statistics.median(times), min(times), peak_mb, exact))


def _measure(case: str, threads: int) -> tuple[float, float, float, bool]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_case, args=(case, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    rows = []
    for case in CASES:
        one = _measure(case, 1)
        two = _measure(case, 2)
        rows.append((case, one, two))
        print(rows[-1], flush=True)
    load = os.getloadavg()
    inputs_mb = BATCH * (2 + 3) * SIZE * SIZE * 4 / 2**20
    lines = [
        "# Regularized loss benchmark",
        "",
        f"Forward + backward on float32 logits ({BATCH}, 2, {SIZE}, {SIZE}) with an image "
        f"({BATCH}, 3, {SIZE}, {SIZE}) (inputs {inputs_mb:.1f} MB). Median / best of {REPEATS} calls, "
        "each case and thread count in a fresh process. Peak memory = rise of the peak RSS over the RSS "
        "just before the first full-size call (1 thread; kernels warmed up on a tiny input; VmHWM reset "
        "through /proc/self/clear_refs; 'approx.' marks the ru_maxrss fallback). Complete loss: sparse-CRF "
        "+ volumetric + positional, normal-stage weights (sigma 0.15, lambda_reg 100).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average at the "
        f"end {load[0]:.2f} / {load[1]:.2f} (other jobs share the CPUs, so times are upper bounds).",
        "",
        "| loss | ms, 1 thread (median / best) | ms, 2 threads (median / best) "
        "| peak memory of one call MB |",
        "|---|---|---|---|",
    ]
    for case, (median1, best1, peak1, exact1), (median2, best2, _, _) in rows:
        note = "" if exact1 else " (approx.)"
        lines.append(
            f"| {case} | {median1:.1f} / {best1:.1f} | {median2:.1f} / {best2:.1f} | {peak1:.1f}{note} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
