"""One tracked, resumable training run: what every training stage does around its network and loss.

:class:`TrainingRun` opens the run: it checks the checkpoint against the run's fingerprint (params, seed, a
digest of the data; a mismatch starts over), resumes the MLflow run the checkpoint names (else starts one and
logs the params), then :meth:`TrainingRun.fit` trains with per-epoch checkpoints (:class:`~lofiseg.train.loop.
Trainer`: a run killed at any point resumes to the same weights) and logs every epoch's numbers, and
:meth:`TrainingRun.write_outputs` writes the output folder (model.pt bundle, history.json, info.json,
curves.png, extra JSON files and pictures), their MLflow copies and the logged model. On a clean exit the
checkpoint is deleted: the model is in the output folder, nothing is left to resume.

The output folder is a DVC output and holds nothing volatile: the same inputs give the same bytes. The MLflow
run id is not in it (the run is tagged with model.pt's sha256 instead: :func:`lofiseg.track.runs.bundle_run`)
and timings (``images_per_s``) go to MLflow only.

Under torchrun (``ctx``, see :mod:`lofiseg.train.distributed`) every rank trains on its slice of each global
batch and rank 0 alone writes checkpoints, outputs and MLflow.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lofiseg.atomic import atomic_dir, atomic_write_json
from lofiseg.data.format import sha256_file
from lofiseg.models.bundle import load_bundle, save_bundle
from lofiseg.provenance import standard_tags
from lofiseg.track.runs import TAG_BUNDLE_SHA256
from lofiseg.track.tracker import Tracker
from lofiseg.train.distributed import (
    DistContext,
    DistributedTrainer,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    shard_batches,
    wrap_model,
)
from lofiseg.train.loop import StepFn, fingerprint, matching_checkpoint, set_lr
from lofiseg.viz.figures import curves_figure, save_figure
from lofiseg.viz.images import save_png

log = logging.getLogger("lofiseg")

TRAINING_FILES = ("info.json", "history.json", "curves.png")
TIMINGS = ("images_per_s",)  # history numbers that differ between two runs of the same inputs: MLflow only
Batches = Callable[[int], Iterable[dict[str, torch.Tensor]]]
EvaluateFn = Callable[[int, dict[str, float]], dict[str, Any]]


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is: its MLflow experiment and run name, what it is made
    from (``fingerprint``: a checkpoint made from anything else is not resumed), the params logged when it
    starts, its tags, and the DVC-tracked ``inputs`` named in its provenance tags."""

    experiment: str
    name: str
    fingerprint: tuple[Any, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)
    inputs: Sequence[str] = ()


def periodic(evaluate: EvaluateFn, every: int, epochs: int) -> EvaluateFn:
    """``evaluate`` after every ``every``-th epoch and after the last one (the model the stage writes); ``{}``
    after the others: validation at 1 / ``every`` of its cost, the curves with a point every ``every`` epochs."""
    if every < 1:
        raise ValueError(f"validate_every must be >= 1, got {every}")
    return lambda epoch, metrics: (evaluate(epoch, metrics) if (epoch + 1) % every == 0 or epoch == epochs - 1
                                   else {})


def history_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """history.json's rows: every row with every key (null where an epoch has no value, e.g. the epochs
    ``validate_every`` skips: DVC's plots refuse rows of different keys), the :data:`TIMINGS` left out."""
    keys = list(dict.fromkeys(k for epoch in history for k in epoch if k not in TIMINGS))
    return [{k: epoch.get(k) for k in keys} for epoch in history]


def write_json_outputs(out: Path, files: Mapping[str, Any]) -> None:
    """An output folder of JSON files only (a stage with nothing to train says why), swapped in as a whole."""
    with atomic_dir(out) as tmp:
        for name, value in files.items():
            atomic_write_json(tmp / name, value)


class TrainingRun:
    """``with TrainingRun(identity, checkpoint) as run: history = run.fit(...); run.write_outputs(...)``.

    ``checkpoint``: the file the run checkpoints to every epoch and resumes from.
    ``tracking`` / ``tracking_required``: see :class:`~lofiseg.track.tracker.Tracker`. ``ctx``: the torchrun
    job the run is part of; given (even of one process), every global batch is sharded across its ranks with
    loss weights (:func:`~lofiseg.train.distributed.shard_batches`, which also skips a batch of fewer than 2
    samples per rank), the model is wrapped in DDP after resuming and the epoch's training numbers are reduced
    over the ranks.
    """

    def __init__(self, identity: RunIdentity, checkpoint: Path, *, tracking: bool = True,
                 tracking_required: bool = True, ctx: DistContext | None = None) -> None:
        self.identity = identity
        self.checkpoint = Path(checkpoint)
        self.stamp = fingerprint(*identity.fingerprint)
        self.tracking, self.tracking_required = tracking, tracking_required
        self.sharded = ctx is not None
        self.ctx = ctx or DistContext()
        self.history: list[dict[str, Any]] = []
        self.epochs = 0
        self._stack = contextlib.ExitStack()

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id

    def __enter__(self) -> TrainingRun:
        previous = matching_checkpoint(self.checkpoint, self.stamp, remove=False)
        barrier(self.ctx)  # every rank has read the checkpoint before rank 0 may delete it
        if previous is None and self.is_main:
            self.checkpoint.unlink(missing_ok=True)  # made from other params or data
        barrier(self.ctx)
        run_id = previous["meta"].get("run_id") if previous else None
        tags = {**standard_tags(".", list(self.identity.inputs)), **self.identity.tags}
        self.tracker = self._stack.enter_context(Tracker(
            self.identity.experiment, self.identity.name, run_id=run_id, tags=tags,
            enabled=self.tracking and self.is_main, required=self.tracking_required))
        if run_id is None:
            self.tracker.log_params(dict(self.identity.params))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)  # the MLflow run ends FINISHED, FAILED or KILLED
        if exc[0] is None:
            barrier(self.ctx)
            if self.is_main:
                self.checkpoint.unlink(missing_ok=True)  # the model is in the outputs now; nothing to resume

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """The numbers among ``metrics`` (not ``epoch``: it is the step) to MLflow at ``step``."""
        self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch" and not isinstance(v, bool)
                                  and isinstance(v, int | float)}, step=step)

    def fit(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: StepFn, batches: Batches,
            epochs: int, evaluate: EvaluateFn | None = None, *, device: torch.device, amp: str = "off",
            channels_last: bool = False, cudnn_benchmark: bool = False, lr: Callable[[int], float] | None = None,
            desc: str | None = None) -> list[dict[str, Any]]:
        """Train ``model`` with ``step(net, batch, epoch) -> loss`` on ``batches(epoch)`` for ``epochs`` epochs,
        resuming from the checkpoint; after each epoch ``evaluate(epoch, metrics)`` adds its values to the
        history (and MLflow). ``lr(epoch)``: the learning rate of each epoch (recorded as ``lr``); None keeps
        the optimiser's. ``amp``, ``channels_last``, ``cudnn_benchmark``: see :class:`~lofiseg.train.loop.
        Trainer`. Returns the history, one dict per epoch."""
        ctx = self.ctx
        net: list[torch.nn.Module] = [model]  # the DDP wrapper once resumed: it shares the model's parameters

        def train_step(_model: torch.nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
            if lr is not None:
                set_lr(optimizer, lr(epoch))
            loss = step(net[0], batch, epoch)
            # the slice's mean loss times W n_r / N: DDP's gradient average is the global batch's (distributed.py)
            return loss * batch["loss_weight"] if "loss_weight" in batch else loss

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
            extra: dict[str, Any] = {}
            if self.sharded:
                broadcast_buffers(model, ctx)  # BatchNorm statistics drift per rank; evaluate rank 0's model
                local = torch.tensor([metrics["train_loss"], metrics["images_per_s"]], dtype=torch.float64)
                summed = all_reduce_sum(local.to(device), ctx).cpu()
                extra |= {"train_loss": float(summed[0]) / ctx.world_size, "images_per_s": float(summed[1])}
            if lr is not None:
                extra["lr"] = lr(epoch)
            if evaluate is not None:
                extra |= evaluate(epoch, {**metrics, **extra})
            self.log_metrics({**metrics, **extra}, step=epoch)
            return extra

        trainer = DistributedTrainer(model, optimizer, train_step, self.checkpoint, device=device, amp=amp,
                                     channels_last=channels_last, cudnn_benchmark=cudnn_benchmark, meta={"fingerprint": self.stamp, "run_id": self.run_id}, ctx=ctx)
        if trainer.resume():
            log.info("resuming %s from epoch %d", self.identity.name, trainer.start_epoch + 1)
        if self.sharded:
            net[0] = wrap_model(model, ctx, device)  # after resume: DDP starts from rank 0's (= everyone's) weights
            make_batches: Batches = lambda epoch: shard_batches(batches(epoch), ctx)  # noqa: E731
        else:
            make_batches = batches
        self.history = trainer.fit(make_batches, epochs, on_epoch_end, desc=desc or self.identity.name)
        self.epochs = epochs
        if self.sharded:
            broadcast_buffers(model, ctx)
            barrier(ctx)
        return self.history

    def write_outputs(self, out: Path, model: torch.nn.Module, info: Mapping[str, Any], curves: Sequence[str],
                      title: str, *, example: torch.Tensor, files: Mapping[str, Any] | None = None,
                      pictures: Mapping[str, np.ndarray] | None = None, final_val: Mapping[str, float] | None = None,
                      tags: Mapping[str, Any] | None = None,
                      serve: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> None:
        """Rank 0 (others: nothing): ``out`` swapped in as a whole with model.pt (the bundle: weights +
        ``info``), history.json, info.json, curves.png (the ``curves`` of the history), ``files`` (name ->
        JSON value) and ``pictures`` (name -> PNG); then in MLflow ``tags``, ``final_val`` as
        ``final_val_<key>`` at the last step, the files, and the model as served: the bundle reloaded (plain
        BatchNorm even when trained with SyncBatchNorm) and wrapped by ``serve``, with ``example`` (uint8
        images) for its signature. history.json leaves out the :data:`TIMINGS`; the run is tagged with
        model.pt's sha256 (:data:`~lofiseg.track.runs.TAG_BUNDLE_SHA256`)."""
        if not self.is_main:
            return
        files, pictures = dict(files or {}), dict(pictures or {})
        model.cpu()
        with atomic_dir(out) as tmp:
            save_bundle(tmp / "model.pt", model, dict(info))
            atomic_write_json(tmp / "history.json", history_rows(self.history))
            atomic_write_json(tmp / "info.json", dict(info))
            save_figure(curves_figure(self.history, curves, title), tmp / "curves.png")
            for name, value in files.items():
                atomic_write_json(tmp / name, value)
            for name, picture in pictures.items():
                save_png(tmp / name, picture)
        self.tracker.set_tags({**(tags or {}), TAG_BUNDLE_SHA256: sha256_file(out / "model.pt")})
        if final_val:
            self.tracker.log_metrics({f"final_val_{k}": v for k, v in final_val.items()}, step=self.epochs)
        for name in (*TRAINING_FILES, *files, *pictures):
            self.tracker.log_artifact(out / name)
        served, _ = load_bundle(out / "model.pt")
        self.tracker.log_model((serve(served) if serve else served).eval(), "model",
                               example_input=example.float().div(255).numpy())
