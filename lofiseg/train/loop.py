"""A plain training loop with per-epoch checkpoints that resume bit-for-bit after a kill.

Shuffling and augmentation draw from generators seeded by (seed, epoch), and the global RNG states are saved
with the model and optimiser at the end of every epoch, so a run killed at any point (even ``kill -9``) and
started again ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from lofiseg.atomic import atomic_file
from lofiseg.data.loading import Augment, TensorSplit, iterate_batches

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
    amp: bool = False  # mixed precision, cuda only
    meta: dict[str, Any] = field(default_factory=dict)  # stored with every checkpoint (e.g. tracking run id)
    history: list[dict[str, float]] = field(default_factory=list)
    start_epoch: int = 0

    def __post_init__(self) -> None:
        self.checkpoint_path = Path(self.checkpoint_path)
        self.model.to(self.device)
        self.use_amp = self.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

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
        save_checkpoint(self.checkpoint_path, {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "history": self.history, "meta": self.meta,
        })

    def train_epoch(self, batches: Iterable[dict[str, torch.Tensor]], epoch: int, desc: str) -> dict[str, float]:
        self.model.train()
        total, count, seen, started = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}", unit="batch", leave=False, file=sys.stderr)
        for batch in bar:
            batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast(self.device.type, enabled=self.use_amp):
                loss = self.step_fn(self.model, batch, epoch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {loss.item()} at epoch {epoch + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item()
            count += 1
            seen += int(batch["image"].shape[0])
            bar.set_postfix(loss=f"{total / count:.4f}")
        elapsed = time.perf_counter() - started
        return {"train_loss": total / max(count, 1), "images_per_s": seen / max(elapsed, 1e-9)}

    def fit(self, make_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]], epochs: int,
            on_epoch_end: EpochEndFn | None = None, desc: str = "train") -> list[dict[str, float]]:
        """Run epochs ``start_epoch .. epochs-1``; ``make_batches(epoch)`` gives that epoch's batches."""
        for epoch in tqdm(range(self.start_epoch, epochs), desc=desc, unit="epoch", file=sys.stderr,
                          initial=self.start_epoch, total=epochs):
            metrics = {"epoch": epoch, **self.train_epoch(make_batches(epoch), epoch, desc)}
            if on_epoch_end is not None:
                metrics.update(on_epoch_end(epoch, metrics))
            self.history.append(metrics)
            self._save(epoch)
        return self.history
