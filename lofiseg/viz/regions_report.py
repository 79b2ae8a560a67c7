"""The region evaluation's report tables: the CAS paper's Table 6 and Dille et al.'s Table 2 layouts."""

from __future__ import annotations

from collections.abc import Mapping

from lofiseg.viz.figures import markdown_table


def contour_region_table(scores: Mapping[str, Mapping[str, float]]) -> str:
    """CAS paper Table 6 layout: contour F and region metrics, ODS and OIS, one row per method (OIS: the
    ``<metric>_ois`` key; without it one segmentation per image, so ODS = OIS)."""
    header = ["method", "F-meas. ODS", "F-meas. OIS", "GT-cov. ODS", "GT-cov. OIS", "Rand. Index ODS",
              "Rand. Index OIS", "Var. Info. ODS", "Var. Info. OIS"]
    rows = []
    for method, s in scores.items():
        cells = [s[key] for name in ("boundary_f", "covering", "rand_index", "vi")
                 for key in (name, name + "_ois" if name + "_ois" in s else name)]
        rows.append([method] + [f"{v:.2f}" for v in cells])
    return markdown_table(header, rows)


def segment_table(scores: Mapping[str, Mapping[str, float]]) -> str:
    """Dille et al. Table 2 layout: mIoU, boundary IoU, recall and recall gain over the lowest-recall method."""
    lowest = min(s["recall50"] for s in scores.values())
    rows = []
    for method, s in scores.items():
        gain = 100.0 * (s["recall50"] - lowest) / lowest if lowest > 0 else float("nan")
        rows.append([method, f"{s['miou_matched']:.3f}", f"{s['boundary_iou']:.3f}", f"{s['recall50']:.3f}",
                     f"{gain:.0f}"])
    return markdown_table(["method", "mIoU", "B. IoU", "Recall", "Delta %"], rows)
