"""A plain training loop with per-epoch checkpoints that resume bit-for-bit after a kill.

Shuffling and augmentation draw from generators seeded by (seed, epoch), and the global RNG states are saved
with the model and optimiser at the end of every epoch, so a run killed at any point (even ``kill -9``) and
started again ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lofiseg.atomic import atomic_file
from lofiseg.data.loading import Augment, TensorSplit, batch_to_device, iterate_batches

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # params' amp values other than "off"
POSTFIX_SECONDS = 1.0  # the progress bar's running loss is read (a device sync) at most this often

StepFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], int], torch.Tensor]
EpochEndFn = Callable[[int, dict[str, float]], dict[str, float]]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda when present, else cpu; the ``LOFISEG_DEVICE`` env var overrides params."""
    name = os.environ.get("LOFISEG_DEVICE", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of params' ``amp`` (``bf16 | fp16 | off``) on ``device``; None for off.

    bf16 runs on CPU and CUDA. fp16 needs CUDA (its gradients need a GradScaler): refused elsewhere rather than
    silently trained in float32.
    """
    if amp == "off":
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be bf16, fp16 or off, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp 'fp16' needs a CUDA device (float16 autocast with a GradScaler); this run is on "
                         f"{device.type}: use amp 'bf16' or 'off'")
    return AMP_DTYPES[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def poly_lr(base_lr: float, epoch: int, epochs: int, power: float = 0.9) -> float:
    """DeepLab's "poly" learning-rate policy (Chen et al. 2018, Sec. 4.1), stepped per epoch:
    ``base_lr * (1 - epoch / epochs) ** power`` for epoch 0 .. epochs - 1, a function of the epoch only, so a
    resumed run continues the same schedule."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"poly_lr: epoch {epoch} outside 0 .. {epochs - 1}")
    return base_lr * (1.0 - epoch / epochs) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def epoch_batches(split: TensorSplit, batch_size: int, seed: int,
                  augment: Sequence[Augment] = ()) -> Callable[[int], Iterator[dict[str, torch.Tensor]]]:
    """The Trainer's ``batches(epoch)``: ``split`` shuffled and augmented with :func:`epoch_generator`, so an
    epoch's batches depend on (seed, epoch) only and a resumed run sees the same ones."""
    return lambda epoch: iterate_batches(split, batch_size, epoch_generator(seed, epoch), shuffle=True,
                                         augment=augment)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save through a temporary file and a rename: a kill mid-write leaves the previous checkpoint."""
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def fingerprint(*parts: object) -> str:
    """What a checkpoint was made from (params, seed, a digest of the data): a change means start over."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def matching_checkpoint(path: str | os.PathLike, stamp: str, remove: bool = True) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was made with fingerprint ``stamp``; for one made from other params or
    data, a warning and None, so training starts over (and with ``remove`` the file is deleted)."""
    previous = load_checkpoint(path)
    if previous is not None and previous.get("meta", {}).get("fingerprint") != stamp:
        logging.getLogger("lofiseg").warning("%s: made from other params or data; starting over", path)
        if remove:
            Path(path).unlink()
        return None
    return previous


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a checkpoint we cannot read must not be silently replaced by a fresh run
        raise RuntimeError(f"{path}: checkpoint is unreadable ({err}); delete it to start over") from err


@dataclass
class Trainer:
    """Fit ``model`` with ``step_fn`` (model, batch, epoch) -> loss, checkpointing to ``checkpoint_path``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: StepFn
    checkpoint_path: Path
    device: torch.device = torch.device("cpu")
    amp: str = "off"  # bf16 | fp16 (cuda only) | off: autocast dtype of the forward pass and loss
    channels_last: bool = False  # model and images in NHWC memory order (faster convolutions on GPUs)
    cudnn_benchmark: bool = False  # cuDNN picks the fastest algorithms for the (fixed) input size; not bit-exact
    meta: dict[str, Any] = field(default_factory=dict)  # stored with every checkpoint (e.g. tracking run id)
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0

    def __post_init__(self) -> None:
        self.checkpoint_path = Path(self.checkpoint_path)
        self.autocast = autocast_dtype(self.amp, self.device)
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)

    def resume(self) -> bool:
        """Load the checkpoint if there is one; returns whether training continues from it."""
        state = load_checkpoint(self.checkpoint_path)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"]) + 1
        self.history = list(state["history"])
        self.meta.update(state.get("meta", {}))
        return True

    def _save(self, epoch: int) -> None:
        """Checkpoint epoch ``epoch`` on a background thread: the state is copied now (training goes on
        changing the live tensors in place) and written while the next epoch trains. One write in flight at a
        time; a kill mid-write leaves the previous checkpoint (atomic rename), as a synchronous save does."""
        state = copy.deepcopy({
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "history": self.history, "meta": self.meta,
        })
        self.wait_for_checkpoint()
        if not hasattr(self, "_writer"):
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future | None = self._writer.submit(save_checkpoint, self.checkpoint_path, state)

    def wait_for_checkpoint(self) -> None:
        """Block until the checkpoint being written is on disk; raises the write's error, if any."""
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None:
            pending.result()

    def train_epoch(self, batches: Iterable[dict[str, torch.Tensor]], epoch: int, desc: str) -> dict[str, float]:
        """One epoch; the losses are summed on the device (float64: the same mean as summing ``loss.item()``)
        and read once at the end, so no step waits for the device. A non-finite loss stops the run at the end
        of its epoch, before that epoch's checkpoint."""
        self.model.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count, seen, started, shown = 0, 0, time.perf_counter(), time.monotonic()
        bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}", unit="batch", leave=False, file=sys.stderr)
        for batch in bar:
            batch = batch_to_device(batch, self.device, self.channels_last)
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                loss = self.step_fn(self.model, batch, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.detach()
            count += 1
            seen += int(batch["image"].shape[0])
            if time.monotonic() - shown >= POSTFIX_SECONDS:
                bar.set_postfix(loss=f"{float(total) / count:.4f}", refresh=False)
                shown = time.monotonic()
        mean = float(total) / max(count, 1)
        if not math.isfinite(mean):
            raise FloatingPointError(f"{desc}: loss is {mean} at epoch {epoch + 1}")
        elapsed = time.perf_counter() - started
        return {"train_loss": mean, "images_per_s": seen / max(elapsed, 1e-9)}

    def fit(self, make_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]], epochs: int,
            on_epoch_end: EpochEndFn | None = None, desc: str = "train") -> list[dict[str, float]]:
        """Run epochs ``start_epoch .. epochs-1``; ``make_batches(epoch)`` gives that epoch's batches."""
        try:
            for epoch in tqdm(range(self.start_epoch, epochs), desc=desc, unit="epoch", file=sys.stderr,
                              initial=self.start_epoch, total=epochs):
                metrics = {"epoch": epoch, **self.train_epoch(make_batches(epoch), epoch, desc)}
                if on_epoch_end is not None:
                    metrics.update(on_epoch_end(epoch, metrics))
                self.history.append(metrics)
                self._save(epoch)
        finally:
            self.wait_for_checkpoint()  # on return (or error) the last checkpoint is complete on disk
            if hasattr(self, "_writer"):
                self._writer.shutdown()
                del self._writer
        return self.history
