"""Runs side by side: the params that differ, the metrics with the best in bold, bars and overlaid curves.

Pure: the input is a list of runs as plain dicts, ``{"run_id", "name", "params", "metrics", "curves"}``
(``curves``: metric -> [(step, value), ...], optional), whatever they came from (MLflow runs, git revisions,
DVC experiments); the output is markdown, a self-contained HTML page (images embedded as base64) and PNGs.

Which value is best: LOWER for a metric whose name has a word (split at any non-letter) equal to ``mae`` or
``vi`` (variation of information) or containing ``loss``, e.g. ``train_loss``, ``saliency.cas.0.5.mae``,
``regions.vi``; NEITHER for a setting logged as a metric so its schedule is visible (a word ``sigma``, ``lambda``,
``lr``, ``epoch`` or ``size``: Eq. 8's sigma, the loss weights, ``image_size``); HIGHER for every other metric
(F-beta, IoU, accuracy...). Short words match whole words only, so ``device`` or ``video`` are not "vi". A best
value is bolded only where at least two runs have the metric; ties are all bolded; settings are never ranked.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofiseg.atomic import atomic_dir, atomic_write_text
from lofiseg.viz.figures import lines_figure, markdown_table, plt, save_figure

MISSING = "—"
LOWER_WORDS = ("mae", "vi", "degenerate")
LOWER_SUBSTRINGS = ("loss",)
SETTING_WORDS = ("sigma", "lambda", "lr", "epoch", "size")


def lower_is_better(metric: str) -> bool:
    """True for losses, MAE and VI (see the module docstring); False: higher is better."""
    words = [w for w in re.split(r"[^a-z]+", metric.lower()) if w]
    return any(w in LOWER_WORDS for w in words) or any(s in w for w in words for s in LOWER_SUBSTRINGS)


def is_setting(metric: str) -> bool:
    """A knob logged as a metric (sigma, lambda_reg, image_size...): shown, never ranked."""
    return any(w in SETTING_WORDS for w in re.split(r"[^a-z]+", metric.lower()))


def arrow(metric: str) -> str:
    return "" if is_setting(metric) else " ↓" if lower_is_better(metric) else " ↑"


def direction_text(metric: str) -> str:
    return metric if is_setting(metric) else f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)"


def check_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate the run dicts; returns copies with ``curves`` defaulted to {}."""
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or not runs:
        raise ValueError(f"runs: expected a non-empty list of run dicts, got {runs!r:.200}")
    checked = []
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise TypeError(f"runs[{i}]: expected a dict, got {type(run).__name__}")
        missing = [k for k in ("run_id", "name", "params", "metrics") if k not in run]
        if missing:
            raise ValueError(f"runs[{i}]: missing key(s) {missing}; a run needs run_id, name, params, metrics")
        for key in ("params", "metrics", "curves"):
            if not isinstance(run.get(key, {}), Mapping):
                raise TypeError(f"runs[{i}][{key!r}]: expected a mapping, got {type(run[key]).__name__}")
        for key, value in run["metrics"].items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"runs[{i}]['metrics'][{key!r}]: expected a number, got {value!r}")
        checked.append({**run, "curves": dict(run.get("curves") or {})})
    return checked


def run_labels(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The runs' names, with the first 8 characters of the id added where a name is not unique."""
    names = [str(r["name"]) for r in runs]
    return [f"{n} ({str(r['run_id'])[:8]})" if names.count(n) > 1 else n for n, r in zip(names, runs, strict=True)]


@dataclass
class Table:
    """Cells as text; ``bold`` holds the (row, column) positions to emphasise."""

    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)

    def markdown(self) -> str:
        rows = [[f"**{cell}**" if (i, j) in self.bold else cell for j, cell in enumerate(row)]
                for i, row in enumerate(self.rows)]
        return markdown_table([_md_escape(h) for h in self.header], [[_md_escape(c) for c in r] for r in rows])

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td><b>{html.escape(c)}</b></td>" if (i, j) in self.bold else
                             f"<td>{html.escape(c)}</td>" for j, c in enumerate(row)) + "</tr>"
            for i, row in enumerate(self.rows))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def differing_params(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sorted param names whose value is not the same in every run (a param missing from a run differs)."""
    runs = check_runs(runs)
    keys = sorted({k for r in runs for k in r["params"]})
    return [k for k in keys if len({(k in r["params"], str(r["params"].get(k))) for r in runs}) > 1]


def params_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    """One row per run, one column per param that differs (MISSING where a run lacks it)."""
    runs = check_runs(runs)
    keys = differing_params(runs)
    rows = [[label] + [str(r["params"][k]) if k in r["params"] else MISSING for k in keys]
            for label, r in zip(run_labels(runs), runs, strict=True)]
    return Table(["run"] + keys, rows)


def format_value(value: float) -> str:
    """4 significant digits (0.81234 -> 0.8123, 12345.6 -> 1.235e+04)."""
    return f"{value:.4g}"


def best_values(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """metric -> its best finite value, for the metrics at least two runs have."""
    runs = check_runs(runs)
    best = {}
    for key in sorted({k for r in runs for k in r["metrics"]}):
        values = [float(r["metrics"][key]) for r in runs if key in r["metrics"]]
        finite = [v for v in values if math.isfinite(v)]
        if len(values) >= 2 and finite and not is_setting(key):
            best[key] = min(finite) if lower_is_better(key) else max(finite)
    return best


def metrics_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    """One row per run, one column per metric (sorted); the best value of each column in bold."""
    runs = check_runs(runs)
    keys = sorted({k for r in runs for k in r["metrics"]})
    best = best_values(runs)
    table = Table(["run"] + [f"{k}{arrow(k)}" for k in keys], [])
    for i, (label, run) in enumerate(zip(run_labels(runs), runs, strict=True)):
        row = [label]
        for j, key in enumerate(keys, start=1):
            value = run["metrics"].get(key)
            row.append(MISSING if value is None else format_value(float(value)))
            if value is not None and key in best and float(value) == best[key]:
                table.bold.add((i, j))
        table.rows.append(row)
    return table


# --- figures ------------------------------------------------------------------------------------------------

def bars_figure(runs: Sequence[Mapping[str, Any]], max_panels: int = 24) -> Any | None:
    """One bar panel per metric (the first ``max_panels``, sorted), a bar per run, the best bar darker;
    None when no run has a metric."""
    runs = check_runs(runs)
    keys = sorted({k for r in runs for k in r["metrics"]})[:max_panels]
    if not keys:
        return None
    labels, best = run_labels(runs), best_values(runs)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 0.35 * len(runs) * rows + 1.4 * rows),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        present = [(label, float(r["metrics"][key])) for label, r in zip(labels, runs, strict=True)
                   if key in r["metrics"]]
        colors = ["#1f4e79" if key in best and v == best[key] else "#9dc3e6" for _, v in present]
        ax.barh([p[0] for p in present], [p[1] for p in present], color=colors)
        ax.invert_yaxis()
        ax.set_title(direction_text(key), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def curve_figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """metric -> a figure with that metric's curve (value per step) of every run that has one, overlaid."""
    runs = check_runs(runs)
    labels = run_labels(runs)
    figures = {}
    for key in sorted({k for r in runs for k in r["curves"]}):
        series = {label: [(float(s), float(v)) for s, v in r["curves"][key]]
                  for label, r in zip(labels, runs, strict=True) if r["curves"].get(key)}
        figures[key] = lines_figure(series, "step (epoch)", key, direction_text(key))
    return figures


# --- the report ---------------------------------------------------------------------------------------------

@dataclass
class Report:
    title: str
    runs: list[dict[str, Any]]
    params: Table
    metrics: Table
    figures: dict[str, Any]  # file name (.png) -> matplotlib figure

    def runs_table(self) -> Table:
        return Table(["run", "id", "status"], [[label, str(r["run_id"]), str(r.get("status", ""))]
                                                for label, r in zip(run_labels(self.runs), self.runs, strict=True)])


def _file_name(metric: str) -> str:
    return "curve_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", metric).strip("._") or "metric") + ".png"


def build_report(runs: Sequence[Mapping[str, Any]], title: str = "Run comparison") -> Report:
    """The tables and figures of a comparison (nothing written yet)."""
    runs = check_runs(runs)
    figures: dict[str, Any] = {}
    if (bars := bars_figure(runs)) is not None:
        figures["metrics.png"] = bars
    for key, figure in curve_figures(runs).items():
        figures[_file_name(key)] = figure
    return Report(title, runs, params_table(runs), metrics_table(runs), figures)


def _direction_note() -> str:
    return ("Best value per column in bold: ↓ lower is better (losses, MAE, VI), ↑ higher is better "
            "(everything else); columns without an arrow are settings (sigma, lambdas, sizes), not ranked.")


def render_markdown(report: Report, images: Sequence[str]) -> str:
    """Markdown with the images linked by relative path."""
    params = report.params.markdown() if report.params.header[1:] else "_All runs share the same params._\n"
    parts = [f"# {report.title}\n", "## Runs\n", report.runs_table().markdown(),
             "## Params that differ\n", params, "## Metrics\n", _direction_note() + "\n", report.metrics.markdown()]
    if images:
        parts.append("## Plots\n")
        parts += [f"![{Path(name).stem}]({name})\n" for name in images]
    return "\n".join(parts)


def render_html(report: Report, images: Mapping[str, bytes]) -> str:
    """One self-contained page: the tables, and the PNGs embedded as base64 data URIs."""
    params = (report.params.html() if report.params.header[1:] else
              "<p><em>All runs share the same params.</em></p>")
    pictures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode("ascii")}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, data in images.items())
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}"
             "th:first-child,td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(report.title)}</title>"
            f"<style>{style}</style></head><body>\n<h1>{html.escape(report.title)}</h1>\n"
            f"<h2>Runs</h2>\n{report.runs_table().html()}\n<h2>Params that differ</h2>\n{params}\n"
            f"<h2>Metrics</h2>\n<p>{html.escape(_direction_note())}</p>\n{report.metrics.html()}\n"
            + (f"<h2>Plots</h2>\n{pictures}\n" if pictures else "") + "</body></html>\n")


def write_report(runs: Sequence[Mapping[str, Any]], out: str | os.PathLike,
                 title: str = "Run comparison") -> dict[str, Path]:
    """Write ``compare.md``, ``compare.html`` and the PNGs into ``out``, replacing it as a whole (a failed
    write leaves the previous report); returns name -> path."""
    report = build_report(runs, title)
    out = Path(out)
    images: dict[str, bytes] = {}
    try:
        with atomic_dir(out) as tmp:
            for name, figure in report.figures.items():
                images[name] = save_figure(figure, tmp / name).read_bytes()
            atomic_write_text(tmp / "compare.md", render_markdown(report, list(images)))
            atomic_write_text(tmp / "compare.html", render_html(report, images))
    finally:
        for figure in report.figures.values():
            plt.close(figure)
    return {name: out / name for name in ("compare.md", "compare.html", *images)}
