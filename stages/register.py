"""DVC stage `register@<model>`: a model of params `registry.models` into the MLflow registry, then the gate.

For every model: its bundle becomes a new version with alias ``challenger``, tagged with the evaluation set's
identity (:func:`eval_set_identity`, plus the values of the model's ``eval_params``: how the metric was measured)
and its metrics; alias ``champion`` moves to it only if its gate metric (a "/"-path into the metrics JSON) beats
the champion's on the same evaluation set, measured the same way, by ``min_improvement`` (lofiseg.track.registry.decide).
The registered model predicts with the test-time scales and flip of its ``serve`` params (for DeepLab, YAML
anchors to evaluate.semantic_scales / semantic_flip: the model the gate scored) and loads without lofiseg. The
outcome is written to ``--out``: with ``--model`` (how dvc.yaml runs it, one stage per model) that model's
result; without it, every model's under ``models``. Everything is checked (bundles, metrics files, gate metric
paths, the store) before anything is registered.

Only on git branch ``registry.promote_from`` may ``champion`` move: inside a DVC experiment (``dvc exp run``,
``python -m flows.pipeline -S ...``) or on another branch the version is registered as challenger, tagged with
the experiment (``dvc.experiment``) or branch (``git.branch``), and its decision is ``held``, saying why
(lofiseg.track.registry.promotion_hold).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lofiseg.atomic import atomic_write_json
from lofiseg.config import Params, ParamsError, RegisteredModel, load_params
from lofiseg.data.format import MANIFEST
from lofiseg.evaluate.gate import (
    MetricsFileError,
    eval_set_identity,
    evaluation_identity,
    metric_at,
    read_metrics,
    section_metrics,
)
from lofiseg.provenance import dvc_experiment, git_branch, git_commit, standard_tags
from lofiseg.track.registry import BUNDLE_FILE, TAG_BRANCH, TAG_EXPERIMENT, Registry, promotion_hold
from lofiseg.track.store import TrackingUnavailable
from stages.cli import log, run, stage_parser


def plan(name: str, spec: RegisteredModel, params: Params) -> dict[str, Any]:
    """Everything the registration of one model needs, checked before any of them is registered; a bundle
    whose training stage skipped it on purpose (its info.json says why) gives ``{"skipped": why}``."""
    key = f"registry.models.{name}"
    bundle = Path(spec.bundle)
    model_file = bundle / BUNDLE_FILE if bundle.suffix != ".pt" else bundle
    info = bundle / "info.json"
    if not model_file.is_file() and info.is_file() and "skipped" in (why := json.loads(info.read_text())):
        return {"skipped": why["skipped"]}
    if not model_file.is_file():
        raise FileNotFoundError(f"{key}.bundle: {model_file} is missing (run its training stage first)")
    file = Path(spec.metrics)
    try:
        metrics = read_metrics(file, f"{key}.metrics")
        value = metric_at(metrics, spec.gate.metric, file, f"{key}.gate.metric")
    except MetricsFileError as err:
        raise ParamsError(str(err)) from err
    measured = [(dotted, params.value_at(dotted)) for dotted in spec.eval_params]
    eval_set = evaluation_identity(eval_set_identity(spec.eval_data), measured)
    if eval_set is None:
        log.warning("%s.eval_data %r is neither a data set (no %s) nor known to DVC (not in dvc.lock, no .dvc "
                    "file): this version cannot be compared with the champion", key, spec.eval_data, MANIFEST)
    return {"bundle": bundle, "metrics": section_metrics(metrics, spec.gate.metric, value), "eval_set": eval_set}


def where_registered(root: str | Path, promote_from: str) -> tuple[dict[str, str], str | None]:
    """Tags naming the DVC experiment and git branch the registration runs in, and why champion must not
    move from there (None: it may)."""
    experiment, branch = dvc_experiment(), git_branch(root)
    tags = {TAG_EXPERIMENT: experiment} if experiment else {}
    tags |= {TAG_BRANCH: branch} if branch else {}
    hold = promotion_hold(experiment=experiment, branch=branch, in_git=git_commit(root) is not None,
                          promote_from=promote_from)
    return tags, hold


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

    where, hold = where_registered(".", registry_params.promote_from)
    if hold:
        log.warning("registry: %s", hold)
    results: dict[str, Any] = {}
    for name, spec in selected.items():
        todo = plans[name]
        if "skipped" in todo:
            log.warning("%s: not registered: %s", name, todo["skipped"])
            results[name] = {"skipped": todo["skipped"]}
            continue
        tags = {**standard_tags(".", [spec.eval_data, spec.bundle]), **where}
        result = registry.register_and_gate(
            name, todo["bundle"], metrics=todo["metrics"], eval_set=todo["eval_set"],
            eval_data=spec.eval_data, gate_metric=spec.gate.metric, direction=spec.gate.direction,
            min_improvement=spec.gate.min_improvement,
            experiment=f"{params.tracking.experiment_prefix}-registry", tags=tags,
            scales=spec.serve.scales, flip=spec.serve.flip, hold=hold)
        log.info("%s v%s %s: %s", name, result.version, result.decision, result.reason)
        results[name] = {**result.to_dict(), "metrics": todo["metrics"]}
    atomic_write_json(args.out, results[args.model] if args.model else {"enabled": True, "models": results})


if __name__ == "__main__":
    sys.exit(run(main))
