"""One hold-out rule reproduces the three it replaced: layouts' carve_val, web's carve_val_by_hash and the
DeepLab stage's 10% of train when a data set has no val split."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import pytest

from lofiseg.data.holdout import hold_out
from lofiseg.data.layouts import carve_val
from lofiseg.data.web import carve_val_by_hash


@dataclass(frozen=True)
class Item:
    id: str
    sha256: str
    split: str = "train"


def _items(n: int) -> list[Item]:
    return [Item(f"x{i:02d}", hashlib.sha256(str(i % 7).encode()).hexdigest()) for i in range(n)]  # hash ties


def _id_hash(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode()).hexdigest()


# the three rules as they were before hold_out (lofiseg 8849642), verbatim but for the names
def old_carve_val(ids: list[str], fraction: float) -> set[str]:
    n_val = math.floor(fraction * len(ids) + 0.5)
    return set(sorted(ids, key=lambda i: (_id_hash(i), i))[:n_val])


def old_carve_val_by_hash(items: list[Item], fraction: float) -> set[str]:
    train = sorted((i for i in items if i.split == "train"), key=lambda i: (i.sha256, i.id))
    return {i.id for i in train[: math.floor(fraction * len(train) + 0.5)]}


def old_deeplab_holdout(train: list[Item]) -> set[str]:
    ordered = sorted(train, key=lambda r: (r.sha256, r.id))
    return {r.id for r in ordered[:max(1, round(0.1 * len(train)))]}


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 10, 15, 20, 25, 35, 45])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.3, 0.5])
def test_hold_out_reproduces_the_three_old_rules(n, fraction):
    items = _items(n)
    ids = [i.id for i in items]
    assert carve_val(ids, fraction) == old_carve_val(ids, fraction)
    mixed = items + [Item(f"v{i}", "0" * 64, "val") for i in range(3)]  # val items never move
    assert carve_val_by_hash(mixed, fraction) == old_carve_val_by_hash(mixed, fraction)
    if n >= 2:  # the DeepLab stage holds out only from 2 train images up
        held = hold_out(items, 0.1, key=lambda r: (r.sha256, r.id), at_least=1, rounding="half_even")
        assert {r.id for r in held} == old_deeplab_holdout(items)


def test_rounding_differs_only_at_halves():
    items = _items(25)  # 0.1 * 25 = 2.5: half up -> 3, half to even (Python's round) -> 2
    key = lambda r: (r.sha256, r.id)  # noqa: E731
    assert len(hold_out(items, 0.1, key)) == 3
    assert len(hold_out(items, 0.1, key, rounding="half_even")) == 2
    assert len(hold_out(items[:3], 0.1, key)) == 0 and len(hold_out(items[:3], 0.1, key, at_least=1)) == 1
    assert hold_out(items, 0.1, key) == hold_out(list(reversed(items)), 0.1, key)  # input order does not matter
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        hold_out(items, 1.0, key)
