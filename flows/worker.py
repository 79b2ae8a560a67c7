"""The `stage` flow: one DVC stage on a worker of the pool, for the pipeline flow's fan-out.

The worker never shares a checkout, a lock or a cache with anyone: it clones the repository at the
orchestrator's commit into a private directory, writes the orchestrator's dvc.lock there (the entries of the
upstream stages are newer than the commit's), pulls the stage's dependencies from the DVC remote, runs
``dvc repro --single-item <stage>`` (its output streamed into the flow run's logs, its timeout from the
commit's params ``orchestration.stages``), pushes the outputs, and publishes the stage's new dvc.lock entry as an
artifact of its flow run. The orchestrator writes that entry into its own dvc.lock and pulls the outputs, so
only one process ever writes a given lock file.

Environment of a worker: the DVC remote's credentials (e.g. ``AWS_*``), ``MLFLOW_TRACKING_URI``, and optionally
``LOFISEG_DVC_CACHE`` (a cache directory kept between runs, so data is not downloaded again).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.dag import TRANSFER_TIMEOUT_S, read_dag, remote_args, stage_env
from flows.stream import run_streaming
from lofiseg.atomic import atomic_write_text
from lofiseg.config import load_params
from lofiseg.dvc_cli import dvc_command, dvc_executable, read_dvc_yaml

CACHE_ENV = "LOFISEG_DVC_CACHE"


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes: ``train_single@sun`` ->
    ``dvc-lock-train-single-sun``."""
    return "dvc-lock-" + "".join(c if c.isalnum() else "-" for c in stage.lower())


def lock_markdown(stage: str, entry: dict[str, Any]) -> str:
    return f"dvc.lock entry of `{stage}`\n\n```json\n{json.dumps(entry, indent=1, sort_keys=True)}\n```\n"


def lock_from_markdown(markdown: str) -> dict[str, Any]:
    """The entry :func:`lock_markdown` wrote."""
    start, end = markdown.index("```json\n") + len("```json\n"), markdown.rindex("```")
    return json.loads(markdown[start:end])


def git(cwd: str | os.PathLike, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def checkout(git_url: str, rev: str, where: Path) -> Path:
    """A private clone of ``git_url`` at commit ``rev``."""
    git(where.parent, "clone", "--quiet", "--no-checkout", git_url, where.name)
    try:
        git(where, "checkout", "--quiet", "--detach", rev)
    except RuntimeError as err:
        raise RuntimeError(f"commit {rev} is not in {git_url}: push it before dispatching stages") from err
    cache = os.environ.get(CACHE_ENV)
    if cache:
        dvc_command(where, "cache", "dir", "--local", cache)
    return where


@flow(name="lofiseg-stage", log_prints=True, flow_run_name="{stage}")
def stage_on_worker(git_url: str, rev: str, stage: str, lock: str, orchestrator_run_id: str = "",
                    remote: str | None = None) -> dict[str, Any]:
    """Run ``stage`` of commit ``rev`` (with the orchestrator's dvc.lock text ``lock``) and push its outputs;
    returns and publishes its dvc.lock entry."""
    logger = get_run_logger()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lofiseg-stage-") as scratch:
        repo = checkout(git_url, rev, Path(scratch, "repo"))
        atomic_write_text(repo / "dvc.lock", lock)
        upstream = sorted(read_dag(repo)[stage].upstream)
        if upstream:
            logger.info("pulling the outputs of %s", ", ".join(upstream))
            dvc_command(repo, "pull", *remote_args(remote), *upstream, timeout=TRANSFER_TIMEOUT_S)
        logger.info("$ dvc repro --single-item %s  (on %s)", stage, socket.gethostname())
        env = stage_env(orchestrator_run_id or flow_run.get_id() or "")
        timeout = load_params(repo / "params.yaml").orchestration.stage_policy(stage).timeout_seconds
        run_streaming([dvc_executable(), "repro", "--single-item", stage], repo, env, timeout, logger,
                      name=f"dvc repro --single-item {stage}")
        dvc_command(repo, "push", *remote_args(remote), stage, timeout=TRANSFER_TIMEOUT_S)
        entry = read_dvc_yaml(repo / "dvc.lock")["stages"][stage]
    create_markdown_artifact(key=artifact_key(stage), markdown=lock_markdown(stage, entry),
                             description=f"dvc.lock entry of {stage}")
    seconds = round(time.monotonic() - started, 1)
    logger.info("%s done on %s in %.1f s; outputs pushed", stage, socket.gethostname(), seconds)
    return {"stage": stage, "lock": entry, "host": socket.gethostname(), "seconds": seconds}
