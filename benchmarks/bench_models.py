"""Training-step and inference throughput of the CPU default model and of Unet + frozen EfficientNet-Lite0.

Run: ``.venv/bin/python -m benchmarks.bench_models``; writes benchmarks/results/bench_models.md.
A training step is forward + 2-channel cross-entropy + backward + Adam step on random images in [0, 1].
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lofiseg.models.factory import build_model

RESULTS = Path(__file__).parent / "results" / "bench_models.md"
CASES = [
    # name, build_model kwargs, image size, batch, timed steps
    ("tiny_unet width 16 (CPU default)", {"arch": "tiny_unet", "width": 16}, 64, 8, 20),
    (
        "unet + tu-tf_efficientnet_lite0, lite0-imagenet weights, frozen encoder",
        {"arch": "unet", "encoder": "tu-tf_efficientnet_lite0", "encoder_weights": "lite0-imagenet",
         "freeze_encoder": True},
        128,
        8,
        10,
    ),
]


def _bench(kwargs: dict, size: int, batch: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(num_classes=2, **kwargs)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=1e-3)
    images = torch.rand(batch, 3, size, size)
    targets = torch.randint(0, 2, (batch, size, size))

    def train_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimiser.step()

    model.train()
    for _ in range(2):
        train_step()
    train_times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step()
        train_times.append(time.perf_counter() - start)

    model.eval()
    eval_times = []
    with torch.inference_mode():
        model(images)
        for _ in range(steps):
            start = time.perf_counter()
            model(images)
            eval_times.append(time.perf_counter() - start)
    return {
        "params_total": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_trainable": sum(p.numel() for p in trainable) / 1e6,
        "train_ips": batch / statistics.median(train_times),
        "train_ms": 1000 * statistics.median(train_times),
        "eval_ips": batch / statistics.median(eval_times),
    }


def main() -> None:
    rows = []
    for name, kwargs, size, batch, steps in CASES:
        rows.append((name, size, batch, _bench(kwargs, size, batch, steps)))
    load = os.getloadavg()
    lines = [
        "# Model throughput benchmark (CPU)",
        "",
        "Training step = forward + cross-entropy (2 channels) + backward + Adam step; inference = forward under "
        "torch.inference_mode in eval mode. Median over the timed steps after 2 warm-up steps.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, load average during the run {load[0]:.2f} / {load[1]:.2f} "
        "(other jobs share the CPUs, so throughputs are lower bounds).",
        "",
        "| model | input | batch | params (M) total / trainable | train step ms | train images/s | "
        "inference images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, batch, r in rows:
        lines.append(
            f"| {name} | {size}x{size} | {batch} | {r['params_total']:.2f} / {r['params_trainable']:.2f} | "
            f"{r['train_ms']:.0f} | {r['train_ips']:.1f} | {r['eval_ips']:.1f} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
