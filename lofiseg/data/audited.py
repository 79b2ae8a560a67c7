"""The corrected copy of an audited data set: flagged train masks relabelled, the verdicts in the manifest.

``audit_flipped`` (0|1) and ``audit_score`` (the audit's confidence, 4 decimals) are set on every audited
train image; val and test rows, and train images the audit did not see, get empty values.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lofiseg.data.format import Dataset, DatasetWriter

AUDIT_FIELDS = ("audit_flipped", "audit_score")  # manifest columns


def relabel(mask: np.ndarray, permutation: Mapping[int, int]) -> np.ndarray:
    """``mask`` with each given label mapped by ``permutation`` (other labels and 255 unchanged)."""
    lut = np.arange(256, dtype=np.uint8)
    for given, corrected in permutation.items():
        lut[given] = corrected
    return lut[mask]


def write_audited_copy(source: Path, out: Path, verdicts: Mapping[str, tuple[Mapping[int, int], float]]) -> int:
    """Write ``out``: ``source`` with each audited id's mask relabelled by its permutation (``{}``: kept) and
    its score recorded; returns how many masks were relabelled. Images are copied byte for byte."""
    src = Dataset(source)
    unknown = sorted(set(verdicts) - {r.id for r in src})
    if unknown:
        raise ValueError(f"{source}: audited ids {unknown[:5]} are not in the data set")
    extra_fields = tuple(f for f in src.extra_fields if f not in AUDIT_FIELDS) + AUDIT_FIELDS
    changed = 0
    with DatasetWriter(out, extra_fields=extra_fields) as writer:
        for record in tqdm(src, desc=f"write {out.name}", unit="img", file=sys.stderr):
            mask = src.mask(record) if record.has_mask else None
            extra = {k: v for k, v in record.extra.items() if k in extra_fields} | dict.fromkeys(AUDIT_FIELDS, "")
            if record.id in verdicts and mask is not None:
                permutation, score = verdicts[record.id]
                if permutation:
                    mask = relabel(mask, permutation)
                    changed += 1
                extra.update(audit_flipped=str(int(bool(permutation))), audit_score=f"{score:.4f}")
            writer.copy(src, record, mask, extra)
    return changed
