"""Figures and tables people would rather look at than read: training curves, comparison tables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lofiseg.atomic import atomic_file  # noqa: E402


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` atomically; a PNG carries no metadata (matplotlib writes its version as ``Software``), so
    the same figure gives the same bytes on any machine."""
    path = Path(path)
    metadata = {"Software": None} if path.suffix.lower() == ".png" else None
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata=metadata)
    return path


def curves_figure(history: Sequence[Mapping[str, float]], keys: Sequence[str], title: str) -> Figure:
    """One panel per metric key over epochs (1-based on the x axis)."""
    keys = [k for k in keys if any(k in h for h in history)]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=False):
        points = [(h["epoch"] + 1, h[key]) for h in history if key in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def lines_figure(series: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str,
                 title: str) -> Figure:
    """One line per named series of (x, y) points, e.g. F-beta against noise rate per loss."""
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    for name, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bars_figure(groups: Mapping[str, Mapping[str, float | None]], ylabel: str, title: str) -> Figure:
    """Grouped bars: one group per outer key (e.g. a class), one bar per inner key (e.g. a model); None = gap."""
    import numpy as np

    series = list(dict.fromkeys(k for values in groups.values() for k in values))
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.2, 0.9 * len(groups) * max(len(series), 1) * 0.5 + 2), 3.0))
    for i, name in enumerate(series):
        heights = [groups[g].get(name) for g in groups]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if h is None else h for h in heights], width,
               label=name)
    ax.set_xticks(x, list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
