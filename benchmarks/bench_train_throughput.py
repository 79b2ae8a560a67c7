"""Training throughput of lofiseg's tracked training run against a bare PyTorch loop of the same steps.

Run: ``nice -n 5 .venv/bin/python -m benchmarks.bench_train_throughput``; writes
benchmarks/results/bench_train_throughput.md.

Each row trains the same model (params.yaml's section), on the same in-memory uint8 data (random images and
masks of the section's data set sizes, scaled down by ``--images``), with the same batch size, optimiser and
number of optimiser steps, two ways:

(a) a bare loop written here: slice a batch, convert it to float, forward, loss, backward, step; nothing else.
(b) :class:`lofiseg.train.run.TrainingRun` as the stage runs it: augmentation, progress bars, the stage's
    per-epoch validation, per-epoch checkpoints and MLflow logging to a temporary sqlite store; timed from
    opening the run to closing it (the output folder, written once per stage, is not timed).

(a) and (b) run interleaved, ``--repeats`` times each, and the table gives the medians: other processes load
the machine too (other jobs share its cores while this runs), and interleaving spreads that load over both.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lofiseg.config import Params, load_params
from lofiseg.data.augment import augment_settings, augmentations
from lofiseg.data.loading import TensorSplit, random_flip, to_float
from lofiseg.infer.predict import predict_probs, saliency_channel
from lofiseg.losses.regularized import StageParams
from lofiseg.metrics.saliency import SaliencyMeter
from lofiseg.models.factory import build_model
from lofiseg.train.distributed import DistContext
from lofiseg.train.loop import epoch_batches, epoch_generator
from lofiseg.train.optim import build_optimizer
from lofiseg.train.regularized_plan import EpochPlan, RegularizedTraining, loss_image
from lofiseg.train.run import RunIdentity, TrainingRun, periodic
from lofiseg.train.steps import build_step
from lofiseg.train.validation import semantic_eval, val_metrics

RESULTS = Path(__file__).parent / "results" / "bench_train_throughput.md"


@dataclass
class Case:
    """One row: how to build its model, data, stage step and validation, and its bare-loop step."""

    name: str
    section: str
    size: int
    train: int  # training images (positives for the single-class row)
    val: int
    classes: int


CASES = [
    Case("saliency unet 64 px (cas)", "train_saliency", 64, 64, 16, 2),
    Case("saliency unet 128 px (cas)", "train_saliency", 128, 32, 8, 2),
    Case("single-class regularized 64 px", "train_single", 64, 48, 0, 2),
    Case("deeplab 64 px (ce)", "train_deeplab", 64, 48, 12, 5),
]


def make_split(n: int, size: int, classes: int, seed: int, masks: bool = True) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, classes, (n, size, size), generator=g).to(torch.uint8) if masks else None
    return TensorSplit(images, labels, [f"{i:04d}" for i in range(n)], [()] * n)


def normal_plan(params: Params, size: int, epochs: int) -> list[EpochPlan]:
    """The single-class model's negative stage (normal stage + Eq. 7) for ``epochs`` epochs at ``size``."""
    s = params.train_single.schedule
    stage = StageParams("negative", 0, s.sigma_end, s.normal_lambda_reg, s.lambda_v, s.lambda_p, s.lambda_neg)
    return [EpochPlan(stage, size, True) for _ in range(epochs)]


class Setup:
    """Model, optimiser, data, the stage's step / batches / validation, and the bare loop's batches and loss."""

    def __init__(self, case: Case, params: Params, epochs: int) -> None:
        cfg = getattr(params, case.section)
        torch.manual_seed(params.seed)
        self.case, self.epochs, self.seed = case, epochs, params.seed
        self.batch_size = cfg.batch_size
        self.model = build_model(num_classes=case.classes, **cfg.model.model_dump())
        self.optimizer = build_optimizer(params=self.model.parameters(), lr=cfg.lr, **cfg.optimizer.model_dump())
        self.runner = cfg.runner()  # amp, channels_last, cudnn_benchmark as params.yaml sets them
        self.evaluate: Callable | None = None
        device = torch.device("cpu")
        if case.section == "train_single":
            positives = make_split(case.train, case.size, 2, 1, masks=False)
            negatives = make_split(case.train, case.size, 2, 2, masks=False)
            plan = RegularizedTraining(normal_plan(params, case.size, epochs), params.train_single.schedule
                                       .loss_schedule(), lambda s: positives, lambda s: negatives,
                                       cfg.batch_size, [random_flip] if cfg.flip else [])
            self.step = build_step("regularized", plan=plan.plan, loss=params.train_single.schedule.loss())
            self.batches = lambda epoch: plan.batches(epoch, epoch_generator(params.seed, epoch))
            self.evaluate = lambda epoch, metrics: {**self.step.epoch_metrics(epoch), **plan.epoch_info(epoch)}
            loss = params.train_single.schedule.loss()
            loss.set_stage(plan.plan[0].stage)
            flags = torch.cat([torch.zeros(cfg.batch_size, dtype=torch.bool), torch.ones(cfg.batch_size, dtype=torch.bool)])

            def bare(step: int) -> torch.Tensor:
                idx = torch.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size) % case.train
                images = to_float(torch.cat([positives.images[idx], negatives.images[idx]]))
                return loss.terms(self.model(images), loss_image(images), flags).total
            self.steps_per_epoch = -(-case.train // cfg.batch_size)
        else:
            train = make_split(case.train, case.size, case.classes, 1)
            val = make_split(case.val, case.size, case.classes, 2)
            if case.section == "train_saliency":
                self.step = build_step("cas", alpha=cfg.alpha)
                augment = [random_flip] if cfg.flip else []
                model = self.model

                def validate_all(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
                    probs = predict_probs(model, val, device=device)
                    channel = saliency_channel("cas", probs, val.masks)
                    scores = SaliencyMeter.of(probs[:, channel].numpy(), val.masks.numpy())
                    return {f"val_{k}": v for k, v in scores.items()} | {"val_channel": channel}
            else:
                self.step = build_step("ce")
                augment = augmentations(augment_settings(cfg.mosaic.pseudo, cfg.flip, cfg.blur, cfg.rescale))
                names = [f"c{i}" for i in range(case.classes)]
                model = self.model

                def validate_all(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
                    scores = val_metrics(semantic_eval(model, val, case.classes, cfg.batch_size, device,
                                                       DistContext()), names)
                    return {"val_miou": scores["miou"], "val_pixel_acc": scores["pixel_acc"]}
            self.evaluate = periodic(validate_all, cfg.validate_every, epochs)  # as the stages do
            self.batches = epoch_batches(train, cfg.batch_size, params.seed, augment)
            self.steps_per_epoch = -(-case.train // cfg.batch_size)
            step_loss = self.step.loss

            def bare(step: int) -> torch.Tensor:
                start = (step * cfg.batch_size) % case.train
                idx = torch.arange(start, min(start + cfg.batch_size, case.train))
                return step_loss(self.model(to_float(train.images[idx])), train.masks[idx].long())
        self.bare_loss = bare

    @property
    def images_per_step(self) -> int:
        return self.batch_size * (2 if self.case.section == "train_single" else 1)


def run_bare(setup: Setup) -> tuple[float, int]:
    """(seconds, images) of ``epochs * steps_per_epoch`` bare steps."""
    model, optimizer = setup.model, setup.optimizer
    model.train()
    steps = setup.epochs * setup.steps_per_epoch
    started = time.perf_counter()
    for step in range(steps):
        loss = setup.bare_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started, steps * setup.images_per_step


def run_lofiseg(setup: Setup, workdir: Path, index: int) -> tuple[float, int]:
    """(seconds, images) of the same steps through TrainingRun, validation, checkpoints and MLflow included."""
    identity = RunIdentity("bench-throughput", f"{setup.case.name}-{index}", fingerprint=(setup.case.name, index),
                           params={"case": setup.case.name}, tags={"lofiseg.stage": "bench"})
    started = time.perf_counter()
    with TrainingRun(identity, workdir / f"checkpoint-{index}.pt", tracking=True, tracking_required=True) as run:
        history = run.fit(setup.model, setup.optimizer, setup.step, setup.batches, setup.epochs, setup.evaluate,
                          device=torch.device("cpu"), **setup.runner, desc=setup.case.name)
    elapsed = time.perf_counter() - started
    assert len(history) == setup.epochs
    return elapsed, setup.epochs * setup.steps_per_epoch * setup.images_per_step


def measure(case: Case, params: Params, threads: int, epochs: int, repeats: int, workdir: Path,
            counter: list[int]) -> dict[str, float]:
    torch.set_num_threads(threads)
    bare, ours = [], []
    warm = Setup(case, params, 1)
    run_bare(warm)  # first-call costs (kernels, allocator) outside the timing
    for repeat in range(repeats):
        pair = [("a", run_bare), ("b", lambda s: run_lofiseg(s, workdir, counter[0]))]
        for kind, fn in pair if repeat % 2 == 0 else pair[::-1]:
            counter[0] += 1
            seconds, images = fn(Setup(case, params, epochs))
            (bare if kind == "a" else ours).append(images / seconds)
    a, b = statistics.median(bare), statistics.median(ours)
    return {"a": a, "b": b, "ratio": b / a, "a_all": bare, "b_all": ours}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="*", help="rows whose name contains one of these words")
    parser.add_argument("--label", default="", help="what code was measured (e.g. before / after)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cases = [c for c in CASES if not args.only or any(w in c.name for w in args.only)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_ARTIFACT_ROOT"] = f"{tmp}/artifacts"
        counter = [0]
        warm = Setup(CASES[0], params, 1)
        run_lofiseg(warm, Path(tmp), -1)  # the sqlite store's schema is created once, outside the timing
        for case in cases:
            for threads in args.threads:
                result = measure(case, params, threads, args.epochs, args.repeats, Path(tmp), counter)
                print(f"{case.name} threads={threads}: a {result['a']:.1f} b {result['b']:.1f} img/s "
                      f"ratio {result['ratio']:.2f}", file=sys.stderr, flush=True)
                rows.append((case, threads, result))
    write(rows, args, params)


def write(rows: list, args: argparse.Namespace, params: Params) -> None:
    load = os.getloadavg()
    lines = [
        f"# Training throughput: lofiseg's training run (b) against a bare loop (a){' - ' + args.label if args.label else ''}",
        "",
        f"`{' '.join(['python -m benchmarks.bench_train_throughput', *sys.argv[1:]])}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}. Other jobs (tests of other "
        "branches) shared the cores while this ran: (a) and (b) are interleaved and the table gives the median "
        f"of {args.repeats} runs of each, so the ratio is robust to that load; the absolute rates are not.",
        "",
        f"{args.epochs} epochs per run; params.yaml's model, batch size and optimiser of each section; random uint8 "
        "images and masks in memory. (b) includes augmentation, progress bars, the stage's per-epoch validation, "
        "per-epoch checkpoints and MLflow logging (sqlite), from opening the run to closing it.",
        "",
        "| row | threads | train / val images | batch | steps | (a) bare img/s | (b) lofiseg img/s | (b)/(a) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, threads, r in rows:
        batch = getattr(params, case.section).batch_size
        steps = args.epochs * -(-case.train // batch)
        lines.append(f"| {case.name} | {threads} | {case.train} / {case.val} | {batch} | {steps} | {r['a']:.1f} | "
                     f"{r['b']:.1f} | {r['ratio']:.2f} |")
    lines += ["", "Every run (images/s), a then b:", ""]
    for case, threads, r in rows:
        lines.append(f"- {case.name}, {threads} threads: a {', '.join(f'{v:.1f}' for v in r['a_all'])}; "
                     f"b {', '.join(f'{v:.1f}' for v in r['b_all'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
