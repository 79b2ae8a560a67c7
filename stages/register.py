"""DVC stage `register@<model>`: a model of params `registry.models` into the MLflow registry, then the gate.

For every model: its bundle becomes a new version with alias ``challenger``, tagged with the evaluation set's
identity (:func:`eval_set_identity`, plus the values of the model's ``eval_params``: how the metric was measured)
and its metrics; alias ``champion`` moves to it only if its gate metric (a "/"-path into the metrics JSON) beats
the champion's on the same evaluation set, measured the same way, by ``min_improvement`` (lofiseg.track.registry.decide). The
outcome is written to ``--out``: with ``--model`` (how dvc.yaml runs it, one stage per model) that model's
result; without it, every model's under ``models``. Everything is checked (bundles, metrics files, gate metric
paths, the store) before anything is registered.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lofiseg.atomic import atomic_write_json
from lofiseg.config import Params, ParamsError, RegisteredModel, load_params
from lofiseg.data.format import MANIFEST
from lofiseg.provenance import dvc_hashes, standard_tags
from lofiseg.track.registry import BUNDLE_FILE, Registry
from lofiseg.track.store import TrackingUnavailable
from stages.cli import log, run, stage_parser

MAX_METRIC_TAGS = 64  # sibling metrics of the gate metric tagged on a version (MLflow tags are not free)


def read_metrics(path: Path, key: str) -> dict[str, Any]:
    """The metrics JSON ``path`` (``key`` names the param that points at it)."""
    if not path.is_file():
        raise FileNotFoundError(f"{key}: metrics file {path} is missing (run the evaluate stages first)")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ParamsError(f"{key}: metrics file {path} is not valid JSON ({err})") from err
    if not isinstance(content, dict):
        raise ParamsError(f"{key}: metrics file {path} must hold a JSON object, got {type(content).__name__}")
    return content


def metric_at(metrics: Mapping[str, Any], path: str, file: Path, key: str) -> float:
    """The number at ``path`` ("a/b/c") in ``metrics``; a missing key raises naming the file and path."""
    node: Any = metrics
    walked: list[str] = []
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            where = "/".join(walked) or "the top level"
            here = sorted(node) if isinstance(node, Mapping) else f"a {type(node).__name__}"
            raise ParamsError(f"{key} {path!r}: {file} has no key {part!r} under {where} (found there: {here})")
        node = node[part]
        walked.append(part)
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise ParamsError(f"{key} {path!r}: {file} holds {type(node).__name__} {node!r} there, not a number")
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
    """What the gate compares: for a data set in the project's format the sha256 of its manifest (which lists
    every image's and mask's sha256), so the identity is that of the files read now and of nothing beside
    them; otherwise the md5 DVC recorded for the path; None when neither exists."""
    manifest = Path(path) / MANIFEST
    if manifest.is_file():
        return "manifest-sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    return next(iter(dvc_hashes([path], ".").values()), None)


def evaluation_identity(data_identity: str | None, params: Params, keys: Sequence[str]) -> str | None:
    """The evaluation set's identity followed by ``key=value`` (JSON) of each params key in ``keys``: how the
    metric was measured, e.g. ``manifest-sha256:... evaluate.semantic_flip=true``."""
    if data_identity is None:
        return None
    return " ".join([data_identity, *(f"{key}={json.dumps(params.value_at(key))}" for key in keys)])


def plan(name: str, spec: RegisteredModel, params: Params) -> dict[str, Any]:
    """Everything the registration of one model needs, checked before any of them is registered."""
    key = f"registry.models.{name}"
    bundle = Path(spec.bundle)
    model_file = bundle / BUNDLE_FILE if bundle.suffix != ".pt" else bundle
    if not model_file.is_file():
        raise FileNotFoundError(f"{key}.bundle: {model_file} is missing (run its training stage first)")
    file = Path(spec.metrics)
    metrics = read_metrics(file, f"{key}.metrics")
    value = metric_at(metrics, spec.gate.metric, file, f"{key}.gate.metric")
    eval_set = evaluation_identity(eval_set_identity(spec.eval_data), params, spec.eval_params)
    if eval_set is None:
        log.warning("%s.eval_data %r is neither a data set (no %s) nor known to DVC (not in dvc.lock, no .dvc "
                    "file): this version cannot be compared with the champion", key, spec.eval_data, MANIFEST)
    return {"bundle": bundle, "metrics": section_metrics(metrics, spec.gate.metric, value), "eval_set": eval_set}


def skipped(out: Path, reason: str, model: str | None) -> None:
    log.warning("registry: %s; no model registered", reason)
    atomic_write_json(out, {"name": model, "enabled": False, "skipped": reason} if model else
                      {"enabled": False, "skipped": reason, "models": {}})


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", help="one model of registry.models (default: all of them)")
    parser.add_argument("--out", type=Path, required=True, help="report of the registrations (JSON)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    registry_params = params.registry
    if args.model is not None and args.model not in registry_params.models:
        raise ParamsError(f"--model {args.model!r} is not in registry.models {sorted(registry_params.models)}")
    if not registry_params.enabled:
        return skipped(args.out, "registry.enabled is false", args.model)
    if not params.tracking.enabled:
        return skipped(args.out, "tracking.enabled is false (the registry lives in MLflow)", args.model)
    selected = {name: spec for name, spec in registry_params.models.items() if args.model in (None, name)}
    plans = {name: plan(name, spec, params) for name, spec in selected.items()}
    try:
        registry = Registry()
    except TrackingUnavailable as err:
        if params.tracking.required:
            raise
        return skipped(args.out, f"tracking.required is false and the store is unavailable: {err}", args.model)

    results: dict[str, Any] = {}
    for name, spec in selected.items():
        todo = plans[name]
        tags = standard_tags(".", [spec.eval_data, spec.bundle])
        result = registry.register_and_gate(
            name, todo["bundle"], metrics=todo["metrics"], eval_set=todo["eval_set"],
            eval_data=spec.eval_data, gate_metric=spec.gate.metric, direction=spec.gate.direction,
            min_improvement=spec.gate.min_improvement,
            experiment=f"{params.tracking.experiment_prefix}-registry", tags=tags)
        log.info("%s v%s %s: %s", name, result.version, result.decision, result.reason)
        results[name] = {**result.to_dict(), "metrics": todo["metrics"]}
    atomic_write_json(args.out, results[args.model] if args.model else {"enabled": True, "models": results})


if __name__ == "__main__":
    sys.exit(run(main))
