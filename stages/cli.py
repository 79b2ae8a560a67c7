"""What every stage script shares: argument parsing of the params path, the evaluate stages' MLflow run, and
the runner (:func:`lofiseg.cli.run`: a user error exits 2 with its message)."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from lofiseg.cli import USER_ERRORS, run
from lofiseg.config import Params
from lofiseg.provenance import standard_tags

__all__ = ["USER_ERRORS", "flatten_metrics", "log", "run", "stage_parser", "tracked_evaluation"]

log = logging.getLogger("lofiseg")


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """A metrics JSON as MLflow metrics: nested keys joined with dots, numbers only (names, lists, nulls skipped)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def tracked_evaluation(params: Params, stage: str, inputs: Sequence[Path], task: str, report: Path,
                       evaluate: Callable[[], tuple[dict, list[Path]]]) -> dict:
    """An evaluate stage's work inside its MLflow run (experiment ``<prefix>-evaluation``, run ``stage``): the
    metrics ``evaluate()`` returns, flattened under ``<task>.`` (finite numbers), and the files it wrote as
    artifacts under ``<task>/`` (a file in a subfolder of ``report`` keeps that subfolder)."""
    from lofiseg.track.tracker import Tracker  # only the evaluate stages use it: the others start without it

    tags = {**standard_tags(".", [str(p) for p in inputs]), "lofiseg.stage": stage}
    with Tracker(f"{params.tracking.experiment_prefix}-evaluation", stage, tags=tags,
                 enabled=params.tracking.enabled, required=params.tracking.required) as tracker:
        metrics, files = evaluate()
        flat = flatten_metrics(metrics, f"{task}.")
        tracker.log_metrics({k: v for k, v in flat.items() if math.isfinite(v)}, step=0)
        for file in files:
            sub = file.parent.relative_to(report) if file.parent.is_relative_to(report) else Path()
            tracker.log_artifact(file, (Path(task) / sub).as_posix())
    return metrics
