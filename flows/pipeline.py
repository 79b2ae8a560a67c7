"""The `pipeline` flow: the DVC DAG, stage by stage, as Prefect tasks.

Each stage becomes a task with its own logs (its output streamed as it runs), state, retries and timeout
(params ``orchestration.stages``). Stages run in waves of independent stages (read from dvc.yaml by DVC, never a
second hand-written list); within a wave they run concurrently, each as its plain command, and the stages of
the wave that finished are then recorded with one ``dvc commit``, so concurrent stages never contend for DVC's
lock or write its cache at the same time. A failed stage fails the flow run after the rest is recorded; the
stages downstream of it do not start, independent ones do. Stages DVC finds up to date are skipped. Parameter
overrides run as a DVC experiment (``dvc exp run --set-param``), so the result is versioned.

    python -m flows.pipeline                                # the whole DAG
    python -m flows.pipeline --target evaluate_saliency     # one stage and what it needs
    python -m flows.pipeline -S train_saliency.epochs=20    # a DVC experiment (--target, --name too)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.dag import TRANSFER_TIMEOUT_S, Stage, read_dag, remote_args, stage_env, stale, waves
from flows.dispatch import Dispatch, dispatch_stage, prepare_dispatch, record_worker_outputs
from flows.stream import run_streaming
from lofiseg.config import OrchestrationParams, load_params
from lofiseg.dvc_cli import dvc_command, dvc_executable
from lofiseg.provenance import ORCHESTRATOR_TAG
from lofiseg.track.runs import runs_with_tag
from lofiseg.viz.figures import markdown_table


class StagesFailed(RuntimeError):
    """Stages of the flow run failed; the message names them, the stages not started and what was recorded."""


@task(task_run_name="{stage.name}")  # the subprocess enforces the timeout: a thread task's own cannot stop it
def run_stage(repo: str, stage: Stage, flow_run_id: str, timeout_seconds: float) -> dict[str, Any]:
    """Run one stage's command as dvc repro would: declared outputs removed first, output streamed to logs."""
    logger = get_run_logger()
    for out in stage.outs:
        path = Path(repo, out)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    logger.info("$ %s", stage.cmd)
    started = time.monotonic()
    run_streaming(stage.cmd, repo, stage_env(flow_run_id), timeout_seconds, logger, name=f"stage {stage.name}")
    return {"stage": stage.name, "where": "here", "seconds": round(time.monotonic() - started, 1)}


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """``key=value`` items (``file:key=value`` for another params file), as ``dvc exp run -S`` takes them."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides: expected a list of key=value strings, got the string {overrides!r}")
    bad = [item for item in overrides if not isinstance(item, str) or "=" not in item or item.startswith("=")]
    if bad:
        raise ValueError(f"overrides: expected key=value items (e.g. train_saliency.epochs=20), got {bad}")
    return list(overrides)


@task  # the dvc subprocess enforces the timeout: a thread task's own timeout cannot stop it
def experiment(repo: str, overrides: list[str], targets: list[str] | None, flow_run_id: str,
               timeout_seconds: float, name: str | None = None) -> dict[str, Any]:
    """``dvc exp run --set-param ...`` on ``targets`` (default: the whole DAG) and what they need; DVC runs
    the stale stages one by one and records the result as an experiment. Returns its name and the stages
    that ran or were skipped."""
    logger = get_run_logger()
    cmd = [dvc_executable(), "exp", "run", *(["--name", name] if name else []),
           *[arg for item in overrides for arg in ("--set-param", item)], *(targets or [])]
    logger.info("$ %s", " ".join(cmd))
    stdout = run_streaming(cmd, repo, stage_env(flow_run_id), timeout_seconds, logger, name="dvc exp run").stdout
    ran = re.search(r"Ran experiment\(s\): (\S+)", stdout)
    return {"experiment": ran.group(1) if ran else name,
            "ran": re.findall(r"^Running stage '([^']+)'", stdout, flags=re.M),
            "skipped": re.findall(r"^Stage '([^']+)' didn't change, skipping", stdout, flags=re.M)}


def link_mlflow_runs(flow_run_id: str) -> list[dict[str, str]]:
    """The MLflow runs this flow run produced (they carry its id as a tag) as a Prefect artifact."""
    runs = runs_with_tag(ORCHESTRATOR_TAG, flow_run_id)
    rows = "\n".join(f"| {r['run_name']} | {r['run_id']} | {r['experiment_id']} | {r['status']} |" for r in runs)
    create_markdown_artifact(key="mlflow-runs", description="MLflow runs of this flow run",
                             markdown="| run | id | experiment | status |\n|---|---|---|---|\n" + rows)
    return runs


def stage_runs_markdown(stage_runs: Sequence[dict[str, Any]], skipped: Sequence[str],
                       not_started: Sequence[str] = ()) -> str:
    """The flow run's graph as a table: wave, stage, where it ran (here or a worker's flow run), its final
    state, seconds; then the stages skipped as up to date and those not started after a failure."""
    rows = [[str(r["wave"]), r["stage"], r["where"], r["state"], f"{r['seconds']:.1f}"] for r in stage_runs]
    text = (markdown_table(["wave", "stage", "ran on", "state", "seconds"], rows)
            + f"\n\nUp to date, skipped ({len(skipped)}): {', '.join(skipped) or 'none'}\n")
    if not_started:
        text += f"\nNot started, downstream of a failure ({len(not_started)}): {', '.join(not_started)}\n"
    return text


def submit_stage(repo: str, stage: Stage, run_id: str, orchestration: OrchestrationParams,
                 dispatch: Dispatch | None, lock: str) -> PrefectFuture:
    """Start ``stage`` here or on a worker, with the retries and timeout params give it."""
    policy = orchestration.stage_policy(stage.name)
    retry = {"retries": policy.retries, "retry_delay_seconds": policy.retry_delay_seconds}
    if dispatch and dispatch.wants(stage.name):
        return dispatch_stage.with_options(**retry).submit(dispatch, stage.name, lock, run_id, policy.timeout_seconds)
    return run_stage.with_options(**retry).submit(repo, stage, run_id, policy.timeout_seconds)


def failure_line(future: PrefectFuture) -> str:
    """The first line of a failed task's error (its exception, else its final state's message)."""
    error = future.result(raise_on_failure=False)
    text = str(error) if isinstance(error, BaseException) else (future.state.message or "")
    return (text.strip().splitlines() or [future.state.name])[0]


def failure_message(failed: dict[str, str], not_started: Sequence[str], recorded: Sequence[str]) -> str:
    return "\n".join([f"stage(s) failed: {', '.join(failed)}", *(f"  {line}" for line in failed.values()),
                      f"not started (downstream of a failure): {', '.join(not_started) or 'none'}",
                      f"recorded in dvc.lock before failing: {', '.join(recorded) or 'none'}"])


@flow(name="lofiseg-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def pipeline(repo: str = ".", targets: list[str] | None = None, overrides: list[str] | None = None,
             max_parallel: int = 2, experiment_name: str | None = None, workers: str | None = None,
             remote: str | None = None) -> dict[str, Any]:
    """Bring the DAG (or ``targets`` and what they need) up to date; returns what ran, what was skipped
    and the MLflow runs produced. With ``overrides`` the run is a DVC experiment (named ``experiment_name``
    or by DVC), and its name is returned under ``experiment``. With ``workers`` (a deployment of
    ``flows/worker.py``, e.g. ``lofiseg-stage/stage``) the training and pseudo-label stages go to that
    deployment's work pool, ``max_parallel`` at a time, through the DVC remote ``remote``. If stages fail,
    the others are run and recorded first, then the flow run fails with :class:`StagesFailed`."""
    logger = get_run_logger()
    repo = os.fspath(Path(repo).resolve())
    run_id = flow_run.get_id() or "local"
    orchestration = load_params(Path(repo, "params.yaml")).orchestration
    stages = read_dag(repo)
    if overrides:
        if workers:
            raise ValueError("overrides run as one local DVC experiment; they cannot be combined with workers")
        wanted = [n for layer in waves(stages, targets) for n in layer]  # unknown targets fail here
        budget = sum(orchestration.stage_policy(n).timeout_seconds for n in wanted)  # DVC runs them one by one
        result = experiment(repo, check_overrides(overrides), targets, run_id, budget, experiment_name)
        logger.info("experiment %s: ran %s, up to date %s", result["experiment"], result["ran"],
                    result["skipped"])
        return {**result, "mlflow_runs": link_mlflow_runs(run_id)}
    dispatch = prepare_dispatch(repo, workers, remote) if workers else None
    ran, skipped, on_workers, stage_runs = [], [], {}, []
    failed: dict[str, str] = {}  # stage -> the first line of its error
    not_started: list[str] = []  # downstream of a failed stage
    for wave, layer in enumerate(waves(stages, targets), start=1):
        stopped = set(failed) | set(not_started)
        not_started += [n for n in layer if stages[n].upstream & stopped]
        todo = stale(repo, [n for n in layer if n not in not_started])
        skipped += [n for n in layer if n not in todo and n not in not_started]
        there = [n for n in todo if dispatch and dispatch.wants(n)]
        lock = Path(repo, "dvc.lock").read_text() if there and Path(repo, "dvc.lock").exists() else ""
        finished, results = [], []
        jobs = there + [n for n in todo if n not in there]  # max_parallel at a time, here or on workers
        for start in range(0, len(jobs), max_parallel):
            started = time.monotonic()
            futures = {n: submit_stage(repo, stages[n], run_id, orchestration, dispatch, lock)
                       for n in jobs[start:start + max_parallel]}
            for name, future in futures.items():
                future.wait()
                if not future.state.is_completed():
                    failed[name] = failure_line(future)
                    stage_runs.append({"wave": wave, "stage": name, "where": "worker" if name in there else "here",
                                       "state": "failed", "seconds": round(time.monotonic() - started, 1)})
                    continue
                outcome = future.result()
                stage_runs.append({"wave": wave, "state": "completed",
                                   **{k: outcome[k] for k in ("stage", "where", "seconds")}})
                if "lock" in outcome:
                    results.append(outcome)  # ran on a worker: its dvc.lock entry is recorded after the wave
                else:
                    finished.append(name)
        if finished:
            dvc_command(repo, "commit", "--force", *finished)  # one writer records the wave's finished stages
            if dispatch:  # later stages may run on workers: they pull these outputs from the remote
                dvc_command(repo, "push", *remote_args(remote), *finished, timeout=TRANSFER_TIMEOUT_S)
        record_worker_outputs(repo, results, remote)
        ran += finished + [r["stage"] for r in results]
        on_workers.update({r["stage"]: r["flow_run"] for r in results})
    logger.info("ran %d stage(s) (%d on workers), %d up to date, %d failed, %d not started", len(ran),
                len(on_workers), len(skipped), len(failed), len(not_started))
    create_markdown_artifact(key="stage-runs", description="stages this flow run ran, wave by wave",
                             markdown=stage_runs_markdown(stage_runs, skipped, not_started))
    mlflow_runs = link_mlflow_runs(run_id)
    if failed:
        raise StagesFailed(failure_message(failed, not_started, ran))
    return {"ran": ran, "skipped": skipped, "on_workers": on_workers, "stage_runs": stage_runs,
            "mlflow_runs": mlflow_runs}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the lofiseg DVC pipeline as a Prefect flow")
    parser.add_argument("--repo", default=".")
    parser.add_argument("--target", action="append", dest="targets", help="a stage to bring up to date")
    parser.add_argument("-S", "--set-param", action="append", dest="overrides",
                        help="params override (runs a DVC experiment), e.g. train_saliency.epochs=20")
    parser.add_argument("--max-parallel", type=int, default=2, help="stages run at once within a wave")
    parser.add_argument("--name", dest="experiment_name", help="name of the DVC experiment (with -S)")
    parser.add_argument("--workers", help="send training / pseudo-label stages to this deployment's work pool, "
                        "e.g. lofiseg-stage/stage (prefect.yaml)")
    parser.add_argument("--remote", help="DVC remote shared with the workers (default: the repository's)")
    args = parser.parse_args(argv)
    try:
        result = pipeline(args.repo, args.targets, args.overrides, args.max_parallel, args.experiment_name,
                          args.workers, args.remote)
    except StagesFailed as err:
        raise SystemExit(f"pipeline failed:\n{err}") from None
    if result.get("stage_runs") is not None:
        print(stage_runs_markdown(result["stage_runs"], result["skipped"]))
    print((f"DVC experiment {result['experiment']}: " if result.get("experiment") else "")
          + f"ran {len(result['ran'])}, up to date {len(result['skipped'])}, "
          f"MLflow runs {len(result['mlflow_runs'])}")


if __name__ == "__main__":
    main()
