"""The `retrain` flow: scheduled retraining on a GPU worker, with the registry's promotion gate.

Steps: pull data and cache from the DVC remote (``dvc pull``), refresh the web images (the ``web`` stage runs
whatever DVC thinks, so new URLs or new objects under an S3 prefix are fetched), bring the DAG up to date with
the `pipeline` flow (training, evaluation, and the ``register@*`` stages, which register each changed model as
``challenger`` and move ``champion`` only when the gate says so), then push what changed (``dvc push``).

If the run changed anything git versions (``dvc.lock``, metrics, reports: :mod:`flows.results_branch`), the
flow commits it on branch ``retrain/<UTC date>-<flow run name>`` (the stages that ran and the registry
decisions in the message), pushes the branch to git remote ``retrain.git_remote``, and tags every MLflow run
and model version the run produced with ``git.commit`` and ``git.branch``; merging that branch is how its
``dvc.lock`` reaches the next run. Nothing changed: no commit, no branch. The checkout stays on its branch:
registration happens before the commit, on ``registry.promote_from`` (what the deployment clones), so a
retrain can promote; from any other branch it registers challengers only.

    python -m flows.retrain                      # once, here
    python -m flows.retrain --serve              # here, on the cron of params.yaml retrain.cron
    prefect deploy --name retrain-weekly         # prefect.yaml: the same flow on the `gpu` work pool
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.schedules import Cron

from flows.dag import read_dag, remote_args, waves
from flows.pipeline import pipeline, run_stage
from flows.results_branch import branch_name, commit_tree, git_tracked_outputs, push_branch, results_tree
from lofiseg.config import Params, load_params
from lofiseg.dvc_cli import dvc_command
from lofiseg.provenance import ORCHESTRATOR_TAG, git_branch
from lofiseg.track.registry import TAG_BRANCH, Registry
from lofiseg.track.runs import runs_with_tag, tag_runs
from lofiseg.track.store import default_tracking_uri
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


@task(retries=2, retry_delay_seconds=30)
def git_push(repo: str, remote: str, branch: str) -> bool:
    return push_branch(repo, remote, branch)


def registry_decisions(repo: str, ran: Sequence[str]) -> list[dict]:
    """What the ``register@<model>`` stages that ran decided (reports/registry/<model>.json)."""
    models = sorted(name.split("@", 1)[1] for name in ran if name.startswith("register@"))
    files = [Path(repo, "reports/registry", f"{model}.json") for model in models]
    return [json.loads(file.read_text()) for file in files if file.is_file()]


def decisions_markdown(decisions: list[dict]) -> str:
    rows = [[d.get("name", "?"), str(d.get("version", "")), str(d.get("decision", "")), d.get("reason", "")]
            for d in decisions]
    return markdown_table(["model", "version", "decision", "reason"], rows)


def commit_message(run_name: str, run_id: str, ran: Sequence[str], decisions: Sequence[dict]) -> str:
    """The retrain commit's message: what ran, what the registry decided, which Prefect flow run did it."""
    lines = [f"retrain {run_name}: {len(ran)} stage(s) ran, {len(decisions)} registry decision(s)", "",
             "Stages that ran:", *[f"- {name}" for name in ran], "", "Registry decisions:",
             *[f"- {d.get('name', '?')} v{d.get('version', '?')}: {d.get('decision', '?')} ({d.get('reason', '')})"
               for d in decisions or [{"name": "none", "version": "-", "decision": "-"}]],
             "", f"Prefect-Flow-Run: {run_id}"]
    return "\n".join(lines) + "\n"


def tag_outputs(repo: str, params: Params, run_ids: Sequence[str], tags: dict[str, str]) -> list[str]:
    """Put ``tags`` on the MLflow runs ``run_ids`` and on the model versions they created; returns
    ``<model> v<version>`` of those versions."""
    if not params.tracking.enabled or not run_ids:
        return []
    uri = default_tracking_uri(repo)
    tag_runs(run_ids, tags, uri=uri)
    return [f"{name} v{version}" for name, version in Registry(uri).tag_versions_of_runs(run_ids, tags)]


def version_results(repo: str, params: Params, before: str, ran: Sequence[str], decisions: Sequence[dict],
                    run_ids: Sequence[str], push: bool) -> dict[str, Any]:
    """Commit what git versions on a ``retrain/...`` branch if it changed since ``before`` (a tree), push the
    branch, tag the runs and model versions; a Prefect artifact and the log say what happened."""
    logger = get_run_logger()
    tree = results_tree(repo, git_tracked_outputs(repo))
    if tree == before:
        logger.info("nothing changed (dvc.lock, metrics and reports as before): no commit, no branch")
        create_markdown_artifact(key="retrain-commit", description="git commit of this retrain run",
                                 markdown="Nothing changed: no commit, no branch.\n")
        return {"commit": None, "branch": None, "git_pushed": False}
    run_name = flow_run.get_name() or "local"
    branch = branch_name(datetime.now(UTC), run_name)
    commit = commit_tree(repo, tree, branch, commit_message(run_name, flow_run.get_id() or "local", ran, decisions))
    remote = params.retrain.git_remote
    pushed = push and git_push(repo, remote, branch)
    if push and not pushed:
        logger.warning("no git remote %r: branch %s stays in %s (params retrain.git_remote)", remote, branch, repo)
    tagged = tag_outputs(repo, params, run_ids, {"git.commit": commit, TAG_BRANCH: branch})
    where = f"pushed to `{remote}`" if pushed else "not pushed"
    logger.info("committed %s on branch %s (%s); tagged %d MLflow run(s), model versions %s", commit, branch, where,
                len(run_ids), tagged or "none")
    create_markdown_artifact(
        key="retrain-commit", description="git commit of this retrain run",
        markdown=(f"Branch `{branch}`, commit `{commit}`, {where}.\n\nStages that ran: {', '.join(ran) or 'none'}"
                  f"\n\nTagged `git.commit`/`git.branch`: {len(run_ids)} MLflow run(s), model versions "
                  f"{', '.join(tagged) or 'none'}.\n"))
    return {"commit": commit, "branch": branch, "git_pushed": pushed}


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
    if git_branch(repo) != params.registry.promote_from:
        logger.warning("checkout is on %s, not registry.promote_from %r: models register as challengers only",
                       git_branch(repo) or "a detached HEAD", params.registry.promote_from)
    before = results_tree(repo, git_tracked_outputs(repo))
    if remote_known:
        logger.info("%s", dvc_pull(repo, remote))
    else:
        logger.warning("no DVC remote configured: nothing to pull or push (see README, 'Operations')")
    stages = read_dag(repo)
    needed = {name for wave in waves(stages, targets) for name in wave}
    ran: list[str] = []
    mlflow_runs: list[dict[str, str]] = []  # of the pipeline subflows; the web stage's below
    if refresh_web and "web" in needed:  # whatever DVC thinks: new URLs or S3 objects appear upstream of it
        upstream = sorted(stages["web"].upstream)
        if upstream:
            before_web = pipeline(repo, upstream)
            ran, mlflow_runs = ran + before_web["ran"], mlflow_runs + before_web["mlflow_runs"]
        web = params.orchestration.stage_policy("web")  # web images come over the network: params' retries
        run_stage.with_options(retries=web.retries, retry_delay_seconds=web.retry_delay_seconds)(
            repo, stages["web"], flow_run.get_id() or "local", web.timeout_seconds)
        record(repo, "web")
        ran.append("web")
    result = pipeline(repo, targets)
    ran, mlflow_runs = ran + result["ran"], mlflow_runs + result["mlflow_runs"]
    decisions = registry_decisions(repo, ran)
    create_markdown_artifact(key="promotion-decisions", markdown=decisions_markdown(decisions),
                             description="registry decisions of this retrain run")
    if remote_known and push:
        logger.info("%s", dvc_push(repo, remote))
    if params.tracking.enabled:  # stages run here directly (web) carry this flow run's id
        mlflow_runs += runs_with_tag(ORCHESTRATOR_TAG, flow_run.get_id() or "local", uri=default_tracking_uri(repo))
    run_ids = sorted({r["run_id"] for r in mlflow_runs})
    versioned = version_results(repo, params, before, ran, decisions, run_ids, remote_known and push)
    return {**result, "decisions": decisions, "pushed": remote_known and push, **versioned}


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
    print(f"results on branch {result['branch']} ({result['commit']}), "
          f"{'pushed' if result['git_pushed'] else 'not pushed'}" if result["commit"] else
          "nothing changed: no commit, no branch")


if __name__ == "__main__":
    main()
