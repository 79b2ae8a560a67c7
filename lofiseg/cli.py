"""Running a command-line main: a user error prints ``error: <message>`` and exits 2 instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from lofiseg.config import ParamsError
from lofiseg.data.archives import ArchiveError
from lofiseg.data.format import DatasetFormatError
from lofiseg.data.sources import SourceError
from lofiseg.track.registry import RegistryError
from lofiseg.track.store import TrackingUnavailable

# Errors a user can fix from the message alone: reported in one block, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamsError, DatasetFormatError, SourceError, ArchiveError, TrackingUnavailable, RegistryError,
    FileNotFoundError,
)


def run(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a stage's or command's main; a user error prints its message and exits 2 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
