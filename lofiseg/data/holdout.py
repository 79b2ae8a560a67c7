"""The one deterministic hold-out rule: which training items lend themselves to validation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def hold_out(items: Iterable[T], fraction: float, key: Callable[[T], Any], *, at_least: int = 0,
             rounding: Literal["half_up", "half_even"] = "half_up") -> list[T]:
    """The first ``count`` of ``items`` in ``key`` order (make the key unique, e.g. (content hash, id), so the
    choice does not depend on the order the items come in).

    ``count`` is ``fraction * n`` rounded half up (``floor(fraction * n + 0.5)``: 2.5 -> 3) or, with
    ``rounding="half_even"``, as Python's ``round`` (2.5 -> 2), and at least ``at_least``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    ordered = sorted(items, key=key)
    scaled = fraction * len(ordered)
    count = math.floor(scaled + 0.5) if rounding == "half_up" else round(scaled)
    return ordered[:max(at_least, count)]
