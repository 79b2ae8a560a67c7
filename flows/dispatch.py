"""The pipeline flow's fan-out to a work pool: stages sent to workers through the `stage` deployment.

Each dispatched stage runs on a worker in its own clone (``flows/worker.py``), which pushes the outputs to the
DVC remote and publishes the stage's dvc.lock entry. Back here, after the whole wave, the entries go into the
local dvc.lock (one writer) and the outputs are pulled, so the workspace ends exactly as ``dvc repro`` would
leave it. Workers check out a commit, so tracked files must be committed and pushed first.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task

from flows.dag import TRANSFER_TIMEOUT_S, remote_args, stale
from flows.worker import artifact_key, lock_from_markdown
from lofiseg.atomic import atomic_write_text
from lofiseg.dvc_cli import dvc_command, read_dvc_yaml
from lofiseg.provenance import git_commit, git_dirty, git_remote_url

WORKER_STAGES = ("train_*", "pseudo_label@*")  # the heavy, per-class / per-model stages
GIT_URL_ENV = "LOFISEG_GIT_URL"


@dataclass(frozen=True)
class Dispatch:
    deployment: str             # "<flow name>/<deployment name>", e.g. "lofiseg-stage/stage"
    git_url: str                # where workers clone from
    rev: str                    # the commit they check out
    remote: str | None = None   # DVC remote (None: the repository's default)
    patterns: tuple[str, ...] = WORKER_STAGES

    def wants(self, stage: str) -> bool:
        return any(fnmatch.fnmatchcase(stage, pattern) for pattern in self.patterns)


def prepare_dispatch(repo: str, deployment: str, remote: str | None = None,
                     patterns: Sequence[str] | None = None) -> Dispatch:
    """Check the repository can be reproduced elsewhere (a commit, nothing uncommitted but dvc.lock, a git
    URL from ``$LOFISEG_GIT_URL`` or the ``origin`` remote) and describe where its stages go."""
    if "/" not in deployment:
        raise ValueError(f"workers: expected a deployment as '<flow>/<deployment>', got {deployment!r} "
                         "(e.g. 'lofiseg-stage/stage', see prefect.yaml)")
    rev = git_commit(repo)
    if rev is None:
        raise RuntimeError(f"{repo}: not a git repository with a commit; workers check out a commit")
    if git_dirty(repo):
        raise RuntimeError(f"{repo}: tracked files differ from {rev[:8]}; commit (and push) code, params.yaml and "
                           "dvc.yaml first: workers check out the commit, not this workspace")
    git_url = os.environ.get(GIT_URL_ENV) or git_remote_url(repo, "origin")
    if not git_url:
        raise RuntimeError(f"{repo}: no git URL for the workers: set ${GIT_URL_ENV} or a git remote 'origin'")
    return Dispatch(deployment, git_url, rev, remote, tuple(patterns or WORKER_STAGES))


def read_lock_artifact(flow_run_id: Any, stage: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(stage)])),
                                      flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    if not found:
        raise RuntimeError(f"flow run {flow_run_id} of stage {stage} completed without its dvc.lock artifact")
    return lock_from_markdown(found[-1].data)


@task(task_run_name="{stage} -> worker")
def dispatch_stage(dispatch: Dispatch, stage: str, lock: str, orchestrator_run_id: str,
                   timeout_seconds: float) -> dict[str, Any]:
    """Run ``stage`` as a flow run of the worker deployment and wait for it (its command's ``timeout_seconds``,
    which the worker enforces, plus time for its transfers); returns its dvc.lock entry."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    started = time.monotonic()
    run = run_deployment(dispatch.deployment, timeout=timeout_seconds + TRANSFER_TIMEOUT_S, poll_interval=2,
                         parameters={"git_url": dispatch.git_url, "rev": dispatch.rev, "stage": stage, "lock": lock,
                                     "orchestrator_run_id": orchestrator_run_id, "remote": dispatch.remote})
    state = run.state
    if state is None or not state.is_completed():
        raise RuntimeError(f"stage {stage}: flow run {run.name} of {dispatch.deployment} ended "
                           f"{state.name if state else 'without a state'}: {state.message if state else ''}")
    logger.info("%s ran as flow run %s of %s", stage, run.name, dispatch.deployment)
    return {"stage": stage, "where": f"worker: flow run {run.name}", "seconds": round(time.monotonic() - started, 1),
            "flow_run": run.name, "flow_run_id": str(run.id),
            "lock": read_lock_artifact(run.id, stage)}


def record_worker_outputs(repo: str, results: Sequence[dict[str, Any]], remote: str | None = None) -> None:
    """Write the workers' dvc.lock entries into ``repo``'s dvc.lock, pull their outputs, check DVC agrees."""
    if not results:
        return
    path = Path(repo, "dvc.lock")
    lock = read_dvc_yaml(path) if path.exists() else None
    lock = lock or {"schema": "2.0", "stages": {}}
    lock.setdefault("stages", {}).update({r["stage"]: r["lock"] for r in results})
    atomic_write_text(path, yaml.safe_dump(lock, sort_keys=False))
    names = [r["stage"] for r in results]
    dvc_command(repo, "pull", *remote_args(remote), *names, timeout=TRANSFER_TIMEOUT_S)
    still = stale(repo, names)
    if still:
        raise RuntimeError(f"after pulling the workers' outputs DVC still finds {still} changed in {repo}")
