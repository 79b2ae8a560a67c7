"""How well a set of per-image flags (e.g. the label audit's) finds the truly corrupted images.

Precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean. An empty denominator counts as
1.0 (sklearn's ``zero_division=1``): flagging nothing makes no false flag, and with nothing to find nothing is
missed, so a clean data set audited without flags scores 1.
"""

from __future__ import annotations

from collections.abc import Sequence


def flag_scores(flagged: Sequence[bool], truth: Sequence[bool]) -> dict[str, float]:
    """Counts (tp, fp, fn, tn) and precision, recall, F1 of ``flagged`` against ``truth`` (same order)."""
    if len(flagged) != len(truth):
        raise ValueError(f"flagged has {len(flagged)} images, truth {len(truth)}: they must match")
    tp = sum(bool(f) and bool(t) for f, t in zip(flagged, truth, strict=True))
    fp = sum(bool(f) and not t for f, t in zip(flagged, truth, strict=True))
    fn = sum(not f and bool(t) for f, t in zip(flagged, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": len(truth) - tp - fp - fn,
            "precision": precision, "recall": recall, "f1": f1}
