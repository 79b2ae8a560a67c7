"""What every training stage leaves in its output folder, and its MLflow copies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lofiseg.atomic import atomic_write_json
from lofiseg.models.bundle import save_bundle
from lofiseg.track.tracker import Tracker
from lofiseg.viz.figures import curves_figure, save_figure

TRAINING_FILES = ("info.json", "history.json", "curves.png")


def save_training_outputs(out: Path, model: torch.nn.Module, info: Mapping[str, Any],
                          history: Sequence[Mapping[str, float]], curve_keys: Sequence[str], title: str) -> None:
    """model.pt (the bundle: weights + info), history.json, info.json and curves.png in ``out``."""
    model.cpu()
    out.mkdir(parents=True, exist_ok=True)
    save_bundle(out / "model.pt", model, dict(info))
    atomic_write_json(out / "history.json", list(history))
    atomic_write_json(out / "info.json", dict(info))
    save_figure(curves_figure(history, curve_keys, title), out / "curves.png")


def log_training_outputs(tracker: Tracker, out: Path, *extra: str) -> None:
    """The files of :func:`save_training_outputs` (and ``extra`` ones) as artifacts of the run."""
    for name in (*TRAINING_FILES, *extra):
        tracker.log_artifact(out / name)
