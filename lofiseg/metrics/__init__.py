"""Evaluation metrics: saliency (CAS Sec. 5.1), semantic IoU, BSDS region/contour metrics (CAS Tables 4, 6)
and class-agnostic segment metrics (Dille et al. Sec. 5).

Submodules load on first use (PEP 562): pysodmetrics pulls in OpenCV, which semantic or region evaluation
does not need, and scikit-learn (region evaluation needs it too, for the Rand index), which semantic does not.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "agnostic": (
        "AgnosticMeter",
        "SegmentOverlap",
        "agnostic_scores",
        "boundary_band",
        "boundary_dilation",
        "match_segments",
        "segment_overlap",
    ),
    "regions": (
        "BoundaryCounts",
        "RegionMeter",
        "as_label_map",
        "boundary_counts",
        "boundary_f_measure",
        "ground_truth_covering",
        "probabilistic_rand_index",
        "rand_index",
        "region_scores",
        "segment_boundaries",
        "variation_of_information",
    ),
    "saliency": (
        "SaliencyMeter",
        "fbeta_adaptive",
        "fbeta_curve",
        "fbeta_max",
        "fbeta_weighted",
        "mae",
        "s_measure",
        "saliency_scores",
    ),
    "semantic": ("ConfusionMeter", "confusion_matrix", "iou_from_confusion", "iou_report", "semantic_scores"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
