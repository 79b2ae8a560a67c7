"""The MLflow store: where it lives, whether it can be used, and the lazy import of mlflow itself.

Default store: a sqlite database ``<repo>/mlflow.db`` and artifacts in ``<repo>/mlartifacts`` (both
git-ignored); ``MLFLOW_TRACKING_URI`` overrides the database, ``MLFLOW_ARTIFACT_ROOT`` (lofiseg's own
variable, MLflow has none) the artifact root; an ``s3://`` root (any S3-compatible store: ``MLFLOW_S3_ENDPOINT_URL``)
is checked like the store. :func:`check_store` and :func:`check_artifact_store` fail fast, within a few seconds,
with a :class:`TrackingUnavailable` saying how to fix or bypass the problem.

:mod:`lofiseg.track` is the only package of lofiseg that imports mlflow, and only through :func:`import_mlflow`
(or inside functions that called it), so importing its modules stays cheap.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lofiseg.data.transfer import s3_client

if TYPE_CHECKING:
    from mlflow import MlflowClient

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


def scheme_of(uri: str) -> str:
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return match.group(1).lower() if match else ""


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI; None for an in-memory database."""
    body = uri.split("?", 1)[0]
    if not body.startswith("sqlite:///"):
        return None
    path = body[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def artifact_root_for(uri: str) -> str | None:
    """Artifacts beside a sqlite DB; a tracking server chooses its own (None) unless overridden."""
    if scheme_of(uri) == "sqlite" and (db := _sqlite_path(uri)) is not None:
        return default_artifact_root(db.resolve().parent)
    if scheme_of(uri) in ("http", "https", "databricks"):
        return os.environ.get(ARTIFACT_ROOT_ENV, "").strip() or None
    return default_artifact_root(Path.cwd())


# --- lazy imports and process-wide MLflow state ---------------------------------------------------------

def import_mlflow() -> ModuleType:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline project: never phone home
    import mlflow
    import mlflow.pytorch  # noqa: F401  (registers the flavor under mlflow.pytorch)

    return mlflow


def mlflow_client(uri: str) -> MlflowClient:
    return import_mlflow().MlflowClient(tracking_uri=uri)


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
def tracking_uri_set(uri: str) -> Iterator[None]:
    """Make ``uri`` MLflow's global tracking URI (log_model needs it), then restore the previous state."""
    mlflow = import_mlflow()
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


def sqlite_has_schema(db: Path) -> bool:
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
    if sqlite_has_schema(db):
        with contextlib.suppress(Exception):  # fast path, no lock; on failure (mid-migration?) wait below
            mlflow_client(uri).search_experiments(max_results=1)
            return
    from filelock import FileLock, Timeout

    try:  # the first process creates the tables; parallel stages wait instead of racing on migrations
        with FileLock(f"{db}.lock", timeout=SQLITE_LOCK_TIMEOUT_S):
            mlflow_client(uri).search_experiments(max_results=1)
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
            mlflow_client(uri).search_experiments(max_results=1)
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
    scheme = scheme_of(uri)
    if scheme == "sqlite":
        _prepare_sqlite(uri)
        return
    if scheme in ("http", "https"):
        _check_http_health(uri, timeout_s)
    _probe(uri, timeout_s)


# --- artifacts on S3 (any S3-compatible store) --------------------------------------------------------------

S3_ENDPOINT_ENV = "MLFLOW_S3_ENDPOINT_URL"  # MLflow's own; boto3's AWS_ENDPOINT_URL_S3 works as well


def check_artifact_store(artifact_location: str | None, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` if an ``s3://`` artifact location cannot be written to, within about
    2 x ``timeout_s``; any other location (a folder, a tracking server's choice) is left to MLflow.

    One HeadBucket request with the connect/read timeouts set to ``timeout_s`` and at most 2 attempts; the
    message names the endpoint and the bucket.
    """
    if not artifact_location or scheme_of(artifact_location) != "s3":
        return
    if not timeout_s > 0:
        raise ValueError(f"timeout_s: expected a positive number of seconds, got {timeout_s!r}")
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = artifact_location[len("s3://"):].split("/", 1)[0]
    if not bucket:
        raise ValueError(f"artifact_location: expected s3://<bucket>/<prefix>, got {artifact_location!r}")
    client = s3_client(os.environ.get(S3_ENDPOINT_ENV, "").strip() or None, timeout_seconds=timeout_s, retries=1,
                       unsigned_without_credentials=False)  # MLflow signs its requests: so does the check
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
