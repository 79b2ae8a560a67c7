"""Reading runs back from the MLflow store (by tag, by id, or every run of an experiment, for comparisons), and
tagging them after the fact."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lofiseg.data.format import sha256_file
from lofiseg.track.store import check_store, default_tracking_uri, mlflow_client
from lofiseg.track.values import check_name

if TYPE_CHECKING:
    from mlflow import MlflowClient

TAG_BUNDLE_SHA256 = "lofiseg.bundle_sha256"  # on a training run: the sha256 of the model.pt it wrote


def runs_with_tag(key: str, value: str, *, uri: str | None = None) -> list[dict[str, str]]:
    """Every run, in any experiment, tagged ``key = value``: id, experiment, name and status."""
    uri = uri or default_tracking_uri(Path.cwd())
    check_store(uri)
    client = mlflow_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{key}` = '{value}'") if experiments else []
    return [{"run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "run_name": r.info.run_name,
             "status": r.info.status} for r in runs]


def bundle_run(model_file: str | os.PathLike, *, uri: str | None = None) -> str | None:
    """The id of the MLflow run that wrote ``model_file`` (a training run tags itself with the file's sha256,
    :data:`TAG_BUNDLE_SHA256`: the run id lives in MLflow, not in the DVC output); the latest when several
    runs wrote the same bytes; None when none did (tracking was off)."""
    uri = uri or default_tracking_uri(Path.cwd())
    check_store(uri)
    client = mlflow_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, filter_string=f"tags.`{TAG_BUNDLE_SHA256}` = '{sha256_file(model_file)}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def tag_runs(run_ids: Sequence[str], tags: dict[str, str], *, uri: str | None = None) -> None:
    """Set ``tags`` on each of the runs ``run_ids`` (e.g. the commit that versions what they produced)."""
    if isinstance(run_ids, str):
        raise TypeError(f"run_ids: expected a list of MLflow run ids, got the string {run_ids!r}")
    uri = uri or default_tracking_uri(Path.cwd())
    check_store(uri)
    client = mlflow_client(uri)
    for run_id in run_ids:
        for key, value in tags.items():
            client.set_tag(check_name("run_ids", run_id), key, str(value))


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
    client = mlflow_client(uri)
    from mlflow.exceptions import MlflowException

    records = []
    for run_id in run_ids:
        try:
            run = client.get_run(check_name("run_ids", run_id))
        except MlflowException as err:
            raise ValueError(f"run_ids: no MLflow run {run_id!r} in the store {uri!r}") from err
        records.append(_run_record(client, run, curves))
    return records


def experiment_runs(experiment: str, *, uri: str | None = None, curves: bool = True,
                    statuses: Sequence[str] | None = ("FINISHED",)) -> list[dict[str, Any]]:
    """The active runs of ``experiment`` (oldest first) as dicts like :func:`runs_by_id`; only those whose
    status is in ``statuses`` (default FINISHED; None = every status)."""
    check_name("experiment", experiment)
    uri = uri or default_tracking_uri(Path.cwd())
    check_store(uri)
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"experiment: no MLflow experiment {experiment!r} in the store {uri!r}; "
                         f"it has {names}")
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=10000)
    wanted = None if statuses is None else {s.upper() for s in statuses}
    return [_run_record(client, run, curves) for run in runs if wanted is None or run.info.status in wanted]
