"""What every stage script shares: argument parsing of the params path, metrics for MLflow, and the runner
(:func:`lofiseg.cli.run`: a user error exits 2 with its message)."""

from __future__ import annotations

import argparse
import logging

from lofiseg.cli import USER_ERRORS, run

__all__ = ["USER_ERRORS", "flatten_metrics", "log", "run", "stage_parser"]

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
