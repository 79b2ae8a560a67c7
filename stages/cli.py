"""What every stage script shares: argument parsing of the params path and error reporting."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from lofiseg.config import ParamsError
from lofiseg.data.archives import ArchiveError
from lofiseg.data.format import DatasetFormatError
from lofiseg.data.sources import SourceError
from lofiseg.track.registry import RegistryError
from lofiseg.track.store import TrackingUnavailable

log = logging.getLogger("lofiseg")

# Errors a user can fix from the message alone: reported in one block, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError, DatasetFormatError, SourceError, ArchiveError, TrackingUnavailable, RegistryError,
    FileNotFoundError,
)


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


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's main; a user error prints its message and exits 2 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
