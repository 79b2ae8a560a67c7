"""What the registry gate compares (lofiseg.track.registry.decide): the gate metric read from an evaluation's
metrics JSON by a "/"-path, the numbers beside it, and the identity of the evaluation (the data set it scored,
plus how it was measured)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lofiseg.data.format import MANIFEST, dataset_digest
from lofiseg.provenance import dvc_hashes


class MetricsFileError(ValueError):
    """A metrics file that is not a JSON object, or a "/"-path that does not lead to a number in it."""


MAX_METRIC_TAGS = 64  # sibling metrics of the gate metric tagged on a version (MLflow tags are not free)


def read_metrics(path: Path, key: str) -> dict[str, Any]:
    """The metrics JSON ``path`` (``key`` names the param that points at it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{key}: metrics file {path} is missing (run the evaluate stages first)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetricsFileError(f"{key}: metrics file {path} is not valid JSON ({err})") from err
    if not isinstance(content, dict):
        raise MetricsFileError(f"{key}: metrics file {path} must hold a JSON object, got {type(content).__name__}")
    return content


def metric_at(metrics: Mapping[str, Any], path: str, file: Path, key: str) -> float:
    """The number at ``path`` ("a/b/c") in ``metrics``; a missing key raises naming the file and path."""
    node: Any = metrics
    walked: list[str] = []
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            where = "/".join(walked) or "the top level"
            here = sorted(node) if isinstance(node, Mapping) else f"a {type(node).__name__}"
            raise MetricsFileError(f"{key} {path!r}: {file} has no key {part!r} under {where} (found there: {here})")
        node = node[part]
        walked.append(part)
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise MetricsFileError(f"{key} {path!r}: {file} holds {type(node).__name__} {node!r} there, not a number")
    return float(node)


def section_metrics(metrics: Mapping[str, Any], path: str, value: float) -> dict[str, float]:
    """The gate metric and the numbers beside it (same parent section), keyed by their "/"-paths."""
    parent, _, _ = path.rpartition("/")
    node: Any = metrics
    for part in parent.split("/") if parent else []:
        node = node[part]
    siblings = {f"{parent}/{k}" if parent else k: float(v) for k, v in node.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    chosen = dict(sorted(siblings.items())[:MAX_METRIC_TAGS])
    return {**chosen, path: value}


def eval_set_identity(path: str) -> str | None:
    """What the gate compares: for a data set in the project's format its content digest
    (:func:`~lofiseg.data.format.dataset_digest`: the manifest with every image's and mask's sha256, and its
    side files), so the identity is that of the files read now and of nothing beside them, and corrected
    masks alone make another evaluation set; otherwise the md5 DVC recorded for the path; None when neither
    exists."""
    if (Path(path) / MANIFEST).is_file():
        return "dataset-sha256:" + dataset_digest(path)
    return next(iter(dvc_hashes([path], ".").values()), None)


def evaluation_identity(data_identity: str | None, measured: Sequence[tuple[str, Any]]) -> str | None:
    """The evaluation set's identity followed by ``key=value`` (value as JSON) of each pair of ``measured``:
    how the metric was measured, e.g. ``dataset-sha256:... evaluate.semantic_flip=true``."""
    if data_identity is None:
        return None
    return " ".join([data_identity, *(f"{key}={json.dumps(value)}" for key, value in measured)])
