"""CAS loss (Eq. 1) forward + backward on CPU: lofiseg's vectorised version against a per-region Python loop.

Run: ``.venv/bin/python -m benchmarks.bench_cas``; writes benchmarks/results/bench_cas.md. Batch 8 x 256^2,
M = 2 channels with 2 regions and M = 20 channels with 20 regions (labels spread over 0..254); the loop
reference is written here from Eq. 1 and must give the same value. Times are the median of a few calls after
one warm-up.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lofiseg.losses import cas_loss

BATCH, SIZE, ALPHA = 8, 256, 0.1
REPEATS_FAST, REPEATS_LOOP = 7, 3
RESULTS = Path(__file__).parent / "results" / "bench_cas.md"


def loop_cas(logits: torch.Tensor, mask: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """Eq. 1 one image and one region at a time (region indicator times the softmax, then sums)."""
    probs = torch.softmax(logits, dim=1)
    total = logits.new_zeros(())
    images = 0
    for b in range(probs.shape[0]):
        labels = [v for v in torch.unique(mask[b]).tolist() if v != 255]
        if not labels:
            continue
        uniformer = logits.new_zeros(())
        means = []
        for label in labels:
            indicator = (mask[b] == label).to(probs.dtype)
            size = indicator.sum()
            mean = (probs[b] * indicator).sum((1, 2)) / size
            uniformer = uniformer + (((probs[b] - mean[:, None, None]) ** 2).sum(0) * indicator).sum() / size
            means.append(mean)
        discriminator = logits.new_zeros(())
        for a, c in itertools.permutations(means, 2):
            discriminator = discriminator + ((a - c) ** 2).sum()
        total = total + alpha * uniformer - (1 - alpha) * discriminator
        images += 1
    return total / max(images, 1)


def region_mask(regions: int, seed: int) -> torch.Tensor:
    """(B, 256, 256) uint8 masks of 16 x 16 blocks with ``regions`` labels spread over 0..254, all present."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.linspace(0, 254, regions).round().to(torch.uint8)
    blocks = torch.randint(0, regions, (BATCH, SIZE // 16, SIZE // 16), generator=generator)
    blocks.view(BATCH, -1)[:, :regions] = torch.arange(regions)  # every region appears in every image
    return values[blocks].repeat_interleave(16, 1).repeat_interleave(16, 2)


def time_call(
    function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    mask: torch.Tensor,
    repeats: int,
) -> tuple[float, float]:
    """(median ms, value) of forward + backward."""
    value = function(logits, mask)
    value.backward()  # warm-up
    times = []
    for _ in range(repeats):
        logits.grad = None
        start = time.perf_counter()
        value = function(logits, mask)
        value.backward()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), float(value)


def main() -> None:
    rows = []
    for channels, regions in ((2, 2), (20, 20)):
        generator = torch.Generator().manual_seed(channels)
        logits = torch.randn(BATCH, channels, SIZE, SIZE, generator=generator).requires_grad_(True)
        mask = region_mask(regions, seed=regions)
        torch.set_num_threads(2)
        fast_ms_2, _ = time_call(cas_loss, logits, mask, REPEATS_FAST)
        torch.set_num_threads(1)
        fast_ms, fast_value = time_call(cas_loss, logits, mask, REPEATS_FAST)
        fast_grad = logits.grad.clone()
        loop_ms, loop_value = time_call(loop_cas, logits, mask, REPEATS_LOOP)
        grad_diff = float((fast_grad - logits.grad).abs().max())
        if abs(fast_value - loop_value) > 1e-4 * max(1.0, abs(loop_value)):
            raise AssertionError(f"values differ: lofiseg {fast_value} vs loop {loop_value}")
        rows.append((channels, regions, fast_ms, loop_ms, fast_ms_2, fast_value, loop_value, grad_diff))
        print(rows[-1], flush=True)
    load = os.getloadavg()
    lines = [
        "# CAS loss benchmark",
        "",
        f"Forward + backward of the CAS loss (Eq. 1, alpha {ALPHA}) on float32 logits of shape "
        f"({BATCH}, M, {SIZE}, {SIZE}), CPU, torch {torch.__version__}. The comparison runs on 1 thread "
        "(with other jobs on the 2 CPUs, a second torch thread mostly waits); lofiseg on 2 threads is listed "
        f"too. Masks: 16 x 16 blocks, region labels spread over 0..254. Median of {REPEATS_FAST} (lofiseg) / "
        f"{REPEATS_LOOP} (loop) calls after one warm-up. The loop reference visits each image and each "
        "region with a region indicator (O(regions x pixels)); lofiseg makes one scatter/gather pass "
        "(O(pixels)).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average at the "
        f"end {load[0]:.2f} / {load[1]:.2f} (other jobs share the CPUs, so times are upper bounds).",
        "",
        "| M | regions | lofiseg ms | loop ms | speed-up | lofiseg ms, 2 threads | loss (lofiseg) "
        "| loss (loop) | max abs grad diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for channels, regions, fast_ms, loop_ms, fast_ms_2, fast_value, loop_value, grad_diff in rows:
        lines.append(
            f"| {channels} | {regions} | {fast_ms:.1f} | {loop_ms:.1f} | {loop_ms / fast_ms:.1f}x "
            f"| {fast_ms_2:.1f} | {fast_value:.6f} | {loop_value:.6f} | {grad_diff:.1e} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
