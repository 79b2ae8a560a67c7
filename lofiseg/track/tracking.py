"""Experiment tracking in MLflow: the one module of lofiseg that imports mlflow.

A stage opens one :class:`Tracker` per training run. It logs params, per-epoch metrics (``step=epoch``), tags
(git commit, DVC hashes of the inputs, the chosen channel...), plots and the model with a signature whose
batch/H/W are free (-1). The store is checked before any work: an unreachable store fails fast with a message
saying how to fix it, or, when the stage's params allow it (``tracking.required: false``), training goes on
WITHOUT tracking and says so loudly. A run is never silently lost: an exception ends it FAILED, Ctrl-C KILLED,
and after ``kill -9`` the run id kept in the training checkpoint resumes the very same run.

Default store: a sqlite database ``<repo>/mlflow.db`` and artifacts in ``<repo>/mlartifacts`` (both
git-ignored); ``MLFLOW_TRACKING_URI`` overrides the database, ``MLFLOW_ARTIFACT_ROOT`` (lofiseg's own
variable, MLflow has none) the artifact root; an ``s3://`` root (any S3-compatible store: ``MLFLOW_S3_ENDPOINT_URL``)
is checked before the run starts, like the store. mlflow and torch are imported lazily, so importing this module,
:func:`git_commit` and :func:`dvc_hashes` stay cheap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
ARTIFACT_ROOT_ENV = "MLFLOW_ARTIFACT_ROOT"
DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
SQLITE_LOCK_TIMEOUT_S = 120.0
HOW_TO_FIX = (
    "Point MLFLOW_TRACKING_URI at a reachable store (e.g. sqlite:////abs/path/mlflow.db or "
    "http://host:5000), or set `tracking.required: false` in params.yaml to train WITHOUT tracking."
)


class TrackingUnavailable(RuntimeError):
    """The MLflow store cannot be used; the message names the URI and how to fix or bypass it."""


# --- where the store lives ----------------------------------------------------------------------------------

def default_tracking_uri(root: str | os.PathLike) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs root>/mlflow.db``."""
    if env := os.environ.get(TRACKING_URI_ENV, "").strip():
        return env
    return "sqlite:///" + (Path(root).resolve() / DB_NAME).as_posix()


def default_artifact_root(root: str | os.PathLike) -> str:
    """``$MLFLOW_ARTIFACT_ROOT`` if set, else ``<abs root>/mlartifacts`` as a file URI."""
    if env := os.environ.get(ARTIFACT_ROOT_ENV, "").strip():
        return env
    return (Path(root).resolve() / ARTIFACT_DIR).as_uri()


def _scheme(uri: str) -> str:
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return match.group(1).lower() if match else ""


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI; None for an in-memory database."""
    body = uri.split("?", 1)[0]
    if not body.startswith("sqlite:///"):
        return None
    path = body[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def _artifact_root_for(uri: str) -> str | None:
    """Artifacts beside a sqlite DB; a tracking server chooses its own (None) unless overridden."""
    if _scheme(uri) == "sqlite" and (db := _sqlite_path(uri)) is not None:
        return default_artifact_root(db.resolve().parent)
    if _scheme(uri) in ("http", "https", "databricks"):
        return os.environ.get(ARTIFACT_ROOT_ENV, "").strip() or None
    return default_artifact_root(Path.cwd())


# --- lazy imports and process-wide MLflow state ---------------------------------------------------------

def _mlflow() -> ModuleType:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline project: never phone home
    import mlflow
    import mlflow.pytorch  # noqa: F401  (registers the flavor under mlflow.pytorch)

    return mlflow


def _client(uri: str) -> MlflowClient:
    return _mlflow().MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _tracking_uri_set(uri: str) -> Iterator[None]:
    """Make ``uri`` MLflow's global tracking URI (log_model needs it), then restore the previous state."""
    mlflow = _mlflow()
    from mlflow.tracking._tracking_service import utils

    previous, previous_env = utils._tracking_uri, os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None also unsets the env var: put the user's value back
        if previous_env is not None:
            os.environ[TRACKING_URI_ENV] = previous_env


# --- failing fast on an unusable store ----------------------------------------------------------------------

def _unavailable(uri: str, reason: str) -> TrackingUnavailable:
    reason = reason if len(reason) <= 600 else reason[:600] + " [...]"
    return TrackingUnavailable(f"MLflow tracking store {uri!r} is unavailable: {reason}. {HOW_TO_FIX}")


def _sqlite_has_schema(db: Path) -> bool:
    """True if ``db`` already holds MLflow's tables (read-only look, no MLflow import)."""
    import sqlite3

    if not db.is_file() or db.stat().st_size == 0:
        return False
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    try:
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        with contextlib.closing(connection):
            return connection.execute(query).fetchone() is not None
    except sqlite3.Error:
        return False


def _prepare_sqlite(uri: str) -> None:
    db = _sqlite_path(uri)
    if db is None:
        raise _unavailable(uri, "an in-memory or malformed sqlite URI would lose the run when the process "
                                "exits (expected sqlite:///<path to a .db file>)")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unavailable(uri, f"cannot create the folder {db.parent} ({err})") from err
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise _unavailable(uri, f"{db} or its folder is not writable")
    if _sqlite_has_schema(db):
        with contextlib.suppress(Exception):  # fast path, no lock; on failure (mid-migration?) wait below
            _client(uri).search_experiments(max_results=1)
            return
    from filelock import FileLock, Timeout

    try:  # the first process creates the tables; parallel stages wait instead of racing on migrations
        with FileLock(f"{db}.lock", timeout=SQLITE_LOCK_TIMEOUT_S):
            _client(uri).search_experiments(max_results=1)
    except Timeout as err:
        raise _unavailable(uri, f"another process held {db}.lock for {SQLITE_LOCK_TIMEOUT_S:g} s") from err
    except Exception as err:
        raise _unavailable(uri, f"{type(err).__name__}: {err}") from err


def _check_http_health(uri: str, timeout_s: float) -> None:
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        response = requests.get(url, timeout=timeout_s)
    except requests.RequestException as err:
        raise _unavailable(uri, f"no answer from GET {url} within {timeout_s:g} s "
                                f"({type(err).__name__}: {err})") from err
    if response.status_code >= 500:
        raise _unavailable(uri, f"GET {url} answered HTTP {response.status_code}")


def _probe(uri: str, timeout_s: float) -> None:
    """One cheap query through MLflow, abandoned (daemon thread) if it takes longer than ``timeout_s``."""
    outcome: list[BaseException | None] = []

    def query() -> None:
        try:
            _client(uri).search_experiments(max_results=1)
            outcome.append(None)
        except Exception as err:  # reported to the caller below
            outcome.append(err)

    bounded = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s)))}
    with _env(bounded):
        worker = threading.Thread(target=query, name="mlflow-store-probe", daemon=True)
        worker.start()
        worker.join(timeout_s)
    if not outcome:
        raise _unavailable(uri, f"no answer within {timeout_s:g} s")
    if (err := outcome[0]) is not None:
        raise _unavailable(uri, f"{type(err).__name__}: {err}") from err


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` within about ``timeout_s`` (x2 for http) if ``uri`` is unusable.

    sqlite: the folder must be writable; the database is created once under a file lock. http(s): the
    server's ``/health`` must answer, then one query with MLflow's retries switched off. Other stores: one
    query, bounded by ``timeout_s``.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"uri: expected a non-empty tracking URI string, got {uri!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    scheme = _scheme(uri)
    if scheme == "sqlite":
        _prepare_sqlite(uri)
        return
    if scheme in ("http", "https"):
        _check_http_health(uri, timeout_s)
    _probe(uri, timeout_s)


# --- value conversion ---------------------------------------------------------------------------------------

def _flatten(values: Mapping[str, Any] | Any, argument: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (or pydantic models) to one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    if hasattr(values, "model_dump"):
        values = values.model_dump(mode="json")
    if not isinstance(values, Mapping):
        raise TypeError(f"{argument}: expected a mapping, got {type(values).__name__}")
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "model_dump"):
            flat.update(_flatten(value, argument, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"metrics[{key!r}]: expected a real number or a one-element tensor/array, got "
                        f"{type(value).__name__} {value!r}") from err


def _check_name(argument: str, name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{argument}: expected a non-empty string, got {name!r}")
    return name


def _final_status(exc: BaseException | None) -> str:
    if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
        return "FINISHED"
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


# --- the model ----------------------------------------------------------------------------------------------

def _example_tensor(example_input: Any) -> torch.Tensor:
    import torch

    if isinstance(example_input, np.ndarray):
        example_input = torch.from_numpy(example_input)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input: expected a numpy array or torch tensor of shape (N, C, H, W), got "
                        f"{type(example_input).__name__}")
    if example_input.ndim != 4 or not example_input.is_floating_point():
        raise ValueError(f"example_input: expected a floating (N, C, H, W) batch, got shape "
                         f"{tuple(example_input.shape)} dtype {example_input.dtype}")
    return example_input


def _forward(model: torch.nn.Module, example: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode output on ``example`` (its train/eval mode is restored afterwards)."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example.to(device))
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        raise ValueError(f"model: expected one (N, M, H, W) tensor as output, got "
                         f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}")
    return output


def segmentation_signature(example_input: np.ndarray | torch.Tensor, output: torch.Tensor) -> Any:
    """An MLflow ModelSignature (N, C, H, W) -> (N, M, H, W) with N, H and W free (-1)."""
    _mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = _example_tensor(example_input)

    def spec(tensor: torch.Tensor) -> TensorSpec:
        dtype = tensor.detach().cpu()[:0].numpy().dtype
        return TensorSpec(dtype, (-1, int(tensor.shape[1]), -1, -1))

    return ModelSignature(inputs=Schema([spec(example)]), outputs=Schema([spec(output)]))


def _default_pip_requirements(model: torch.nn.Module) -> list[str]:
    """torch + cloudpickle (MLflow's pickle flavor) + ``<package>==<version>`` for each installed distribution
    named like the top-level package of one of the model's module classes (e.g. segmentation_models_pytorch).
    """
    from importlib import metadata

    requirements = list(_mlflow().pytorch.get_default_pip_requirements())
    pinned = {requirement.split("==")[0] for requirement in requirements}
    for package in sorted({type(module).__module__.split(".")[0] for module in model.modules()} - pinned):
        with contextlib.suppress(metadata.PackageNotFoundError):
            requirements.append(f"{package}=={metadata.version(package)}")
    return sorted(requirements)


def load_model(model_uri: str, *, tracking_uri: str | None = None,
               map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model logged by :meth:`Tracker.log_model` (``models:/...``, ``runs:/...``), in eval mode.

    ``tracking_uri`` resolves ``models:/`` URIs (default: :func:`default_tracking_uri` of the cwd).
    """
    _check_name("model_uri", model_uri)
    uri = tracking_uri or default_tracking_uri(Path.cwd())
    mlflow = _mlflow()
    with _tracking_uri_set(uri):
        model = mlflow.pytorch.load_model(model_uri, map_location=map_location)
    return model.eval()


# --- provenance: git and DVC --------------------------------------------------------------------------------

def _git(root: str | os.PathLike, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(root: str | os.PathLike) -> str | None:
    """The commit checked out at ``root`` (``git rev-parse HEAD``); None outside git or before any commit."""
    return _git(root, "rev-parse", "--verify", "--quiet", "HEAD") or None


def git_remote_url(root: str | os.PathLike, name: str = "origin") -> str | None:
    """The URL of git remote ``name`` at ``root``; None outside git or without that remote."""
    return _git(root, "remote", "get-url", name) or None


def git_dirty(root: str | os.PathLike) -> bool | None:
    """True if tracked files differ from HEAD, None outside git.

    dvc.lock is excepted: DVC rewrites it mid-pipeline, and the data hashes are tagged separately.
    """
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")
    return None if status is None else bool(status)


def _normalise(path: str | os.PathLike, root: Path) -> str:
    candidate = Path(path)
    if candidate.is_absolute():
        with contextlib.suppress(ValueError):
            candidate = candidate.resolve().relative_to(root.resolve())
    return os.path.normpath(candidate.as_posix()).replace(os.sep, "/")


def _md5_entries(entries: Any) -> dict[str, str]:
    if not isinstance(entries, list):
        return {}
    return {os.path.normpath(str(e["path"])): str(e["md5"]) for e in entries
            if isinstance(e, Mapping) and "path" in e and e.get("md5")}


def _recorded_hashes(root: Path) -> dict[str, str]:
    """path -> md5 from dvc.lock (outs win over deps) and from ``*.dvc`` files of ``dvc add``."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        content = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"dvc.lock: {lock} is not valid YAML ({err})") from err
    stages = content.get("stages", content) if isinstance(content, Mapping) else {}
    deps: dict[str, str] = {}
    outs: dict[str, str] = {}
    for stage in stages.values():
        if isinstance(stage, Mapping):
            deps.update(_md5_entries(stage.get("deps")))
            outs.update(_md5_entries(stage.get("outs")))
    return {**deps, **outs}


def _dot_dvc_hash(root: Path, path: str) -> str | None:
    dot_dvc = root / f"{path}.dvc"
    if not dot_dvc.is_file():
        return None
    content = yaml.safe_load(dot_dvc.read_text(encoding="utf-8")) or {}
    entries = _md5_entries(content.get("outs") if isinstance(content, Mapping) else None)
    return entries.get(os.path.basename(path)) or entries.get(path)


def dvc_hashes(paths: Sequence[str | os.PathLike], root: str | os.PathLike) -> dict[str, str]:
    """The md5 DVC recorded for each path (``<root>/dvc.lock`` or ``<path>.dvc``); unknown paths are left out.

    Keys are the paths normalised relative to ``root`` (``./data/raw/`` -> ``data/raw``).
    """
    if isinstance(paths, str | os.PathLike):
        raise TypeError(f"paths: expected a list of paths, got a single {type(paths).__name__} {paths!r}")
    root = Path(root)
    recorded = _recorded_hashes(root)
    hashes: dict[str, str] = {}
    for path in paths:
        key = _normalise(path, root)
        if md5 := recorded.get(key) or _dot_dvc_hash(root, key):
            hashes[key] = md5
    return hashes


ORCHESTRATOR_ENV = "LOFISEG_PREFECT_FLOW_RUN_ID"  # set by flows/ for the stages they run
ORCHESTRATOR_TAG = "prefect.flow_run_id"


def standard_tags(root: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> dict[str, str]:
    """Provenance tags: ``git.commit``, ``git.dirty`` (if in git), ``dvc.<path>`` md5 of each input, and the
    Prefect flow run that launched the stage (when one did)."""
    tags: dict[str, str] = {}
    if flow_run := os.environ.get(ORCHESTRATOR_ENV):
        tags[ORCHESTRATOR_TAG] = flow_run
    if (commit := git_commit(root)) is not None:
        tags["git.commit"] = commit
        tags["git.dirty"] = str(git_dirty(root)).lower()
    tags.update({f"dvc.{path}": md5 for path, md5 in dvc_hashes(inputs, root).items()})
    return tags


def runs_with_tag(key: str, value: str, *, uri: str | None = None) -> list[dict[str, str]]:
    """Every run, in any experiment, tagged ``key = value``: id, experiment, name and status."""
    uri = uri or default_tracking_uri(Path.cwd())
    check_store(uri)
    client = _client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{key}` = '{value}'") if experiments else []
    return [{"run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "run_name": r.info.run_name,
             "status": r.info.status} for r in runs]


# --- reading runs back (for comparisons) ------------------------------------------------------------------

def _run_record(client: MlflowClient, run: Any, curves: bool) -> dict[str, Any]:
    """One run as plain data: the metrics are MLflow's latest values; ``curves`` holds the histories of the
    metrics logged at more than one step, as sorted (step, value) pairs."""
    histories: dict[str, list[tuple[int, float]]] = {}
    if curves:
        for key in sorted(run.data.metrics):
            points = sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run.info.run_id, key))
            if len({step for step, _ in points}) > 1:
                histories[key] = points
    return {"run_id": run.info.run_id, "name": run.info.run_name or run.info.run_id[:8],
            "experiment_id": run.info.experiment_id, "status": run.info.status,
            "start_time": run.info.start_time, "params": dict(run.data.params),
            "metrics": {k: float(v) for k, v in run.data.metrics.items()}, "tags": dict(run.data.tags),
            "curves": histories}


def runs_by_id(run_ids: Sequence[str], *, uri: str | None = None, curves: bool = True) -> list[dict[str, Any]]:
    """The runs ``run_ids``, in that order, as dicts: run_id, name, experiment_id, status, start_time,
    params, metrics (latest values), tags and curves (metric histories, see :func:`experiment_runs`)."""
    if isinstance(run_ids, str) or not run_ids:
        raise ValueError(f"run_ids: expected a non-empty list of MLflow run ids, got {run_ids!r}")
    uri = uri or default_tracking_uri(Path.cwd())
    check_store(uri)
    client = _client(uri)
    from mlflow.exceptions import MlflowException

    records = []
    for run_id in run_ids:
        try:
            run = client.get_run(_check_name("run_ids", run_id))
        except MlflowException as err:
            raise ValueError(f"run_ids: no MLflow run {run_id!r} in the store {uri!r}") from err
        records.append(_run_record(client, run, curves))
    return records


def experiment_runs(experiment: str, *, uri: str | None = None, curves: bool = True,
                    statuses: Sequence[str] | None = ("FINISHED",)) -> list[dict[str, Any]]:
    """The active runs of ``experiment`` (oldest first) as dicts like :func:`runs_by_id`; only those whose
    status is in ``statuses`` (default FINISHED; None = every status)."""
    _check_name("experiment", experiment)
    uri = uri or default_tracking_uri(Path.cwd())
    check_store(uri)
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"experiment: no MLflow experiment {experiment!r} in the store {uri!r}; "
                         f"it has {names}")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=10000)
    wanted = None if statuses is None else {s.upper() for s in statuses}
    return [_run_record(client, run, curves) for run in runs if wanted is None or run.info.status in wanted]


# --- artifacts on S3 (any S3-compatible store) --------------------------------------------------------------

S3_ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"  # MLflow's own; boto3's AWS_ENDPOINT_URL_S3 works as well


def check_artifact_store(artifact_location: str | None, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` if an ``s3://`` artifact location cannot be written to, within about
    2 x ``timeout_s``; any other location (a folder, a tracking server's choice) is left to MLflow.

    One HeadBucket request with the connect/read timeouts set to ``timeout_s`` and at most 2 attempts; the
    message names the endpoint and the bucket.
    """
    if not artifact_location or _scheme(artifact_location) != "s3":
        return
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = artifact_location[len("s3://"):].split("/", 1)[0]
    if not bucket:
        raise ValueError(f"artifact_location: expected s3://<bucket>/<prefix>, got {artifact_location!r}")
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"total_max_attempts": 2, "mode": "standard"})
    client = boto3.client("s3", endpoint_url=os.environ.get(S3_ENDPOINT_ENV, "").strip() or None, config=config)
    endpoint = client.meta.endpoint_url
    how = (f"Point {S3_ENDPOINT_ENV} (or AWS_ENDPOINT_URL_S3) at a reachable S3-compatible store with the "
           f"bucket, fix the AWS credentials, or set {ARTIFACT_ROOT_ENV} to another location; "
           f"`tracking.required: false` in params.yaml trains WITHOUT tracking")
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        reason = {"404": f"bucket {bucket!r} does not exist", "NoSuchBucket": f"bucket {bucket!r} does not exist",
                  "403": f"access to bucket {bucket!r} is denied (credentials?)"}.get(code, str(err))
        raise TrackingUnavailable(f"MLflow artifact store {artifact_location!r} at S3 endpoint {endpoint} "
                                  f"is unavailable: {reason}. {how}.") from err
    except BotoCoreError as err:
        raise TrackingUnavailable(f"MLflow artifact store {artifact_location!r}: no answer from S3 endpoint "
                                  f"{endpoint} within 2 attempts of {timeout_s:g} s ({type(err).__name__}: "
                                  f"{err}). {how}.") from err


# --- the run ------------------------------------------------------------------------------------------------

class Tracker:
    """One MLflow run as a context manager; a no-op (``active`` False) when tracking is off or unavailable.

    ``with Tracker("saliency", "cas-0.5", run_id=checkpoint.get("run_id")) as tracker:`` checks the store,
    creates the experiment (artifact location ``<artifact_root>/<experiment>``) if missing, then starts a run,
    or resumes ``run_id``. Each (metric, step) is logged at most once per run, so a resumed loop never
    duplicates an epoch. On exit the run ends FINISHED, FAILED (exception) or KILLED (KeyboardInterrupt).
    """

    def __init__(self, experiment: str, run_name: str, *, uri: str | None = None,
                 artifact_root: str | None = None, enabled: bool = True, required: bool = True,
                 run_id: str | None = None, tags: Mapping[str, Any] | None = None,
                 timeout_s: float = 5.0) -> None:
        self.experiment = _check_name("experiment", experiment)
        self.run_name = _check_name("run_name", run_name)
        if run_id is not None:
            _check_name("run_id", run_id)
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"tags: expected a mapping, got {type(tags).__name__}")
        self.uri = uri if uri is not None else default_tracking_uri(Path.cwd())
        self.artifact_root = artifact_root if artifact_root is not None else _artifact_root_for(self.uri)
        self.enabled, self.required, self.timeout_s = enabled, required, timeout_s
        self._resume_id = run_id
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._state = "new"  # new -> tracking | untracked -> closed
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._stack: contextlib.ExitStack | None = None
        self._logged_steps: dict[str, set[int]] = {}

    @property
    def active(self) -> bool:
        """True while a run is open and being logged to."""
        return self._state == "tracking"

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (keep it in the checkpoint to resume); None when untracked."""
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    # -- lifecycle

    def __enter__(self) -> Tracker:
        if self._state != "new":
            raise RuntimeError(f"Tracker: each Tracker opens one run; this one is already {self._state}")
        if not self.enabled:
            return self._untracked("tracking is disabled (enabled=False)")
        try:
            check_store(self.uri, self.timeout_s)
            check_artifact_store(self._artifact_location(), self.timeout_s)
        except TrackingUnavailable as err:
            if self.required:
                raise
            return self._untracked(str(err))
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(_tracking_uri_set(self.uri))
            self._open_run(_client(self.uri))
        except BaseException:
            stack.close()
            raise
        self._stack, self._state = stack, "tracking"
        log.info("MLflow run %s (%s) in experiment %r at %s", self._run_id, self.run_name, self.experiment,
                 self.uri)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._state != "tracking":
            self._state = "closed"
            return
        status = _final_status(exc)
        assert self._stack is not None and self._run_id is not None
        try:
            mlflow = _mlflow()
            if status != "FINISHED" and exc is not None:
                self._client.set_tag(self._run_id, "lofiseg.error", f"{type(exc).__name__}: {exc}"[:5000])
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self._run_id:
                mlflow.end_run(status)
            else:
                self._client.set_terminated(self._run_id, status)
        except Exception as err:
            if exc is None:
                raise TrackingUnavailable(f"could not end MLflow run {self._run_id} at {self.uri!r} as "
                                          f"{status}: {err}") from err
            log.error("could not mark MLflow run %s as %s: %s", self._run_id, status, err)
        finally:
            self._stack.close()
            self._stack, self._state = None, "closed"

    def _untracked(self, reason: str) -> Tracker:
        log.warning("training WITHOUT tracking: %s", reason)
        self._state = "untracked"
        return self

    @property
    def _client(self) -> MlflowClient:
        return _client(self.uri)

    def _artifact_location(self) -> str | None:
        """Where this run's artifacts will go: the experiment's location, or the one it will be created with."""
        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return experiment.artifact_location
        if self.artifact_root is None:
            return None
        return f"{self.artifact_root.rstrip('/')}/{_safe_name(self.experiment)}"

    def _experiment(self, client: MlflowClient) -> str:
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            location = None
            if self.artifact_root is not None:
                location = f"{self.artifact_root.rstrip('/')}/{_safe_name(self.experiment)}"
            try:
                return client.create_experiment(self.experiment, artifact_location=location)
            except Exception:  # another stage created it meanwhile
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            log.warning("restoring deleted MLflow experiment %r (id %s)", self.experiment,
                        experiment.experiment_id)
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _open_run(self, client: MlflowClient) -> None:
        mlflow = _mlflow()
        self._experiment_id = self._experiment(client)
        if self._resume_id is None:
            run = mlflow.start_run(experiment_id=self._experiment_id, run_name=self.run_name, tags=self._tags)
            self._run_id = run.info.run_id
            return
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(self._resume_id)
        except MlflowException as err:
            raise ValueError(f"run_id: MLflow run {self._resume_id!r} (from the checkpoint) is not in the "
                             f"store {self.uri!r}; use the store it was logged to (MLFLOW_TRACKING_URI) or "
                             f"delete the checkpoint to start a new run") from err
        if run.info.experiment_id != self._experiment_id or run.info.lifecycle_stage == "deleted":
            raise ValueError(f"run_id: MLflow run {self._resume_id!r} belongs to experiment id "
                             f"{run.info.experiment_id} ({run.info.lifecycle_stage}), expected an active run "
                             f"of experiment {self.experiment!r} (id {self._experiment_id})")
        from mlflow.entities import RunTag

        self._logged_steps = {key: {m.step for m in client.get_metric_history(self._resume_id, key)}
                              for key in run.data.metrics}
        if self._tags:
            client.log_batch(self._resume_id, tags=[RunTag(k, v) for k, v in self._tags.items()])
        mlflow.start_run(run_id=self._resume_id)  # last: nothing can fail after the run is RUNNING again
        self._run_id = self._resume_id
        log.info("resuming MLflow run %s; last steps already logged: %s", self._run_id,
                 {k: max(v) for k, v in self._logged_steps.items() if v})

    def _logging(self) -> bool:
        """True: log; False: untracked no-op; a Tracker used outside its ``with`` block raises."""
        if self._state == "tracking":
            return True
        if self._state == "untracked":
            return False
        raise RuntimeError(f"Tracker is {self._state}: log inside `with Tracker(...) as tracker:`")

    # -- logging

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log params, nested keys joined by dots and values stringified.

        Params already in the run with the same value are skipped (resume); a different value raises
        ValueError, since MLflow keeps one value per param.
        """
        flat = {key: str(value) for key, value in _flatten(params, "params").items()}
        if not self._logging():
            return
        from mlflow.entities import Param

        logged = self._client.get_run(self._run_id).data.params
        conflicts = [f"{key}: logged {logged[key]!r}, now {value!r}" for key, value in flat.items()
                     if key in logged and logged[key] != value]
        if conflicts:
            raise ValueError(f"params: MLflow run {self._run_id} already holds other values for "
                             f"{'; '.join(conflicts)}. A resumed run must keep its params: restore them, or "
                             f"delete the checkpoint to start a new run")
        new = [Param(key, value) for key, value in flat.items() if key not in logged]
        if new:
            self._client.log_batch(self._run_id, params=new)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log metrics at ``step`` (the epoch); a (metric, step) pair already in the run is skipped."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"step: expected a non-negative int (the epoch), got {step!r}")
        values = {key: _as_float(key, value) for key, value in _flatten(metrics, "metrics").items()}
        if not self._logging():
            return
        from mlflow.entities import Metric

        step, now = int(step), int(time.time() * 1000)
        fresh = [Metric(key, value, now, step) for key, value in values.items()
                 if step not in self._logged_steps.get(key, ())]
        if len(fresh) < len(values):
            log.info("step %d of %s already logged to run %s: skipped", step,
                     sorted(set(values) - {m.key for m in fresh}), self._run_id)
        if fresh:
            self._client.log_batch(self._run_id, metrics=fresh)
        for metric in fresh:
            self._logged_steps.setdefault(metric.key, set()).add(step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; values are stringified."""
        if not isinstance(tags, Mapping):
            raise TypeError(f"tags: expected a mapping, got {type(tags).__name__}")
        if not self._logging() or not tags:
            return
        from mlflow.entities import RunTag

        self._client.log_batch(self._run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        """Copy a file or a whole folder into the run's artifacts (under ``subdir`` if given)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path: artifact {path} does not exist")
        if self._logging():
            self._client.log_artifact(self._run_id, str(path), artifact_path=subdir)

    def log_figure(self, figure: Figure, name: str) -> None:
        """Save a matplotlib figure as artifact ``name``, format from its extension (``plots/loss.png``)."""
        _check_name("name", name)
        if self._logging():
            self._client.log_figure(self._run_id, figure, name)

    def log_image(self, image: np.ndarray | torch.Tensor, name: str) -> None:
        """Save an (H, W) or (H, W, 1|3|4) image, uint8 or float in [0, 1], as artifact ``name`` (.png)."""
        _check_name("name", name)
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image: expected shape (H, W) or (H, W, 1|3|4), got {array.shape}")
        if self._logging():
            self._client.log_image(self._run_id, array, artifact_file=name)

    def log_text(self, text: str, name: str) -> None:
        """Save ``text`` as artifact ``name`` (e.g. ``reports/summary.md``)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        _check_name("name", name)
        if self._logging():
            self._client.log_text(self._run_id, text, name)

    def log_dict(self, values: Mapping[str, Any], name: str) -> None:
        """Save a mapping as artifact ``name`` (JSON, or YAML for .yml/.yaml)."""
        if not isinstance(values, Mapping):
            raise TypeError(f"values: expected a mapping, got {type(values).__name__}")
        _check_name("name", name)
        if self._logging():
            self._client.log_dict(self._run_id, dict(values), name)

    def log_model(self, model: torch.nn.Module, name: str, example_input: np.ndarray | torch.Tensor,
                  pip_requirements: list[str] | None = None, *, step: int = 0,
                  save_example: bool = False) -> str | None:
        """Log ``model`` (pickle) with signature (N, C, H, W) -> (N, M, H, W), N/H/W free; return its URI
        (``models:/<model id>``).

        ``example_input`` (one (N, C, H, W) float batch) fixes C and, through one eval-mode forward pass, M;
        with ``save_example`` it is also stored in the model as its input example (what the registry shows).
        The pickle format keeps any input size (MLflow's default pt2 export would freeze it to the example's);
        loading needs the model's classes importable. ``pip_requirements`` default: torch, cloudpickle and the
        pinned distributions of the model's module classes (no slow inference). None when untracked.
        """
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        _check_name("name", name)
        example = _example_tensor(example_input)
        output = _forward(model, example)
        if not self._logging():
            return None
        signature = segmentation_signature(example, output)
        requirements = pip_requirements if pip_requirements is not None else _default_pip_requirements(model)
        info = _mlflow().pytorch.log_model(model, name=name, signature=signature,
                                           serialization_format="pickle", pip_requirements=requirements,
                                           step=step, input_example=example.numpy() if save_example else None)
        return info.model_uri
