"""DVC stage `audit@<rate>`: the CAS model of a noisy copy finds the train masks whose labels are permuted.

Beyond the papers (issue 16). Runs ``models/saliency/cas/<rate>`` (its saliency channel, at its training size)
on every train image of ``data/noisy/<rate>``, scores each given mask against it
(:mod:`lofiseg.infer.label_audit`), and writes the corrected copy ``data/audited/<rate>`` (manifest columns
``audit_flipped``, ``audit_score``), ``reports/audit/<rate>/`` (flags.csv, flags.md, grid.png) and
``metrics/audit/<rate>.json``: counts, and precision / recall / F1 of the flags where the manifest holds the
truth (``noise_flipped``). Logged to MLflow as run ``audit@<rate>`` of the evaluation experiment.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, load_params, rate_key
from lofiseg.data.audited import relabel, write_audited_copy
from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import Dataset
from lofiseg.data.loading import TensorSplit
from lofiseg.infer.label_audit import AuditResult, audit_labels, binary_probs
from lofiseg.infer.predict import predict_probs
from lofiseg.metrics.flags import flag_scores
from lofiseg.models.bundle import load_bundle
from lofiseg.viz.figures import markdown_table
from lofiseg.viz.images import colorize_labels, image_grid, save_png
from stages.cli import log, run, stage_parser, tracked_evaluation

BATCH_SIZE = 32
TRUTH = "noise_flipped"  # the noise stage's record of which images it flipped


def flags_grid(split: TensorSplit, saliency: np.ndarray, results: Sequence[AuditResult], count: int) -> np.ndarray:
    """The ``count`` most and ``count`` least confident flags: image, given mask, model output, corrected mask."""
    flagged = sorted((i for i, r in enumerate(results) if r.flagged), key=lambda i: -results[i].score)
    chosen = flagged[:count] + [i for i in flagged[-count:] if i not in flagged[:count]]
    if not chosen:
        return image_grid([[None] * 4], row_titles=["no flags"], col_titles=["image", "given", "model", "corrected"])
    rows = [[split.images[i].permute(1, 2, 0).numpy(), colorize_labels(split.masks[i].numpy()), saliency[i],
             colorize_labels(relabel(split.masks[i].numpy(), results[i].permutation))] for i in chosen]
    titles = [f"{split.ids[i]} {results[i].score:.2f}" for i in chosen]
    return image_grid(rows, row_titles=titles, col_titles=["image", "given", "model", "corrected"])


def flags_table(ids: Sequence[str], results: Sequence[AuditResult], truth: Sequence[bool] | None) -> list[list[str]]:
    """One row per flagged image, most confident first: id, score, relabelling (``a>b;...``), truly flipped."""
    order = sorted(range(len(ids)), key=lambda i: (-results[i].score, ids[i]))
    return [[ids[i], f"{results[i].score:.4f}", ";".join(f"{a}>{b}" for a, b in results[i].permutation.items()),
             *([str(int(truth[i]))] if truth is not None else [])] for i in order if results[i].flagged]


def audit(params: Params, rate: float, data_root: Path, model_dir: Path, out: Path, report: Path,
          metrics_path: Path) -> tuple[dict, list[Path]]:
    model, info = load_bundle(model_dir / "model.pt")
    data = Dataset(data_root)
    records = [r for r in data.split("train") if r.has_mask]
    split = cached_load_split(data, records, info["image_size"], desc="load train")
    saliency = predict_probs(model, split, BATCH_SIZE)[:, info["channel"]]
    results = audit_labels(binary_probs(saliency), split.masks, params.audit.min_score)
    changed = write_audited_copy(data_root, out, {i: (r.permutation, r.score)
                                                  for i, r in zip(split.ids, results, strict=True)})
    truth = [r.extra[TRUTH] == "1" for r in records] if TRUTH in data.extra_fields else None
    metrics: dict = {"noise_rate": rate, "images": len(results), "flagged": sum(r.flagged for r in results),
                     "relabelled": changed}
    if truth is not None:
        metrics |= {"truly_flipped": sum(truth), **flag_scores([r.flagged for r in results], truth)}
    atomic_write_json(metrics_path, metrics)

    header = ["id", "audit_score", "relabelling", *([TRUTH] if truth is not None else [])]
    rows = flags_table(split.ids, results, truth)
    table = io.StringIO()
    csv.writer(table, lineterminator="\n").writerows([header, *rows])
    summary = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    files = [metrics_path, atomic_write_text(report / "flags.csv", table.getvalue()),
             atomic_write_text(report / "flags.md", f"# Label audit of {data_root}\n\n{summary}\n\n"
                               f"{markdown_table(header, rows) if rows else 'No image flagged.'}\n"),
             save_png(report / "grid.png", flags_grid(split, saliency.numpy(), results, params.audit.grid_samples))]
    return metrics, files


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True, help="noise rate of --data, one of noise.rates")
    parser.add_argument("--data", type=Path, required=True, help="the noisy copy whose train masks are audited")
    parser.add_argument("--model", type=Path, required=True, help="folder of the CAS model trained on --data")
    parser.add_argument("--out", type=Path, required=True, help="output: the corrected data set")
    parser.add_argument("--report", type=Path, required=True, help="output folder: flag tables and grid")
    parser.add_argument("--metrics", type=Path, required=True, help="output metrics JSON")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if not any(abs(args.rate - r) < 1e-12 for r in params.noise.rates):
        raise SystemExit(f"error: --rate {args.rate} is not in noise.rates {params.noise.rates}")
    metrics = tracked_evaluation(
        params, f"audit@{rate_key(args.rate)}", [args.data, args.model], "audit", args.report,
        lambda: audit(params, args.rate, args.data, args.model, args.out, args.report, args.metrics))
    log.info("audit %s: %s", rate_key(args.rate), json.dumps(metrics))


if __name__ == "__main__":
    sys.exit(run(main))
