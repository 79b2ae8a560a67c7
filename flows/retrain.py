"""The `retrain` flow: scheduled retraining on a GPU worker, with the registry's promotion gate.

Steps: pull data and cache from the DVC remote (``dvc pull``), refresh the web images (the ``web`` stage runs
whatever DVC thinks, so new URLs or new objects under an S3 prefix are fetched), bring the DAG up to date with
the `pipeline` flow (training, evaluation, and the ``register@*`` stages, which register each changed model as
``challenger`` and move ``champion`` only when the gate says so), then push what changed (``dvc push``).

    python -m flows.retrain                      # once, here
    python -m flows.retrain --serve              # here, on the cron of params.yaml retrain.cron
    prefect deploy --name retrain-weekly         # prefect.yaml: the same flow on the `gpu` work pool
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.schedules import Cron

from flows.dag import read_dag, remote_args, waves
from flows.pipeline import pipeline, run_stage
from lofiseg.config import load_params
from lofiseg.dvc_cli import dvc_command
from lofiseg.viz.figures import markdown_table

DVC_TIMEOUT_S = 3 * 3600


def has_remote(repo: str, remote: str | None) -> bool:
    if remote is not None:
        return True
    return bool(dvc_command(repo, "remote", "list").stdout.strip())


@task(retries=2, retry_delay_seconds=30)
def dvc_pull(repo: str, remote: str | None) -> str:
    """Fetch every output DVC knows of; ones the remote does not hold yet (a first run) are rebuilt later."""
    args = ["pull", "--allow-missing", *remote_args(remote)]
    return dvc_command(repo, *args, timeout=DVC_TIMEOUT_S).stdout


@task(retries=2, retry_delay_seconds=30)
def dvc_push(repo: str, remote: str | None) -> str:
    args = ["push", *remote_args(remote)]
    return dvc_command(repo, *args, timeout=DVC_TIMEOUT_S).stdout


@task
def record(repo: str, stage: str) -> None:
    dvc_command(repo, "commit", "--force", stage)


def registry_decisions(repo: str) -> list[dict]:
    """What the register stages decided this time (reports/registry/<model>.json)."""
    folder = Path(repo, "reports/registry")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def decisions_markdown(decisions: list[dict]) -> str:
    rows = [[d.get("name", "?"), str(d.get("version", "")), str(d.get("decision", "")), d.get("reason", "")]
            for d in decisions]
    return markdown_table(["model", "version", "decision", "reason"], rows)


@flow(name="lofiseg-retrain", log_prints=True)
def retrain(repo: str = ".", remote: str | None = None, push: bool | None = None,
            targets: list[str] | None = None, refresh_web: bool = True) -> dict:
    """Pull, refresh the web images, repro (train, evaluate, register + gate), push; returns a summary."""
    logger = get_run_logger()
    repo = os.fspath(Path(repo).resolve())
    params = load_params(Path(repo, "params.yaml"))
    remote = remote if remote is not None else params.retrain.dvc_remote
    push = params.retrain.push if push is None else push
    remote_known = has_remote(repo, remote)
    if remote_known:
        logger.info("%s", dvc_pull(repo, remote))
    else:
        logger.warning("no DVC remote configured: nothing to pull or push (see README, 'Operations')")
    stages = read_dag(repo)
    needed = {name for wave in waves(stages, targets) for name in wave}
    if refresh_web and "web" in needed:  # whatever DVC thinks: new URLs or S3 objects appear upstream of it
        upstream = sorted(stages["web"].upstream)
        if upstream:
            pipeline(repo, upstream)
        run_stage(repo, stages["web"], flow_run.get_id() or "local")
        record(repo, "web")
    result = pipeline(repo, targets)
    decisions = registry_decisions(repo)
    create_markdown_artifact(key="promotion-decisions", markdown=decisions_markdown(decisions),
                             description="registry decisions of this retrain run")
    if remote_known and push:
        logger.info("%s", dvc_push(repo, remote))
    return {**result, "decisions": decisions, "pushed": remote_known and push}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Retrain, evaluate, register and promote (Prefect flow)")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--remote", default=None, help="DVC remote (default: params retrain.dvc_remote)")
    parser.add_argument("--no-push", action="store_true")
    parser.add_argument("--target", action="append", dest="targets", help="stages to bring up to date")
    parser.add_argument("--serve", action="store_true", help="stay up and run on params retrain.cron")
    args = parser.parse_args(argv)
    if args.serve:
        params = load_params(Path(args.repo, "params.yaml"))
        retrain.serve(name="retrain-local", schedules=[Cron(params.retrain.cron, timezone=params.retrain.timezone)],
                      parameters={"repo": os.fspath(Path(args.repo).resolve())})
        return
    result = retrain(args.repo, args.remote, False if args.no_push else None, args.targets)
    print(decisions_markdown(result["decisions"]))


if __name__ == "__main__":
    main()
