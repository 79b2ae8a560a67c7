"""The records an evaluation scores: one split of a data set, ``test`` unless the caller names another."""

from __future__ import annotations

from lofiseg.data.format import SPLITS, Dataset, Record


def records_to_score(dataset: Dataset, split: str, name: str) -> list[Record]:
    """The records of ``split`` of data set ``name``; a ValueError naming the splits it has when it is empty
    (Pascal VOC has no test split: score its val)."""
    records = dataset.split(split)
    if not records:
        held = {s: n for s in SPLITS if (n := len(dataset.split(s)))}
        raise ValueError(f"{dataset.root}: data set {name!r} has no {split!r} split to score (it has {held}); "
                         f"choose the split with evaluate.splits.{name}")
    return records
