"""The MLflow model registry: register a model bundle, gate its promotion, promote or roll back by hand.

Part of :mod:`lofiseg.track`, the only package of lofiseg that imports mlflow (lazily, through
:func:`lofiseg.track.store.import_mlflow`).

Each registration is a ``register-<name>`` run that logs the bundle's model as served
(:meth:`Tracker.log_served_model`: a TorchScript :class:`~lofiseg.infer.served.ServedSegmenter` that predicts
with the test-time scales and flip the gate metric was measured with, loadable and servable without lofiseg)
with its signature and an input example, then becomes a new version of the registered model ``name`` with alias ``challenger`` and tags: the
evaluation set's hash (``lofiseg.eval_set``, the DVC md5 of ``eval_data``), metric values
(``lofiseg.metric.<path>``), the gate, the git commit and the training run the bundle came from.

The gate (:func:`decide`) moves alias ``champion`` only when the challenger beats the champion's gate metric,
evaluated on the same evaluation set, by at least ``min_improvement``; the first version becomes champion.
Every decision and its reason are tags on the version (``lofiseg.decision``, ``lofiseg.reason``). A version
that becomes champion remembers the one it replaced (``lofiseg.previous_champion``), so :meth:`Registry.rollback`
can walk back one promotion at a time.

Only the branch ``promote_from`` moves ``champion``: a registration inside a DVC experiment, on another git
branch or on a detached HEAD is held (:func:`promotion_hold`): it stays challenger whatever the gate says, and
its reason says why and what the gate alone would have done.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lofiseg.track.runs import bundle_run
from lofiseg.track.store import check_store, default_tracking_uri, import_mlflow
from lofiseg.track.tracker import Tracker
from lofiseg.track.values import check_name

if TYPE_CHECKING:
    import torch
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_EVAL_SET = "lofiseg.eval_set"
TAG_EVAL_DATA = "lofiseg.eval_data"
TAG_METRIC = "lofiseg.metric."  # + "/"-path of the metric in its metrics JSON
TAG_GATE = "lofiseg.gate."  # + metric | direction | min_improvement
TAG_DECISION = "lofiseg.decision"
TAG_REASON = "lofiseg.reason"
TAG_PREVIOUS = "lofiseg.previous_champion"
TAG_SOURCE_RUN = "lofiseg.source_run"  # the training run that produced the bundle
TAG_REGISTER_RUN = "lofiseg.register_run"
TAG_BUNDLE = "lofiseg.bundle"
TAG_IMAGE_SIZE = "lofiseg.image_size"  # training image side: predict's default input size
TAG_EXPERIMENT = "dvc.experiment"  # the DVC experiment a version was registered from
TAG_BRANCH = "git.branch"  # the git branch it was registered from (a retrain: the branch its results are on)
UNKNOWN = "unknown"
BUNDLE_FILE = "model.pt"
Direction = Literal["maximize", "minimize"]
_TOLERANCE = 1e-12  # 0.805 - 0.8 is 0.00499999... in floating point: still "at least 0.005"


class RegistryError(LookupError):
    """A registered model, version or alias that the request needs is missing; the message names it."""


# --- the gate -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger: float, champion: float | None, direction: Direction, min_improvement: float,
           same_eval_set: bool) -> Decision:
    """The promotion gate: does the challenger's gate metric beat the champion's?

    The first model (``champion`` None) is promoted. Metrics from different evaluation sets are not comparable:
    no promotion. Otherwise the improvement (challenger - champion when maximizing, champion - challenger when
    minimizing) must be positive and at least ``min_improvement``: a tie never promotes.
    """
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction: expected 'maximize' or 'minimize', got {direction!r}")
    if not (isinstance(min_improvement, int | float) and min_improvement >= 0 and math.isfinite(min_improvement)):
        raise ValueError(f"min_improvement: expected a finite number >= 0, got {min_improvement!r}")
    if champion is None:
        return Decision(True, f"first model: becomes champion ({challenger:.6g})")
    if not same_eval_set:
        return Decision(False, "evaluated on a different evaluation set (or with other eval_params) than the "
                               "champion: metrics are not comparable, champion unchanged")
    if not math.isfinite(challenger):
        return Decision(False, f"challenger's metric is {challenger}: not a number to compare")
    if not math.isfinite(champion):
        return Decision(True, f"champion's metric is {champion}; challenger's is {challenger:.6g}")
    improvement = challenger - champion if direction == "maximize" else champion - challenger
    versus = f"{challenger:.6g} vs champion {champion:.6g} ({direction}, improvement {improvement:+.6g}"
    if improvement <= 0 or improvement < min_improvement - _TOLERANCE:
        kind = "no improvement" if improvement <= 0 else "improvement too small"
        return Decision(False, f"{kind}: {versus} < required {min_improvement:g})")
    return Decision(True, f"better: {versus} >= required {min_improvement:g})")


def promotion_hold(*, experiment: str | None, branch: str | None, in_git: bool, promote_from: str) -> str | None:
    """Why ``champion`` must not move from where a registration runs; None if it may.

    Inside a DVC experiment (``experiment``: its name) never; in git, only on branch ``promote_from`` (a
    detached HEAD is no branch); outside git (nothing to tell) the gate alone decides.
    """
    where = (f"DVC experiment {experiment!r}" if experiment else
             None if not in_git or branch == promote_from else
             f"git branch {branch!r}" if branch else "a detached HEAD")
    if where is None:
        return None
    return (f"registered from {where}: champion moves only from branch {promote_from!r} "
            f"(params registry.promote_from; merge first, or promote by hand)")


# --- what a registration produced ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GateResult:
    """One registration and its gate decision, as reports/registry.json shows it."""

    name: str
    version: str
    promote: bool
    reason: str
    metric: str
    direction: str
    min_improvement: float
    challenger_value: float
    champion_version: str | None  # before the decision
    champion_value: float | None
    eval_set: str
    champion: str | None  # after the decision
    run_id: str | None
    held: str | None = None  # why champion could not move from here (promotion_hold); None: the gate decided

    @property
    def decision(self) -> str:
        return "held" if self.held else "promoted" if self.promote else "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}


@dataclass(frozen=True)
class Change:
    """What promote / rollback did to alias ``champion``."""

    name: str
    old: str | None
    new: str | None
    message: str


# --- inputs -------------------------------------------------------------------------------------------------

def bundle_file(bundle: str | os.PathLike) -> Path:
    """The model file of a bundle folder (``<folder>/model.pt``) or the file itself."""
    path = Path(bundle)
    return path / BUNDLE_FILE if path.is_dir() else path


def load_registrable(bundle: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model a bundle folder (``<folder>/model.pt``) or file holds, as registered and predicted with.

    A saliency bundle (``info["task"] == "saliency"`` with a ``channel``) becomes
    :class:`~lofiseg.models.channel.ChannelSelected`: (N, 1, H, W) probability of the salient channel (CAS Sec. 4.2),
    as train_saliency logs it; any other bundle gives its (N, M, H, W) logits.
    """
    from lofiseg.models.bundle import load_bundle
    from lofiseg.models.channel import ChannelSelected

    model, info = load_bundle(bundle_file(bundle))
    if info.get("task") == "saliency" and info.get("channel") is not None:
        return ChannelSelected(model, int(info["channel"])).eval(), info
    return model, info


def example_images(size: int, seed: int = 0) -> np.ndarray:
    """A fixed (1, size, size, 3) uint8 RGB image: the input example logged with the served model."""
    return np.random.default_rng(seed).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def _float_tag(tags: Mapping[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


# --- the registry -------------------------------------------------------------------------------------------

class Registry:
    """The MLflow registry at ``uri`` (default: :func:`lofiseg.track.store.default_tracking_uri` of the cwd).

    The store is checked at construction: an unusable one raises :class:`TrackingUnavailable` within about
    ``timeout_s`` (twice that for http).
    """

    def __init__(self, uri: str | None = None, timeout_s: float = 5.0) -> None:
        self.uri = uri or default_tracking_uri(Path.cwd())
        check_store(self.uri, timeout_s)
        self.client = import_mlflow().MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- reading

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version of registered model ``name``; {} if it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise
        return {alias: str(version) for alias, version in (model.aliases or {}).items()}

    def champion(self, name: str) -> str | None:
        """The version alias ``champion`` points to, or None."""
        return self.aliases(name).get(CHAMPION)

    def version(self, name: str, version: str | int) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = [v.version for v in self.client.search_model_versions(f"name = '{name}'")]
            raise RegistryError(f"registered model {name!r} has no version {version!r}; versions: "
                                f"{sorted(known, key=int) or 'none'}") from err

    def resolve(self, model_uri: str) -> ModelVersion | None:
        """The registry version behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``; None for
        other URIs (``models:/m-<id>``, ``runs:/``)."""
        if not model_uri.startswith("models:/"):
            return None
        body = model_uri[len("models:/"):].strip("/")
        if "@" in body:
            name, alias = body.split("@", 1)
            version = self.aliases(name).get(alias)
            if version is None:
                raise RegistryError(f"{model_uri}: registered model {name!r} has no alias {alias!r}; aliases: "
                                    f"{self.aliases(name) or 'none'}")
            return self.version(name, version)
        if "/" in body:
            name, version = body.split("/", 1)
            return self.version(name, version)
        return None

    # -- registering

    def register(self, name: str, bundle: str | os.PathLike, *, metrics: Mapping[str, float],
                 eval_set: str | None, eval_data: str, gate_metric: str, direction: Direction,
                 min_improvement: float, experiment: str = "lofiseg-registry",
                 tags: Mapping[str, str] | None = None, scales: Sequence[float] = (1.0,),
                 flip: bool = False) -> tuple[str, str]:
        """Log the bundle's model in a ``register-<name>`` run and make it a new version, alias ``challenger``.

        ``metrics`` ("/"-path -> value, the gate metric among them) are logged to the run and tagged on the
        version; ``eval_set`` is the evaluation set's hash (None: unknown); ``tags`` (e.g.
        :func:`lofiseg.provenance.standard_tags`) go on both. The model predicts at the bundle's training size
        with the test-time ``scales`` and ``flip`` (:func:`lofiseg.infer.served.export_segmenter`). Returns
        (version, register run id).
        """
        from lofiseg.infer.served import export_segmenter

        if gate_metric not in metrics:
            raise ValueError(f"metrics: the gate metric {gate_metric!r} is missing; got {sorted(metrics)}")
        model, info = load_registrable(bundle)
        size = int(info.get("image_size") or 64)
        example = example_images(size)
        served = export_segmenter(model, size, scales, flip)
        version_tags = {
            **{str(k): str(v) for k, v in (tags or {}).items()},
            TAG_EVAL_SET: eval_set or UNKNOWN,
            TAG_EVAL_DATA: eval_data,
            **{f"{TAG_METRIC}{key}": repr(float(value)) for key, value in metrics.items()},
            f"{TAG_GATE}metric": gate_metric,
            f"{TAG_GATE}direction": direction,
            f"{TAG_GATE}min_improvement": repr(float(min_improvement)),
            TAG_BUNDLE: str(bundle),
            TAG_IMAGE_SIZE: str(size),
        }
        # the training run tagged with this model.pt's sha256 (bundles written before that name it in info)
        source_run = info.get("mlflow_run_id") or bundle_run(bundle_file(bundle), uri=self.uri)
        if source_run:
            version_tags[TAG_SOURCE_RUN] = str(source_run)
        run_tags = {**version_tags, "lofiseg.stage": "register", "lofiseg.registered_model": name}
        with Tracker(experiment, f"register-{name}", uri=self.uri, tags=run_tags) as tracker:
            tracker.log_params({"bundle": str(bundle), "model_config": getattr(getattr(model, "model", model), "config", {}),
                                "gate": {"metric": gate_metric, "direction": direction,
                                         "min_improvement": min_improvement},
                                "test_time": {"scales": list(served.scales), "flip": served.flip}})
            tracker.log_metrics(dict(metrics), step=0)
            model_uri = tracker.log_served_model(served, "model", example)
            model_id = model_uri.removeprefix("models:/")  # MLflow 3: a logged model's URI names its id
            self._ensure_model(name)
            created = self.client.create_model_version(
                name, source=model_uri, run_id=tracker.run_id, model_id=model_id,
                tags={**version_tags, TAG_REGISTER_RUN: str(tracker.run_id)},
                description=f"{bundle} ({gate_metric} = {metrics[gate_metric]:.6g})")
            self.client.set_registered_model_alias(name, CHALLENGER, created.version)
            tracker.set_tags({"lofiseg.registered_version": created.version})
        return str(created.version), str(tracker.run_id)

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                name, description="lofiseg model; alias champion moves by the promotion gate (params registry)")
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

    # -- the gate

    def gate(self, name: str, version: str, metric: str, direction: Direction,
             min_improvement: float) -> tuple[Decision, str | None, float | None]:
        """Decide on ``version`` against the current champion: (decision, champion version, champion value)."""
        candidate = self.version(name, version)
        value = _float_tag(candidate.tags, f"{TAG_METRIC}{metric}")
        if value is None:
            raise RegistryError(f"{name} v{version}: no tag {TAG_METRIC}{metric}: it was registered without "
                                f"the gate metric {metric!r}")
        champion_version = self.champion(name)
        if champion_version is None or champion_version == str(version):
            return decide(value, None, direction, min_improvement, True), champion_version, None
        champion = self.version(name, champion_version)
        champion_value = _float_tag(champion.tags, f"{TAG_METRIC}{metric}")
        if champion_value is None:
            reason = (f"champion v{champion_version} has no value for the gate metric {metric!r} (registered "
                      f"under another gate): not comparable, champion unchanged; promote by hand if wanted")
            return Decision(False, reason), champion_version, None
        ours, theirs = candidate.tags.get(TAG_EVAL_SET, UNKNOWN), champion.tags.get(TAG_EVAL_SET, UNKNOWN)
        same = ours == theirs and ours != UNKNOWN
        decision = decide(value, champion_value, direction, min_improvement, same)
        if not same:
            decision = Decision(False, f"{decision.reason} (challenger eval set {ours}, champion v"
                                       f"{champion_version} eval set {theirs})")
        return decision, champion_version, champion_value

    def apply(self, name: str, version: str, decision: Decision, *, how: str = "gate") -> Change:
        """Tag ``version`` with the decision and its reason; on promotion move ``champion`` to it.

        ``how``: ``gate``, ``held`` (not promotable from here, :func:`promotion_hold`), ``manual`` or ``rollback``.
        """
        version = str(self.version(name, version).version)
        old = self.champion(name)
        label = "held" if how == "held" else (
            ("promoted" if decision.promote else "rejected") + ("" if how == "gate" else f" ({how})"))
        self.client.set_model_version_tag(name, version, TAG_DECISION, label)
        self.client.set_model_version_tag(name, version, TAG_REASON, decision.reason[:5000])
        if not decision.promote:
            return Change(name, old, old, f"{name}: v{version} stays challenger ({decision.reason}); "
                                          f"champion {_v(old)}")
        if old == version:
            return Change(name, old, old, f"{name}: v{version} is already champion")
        if old is not None and how != "rollback":
            self.client.set_model_version_tag(name, version, TAG_PREVIOUS, old)
        self.client.set_registered_model_alias(name, CHAMPION, version)
        return Change(name, old, version, f"{name}: champion {_v(old)} -> v{version} ({decision.reason})")

    def register_and_gate(self, name: str, bundle: str | os.PathLike, *, metrics: Mapping[str, float],
                          eval_set: str | None, eval_data: str, gate_metric: str, direction: Direction,
                          min_improvement: float, experiment: str = "lofiseg-registry",
                          tags: Mapping[str, str] | None = None, scales: Sequence[float] = (1.0,),
                          flip: bool = False, hold: str | None = None) -> GateResult:
        """:meth:`register`, :meth:`gate` and :meth:`apply` in one go; with ``hold`` (a reason, see
        :func:`promotion_hold`) the version stays challenger whatever the gate says."""
        version, run_id = self.register(name, bundle, metrics=metrics, eval_set=eval_set, eval_data=eval_data,
                                        gate_metric=gate_metric, direction=direction,
                                        min_improvement=min_improvement, experiment=experiment, tags=tags,
                                        scales=scales, flip=flip)
        decision, champion_version, champion_value = self.gate(name, version, gate_metric, direction,
                                                               min_improvement)
        if hold is not None:
            gate_alone = "promote" if decision.promote else "reject"
            decision = Decision(False, f"{hold}; the gate alone would {gate_alone} it: {decision.reason}")
        change = self.apply(name, version, decision, how="gate" if hold is None else "held")
        return GateResult(name=name, version=version, promote=decision.promote, reason=decision.reason,
                          metric=gate_metric, direction=direction, min_improvement=float(min_improvement),
                          challenger_value=float(metrics[gate_metric]), champion_version=champion_version,
                          champion_value=champion_value, eval_set=eval_set or UNKNOWN, champion=change.new,
                          run_id=run_id, held=hold)

    # -- after the fact

    def tag_versions_of_runs(self, run_ids: Sequence[str], tags: Mapping[str, str]) -> list[tuple[str, str]]:
        """Set ``tags`` on every model version the runs ``run_ids`` created (e.g. the commit that versions a
        retrain's results); returns those versions as (registered model, version)."""
        if isinstance(run_ids, str):
            raise TypeError(f"run_ids: expected a list of MLflow run ids, got the string {run_ids!r}")
        tagged = []
        for run_id in run_ids:
            for found in self.client.search_model_versions(f"run_id = '{check_name('run_ids', run_id)}'"):
                for key, value in tags.items():
                    self.client.set_model_version_tag(found.name, found.version, key, str(value))
                tagged.append((found.name, str(found.version)))
        return sorted(tagged)

    # -- by hand

    def promote(self, name: str, version: str | int, reason: str = "promoted by hand") -> Change:
        """Make ``version`` champion whatever the gate says; the decision and ``reason`` are tagged on it."""
        return self.apply(name, str(version), Decision(True, reason), how="manual")

    def rollback(self, name: str, reason: str | None = None) -> Change:
        """Give ``champion`` back to the version the current champion replaced (its ``previous_champion``)."""
        current = self.champion(name)
        if current is None:
            what = "has no champion to roll back" if self._exists(name) else "does not exist"
            raise RegistryError(f"registered model {name!r} {what}")
        previous = self.version(name, current).tags.get(TAG_PREVIOUS)
        if previous is None:
            raise RegistryError(f"{name}: champion v{current} replaced no earlier champion: nothing to roll back "
                                f"to (promote a version by hand instead)")
        self.version(name, previous)  # still there?
        why = reason or f"rolled back by hand from v{current}"
        self.apply(name, previous, Decision(True, why), how="rollback")
        self.client.set_model_version_tag(name, current, TAG_DECISION, "rolled back")
        self.client.set_model_version_tag(name, current, TAG_REASON, f"champion rolled back to v{previous}"
                                          + (f": {reason}" if reason else ""))
        return Change(name, current, previous, f"{name}: champion v{current} -> v{previous} (rollback)")

    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            return False
        return True


def _v(version: str | None) -> str:
    return "none" if version is None else f"v{version}"
