"""The `pipeline` flow: the DVC DAG, stage by stage, as Prefect tasks.

Each stage becomes a task with its own logs, state, retries (network stages) and timeout. Stages run in
waves of independent stages (read from dvc.yaml by DVC, never a second hand-written list); within a wave they
run concurrently, each as its plain command, and the wave is then recorded with one ``dvc commit``, so
concurrent stages never contend for DVC's lock or write its cache at the same time. Stages DVC finds up to
date are skipped. Parameter overrides run as a DVC experiment (``dvc exp run --set-param``), so the result is
versioned.

    python -m flows.pipeline                                # the whole DAG
    python -m flows.pipeline --target evaluate_saliency     # one stage and what it needs
    python -m flows.pipeline -S train_saliency.epochs=20    # a DVC experiment (--target, --name too)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.dag import STAGE_TIMEOUT_S, Stage, read_dag, remote_args, stage_env, stale, waves
from flows.dispatch import dispatch_stage, prepare_dispatch, record_worker_outputs
from lofiseg.dvc_cli import dvc_command, dvc_executable
from lofiseg.provenance import ORCHESTRATOR_TAG
from lofiseg.track.runs import runs_with_tag
from lofiseg.viz.figures import markdown_table

NETWORK_STAGES = ("download",)  # stages that fetch over the network get retries


@task(task_run_name="{stage.name}")
def run_stage(repo: str, stage: Stage, flow_run_id: str) -> dict[str, Any]:
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
    proc = subprocess.run(stage.cmd, shell=True, cwd=repo, env=stage_env(flow_run_id), capture_output=True,
                          text=True, timeout=STAGE_TIMEOUT_S)
    for line in proc.stdout.splitlines()[-20:]:
        logger.info(line)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"stage": stage.name, "where": "here", "seconds": round(time.monotonic() - started, 1)}


def check_overrides(overrides: Sequence[str]) -> list[str]:
    """``key=value`` items (``file:key=value`` for another params file), as ``dvc exp run -S`` takes them."""
    if isinstance(overrides, str):
        raise TypeError(f"overrides: expected a list of key=value strings, got the string {overrides!r}")
    bad = [item for item in overrides if not isinstance(item, str) or "=" not in item or item.startswith("=")]
    if bad:
        raise ValueError(f"overrides: expected key=value items (e.g. train_saliency.epochs=20), got {bad}")
    return list(overrides)


@task  # the dvc subprocess enforces STAGE_TIMEOUT_S: a thread task's own timeout cannot stop it
def experiment(repo: str, overrides: list[str], targets: list[str] | None, flow_run_id: str,
               name: str | None = None) -> dict[str, Any]:
    """``dvc exp run --set-param ...`` on ``targets`` (default: the whole DAG) and what they need; DVC runs
    the stale stages one by one and records the result as an experiment. Returns its name and the stages
    that ran or were skipped."""
    logger = get_run_logger()
    cmd = [dvc_executable(), "exp", "run", *(["--name", name] if name else []),
           *[arg for item in overrides for arg in ("--set-param", item)], *(targets or [])]
    logger.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=repo, env=stage_env(flow_run_id), capture_output=True, text=True,
                          timeout=STAGE_TIMEOUT_S)
    for line in proc.stdout.splitlines()[-40:]:
        logger.info(line)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc exp run failed ({proc.returncode}) in {repo}:\n{proc.stderr[-3000:]}")
    ran = re.search(r"Ran experiment\(s\): (\S+)", proc.stdout)
    return {"experiment": ran.group(1) if ran else name,
            "ran": re.findall(r"^Running stage '([^']+)'", proc.stdout, flags=re.M),
            "skipped": re.findall(r"^Stage '([^']+)' didn't change, skipping", proc.stdout, flags=re.M)}


def link_mlflow_runs(flow_run_id: str) -> list[dict[str, str]]:
    """The MLflow runs this flow run produced (they carry its id as a tag) as a Prefect artifact."""
    runs = runs_with_tag(ORCHESTRATOR_TAG, flow_run_id)
    rows = "\n".join(f"| {r['run_name']} | {r['run_id']} | {r['experiment_id']} | {r['status']} |" for r in runs)
    create_markdown_artifact(key="mlflow-runs", description="MLflow runs of this flow run",
                             markdown="| run | id | experiment | status |\n|---|---|---|---|\n" + rows)
    return runs


def stage_runs_markdown(stage_runs: Sequence[dict[str, Any]], skipped: Sequence[str]) -> str:
    """The flow run's graph as a table: wave, stage, where it ran (here or a worker's flow run), seconds."""
    rows = [[str(r["wave"]), r["stage"], r["where"], f"{r['seconds']:.1f}"] for r in stage_runs]
    return (markdown_table(["wave", "stage", "ran on", "seconds"], rows)
            + f"\n\nUp to date, skipped ({len(skipped)}): {', '.join(skipped) or 'none'}\n")


@flow(name="lofiseg-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=16), log_prints=True)
def pipeline(repo: str = ".", targets: list[str] | None = None, overrides: list[str] | None = None,
             max_parallel: int = 2, experiment_name: str | None = None, workers: str | None = None,
             remote: str | None = None) -> dict[str, Any]:
    """Bring the DAG (or ``targets`` and what they need) up to date; returns what ran, what was skipped
    and the MLflow runs produced. With ``overrides`` the run is a DVC experiment (named ``experiment_name``
    or by DVC), and its name is returned under ``experiment``. With ``workers`` (a deployment of
    ``flows/worker.py``, e.g. ``lofiseg-stage/stage``) the training and pseudo-label stages go to that
    deployment's work pool, ``max_parallel`` at a time, through the DVC remote ``remote``."""
    logger = get_run_logger()
    repo = os.fspath(Path(repo).resolve())
    run_id = flow_run.get_id() or "local"
    if overrides:
        if workers:
            raise ValueError("overrides run as one local DVC experiment; they cannot be combined with workers")
        if targets:
            waves(read_dag(repo), targets)  # unknown targets fail here, naming the stages dvc.yaml has
        result = experiment(repo, check_overrides(overrides), targets, run_id, experiment_name)
        logger.info("experiment %s: ran %s, up to date %s", result["experiment"], result["ran"],
                    result["skipped"])
        return {**result, "mlflow_runs": link_mlflow_runs(run_id)}
    dispatch = prepare_dispatch(repo, workers, remote) if workers else None
    stages = read_dag(repo)
    ran, skipped, on_workers, stage_runs = [], [], {}, []
    for wave, layer in enumerate(waves(stages, targets), start=1):
        todo = stale(repo, layer)
        skipped += [n for n in layer if n not in todo]
        here = [n for n in todo if not (dispatch and dispatch.wants(n))]
        there = [n for n in todo if n not in here]
        lock = Path(repo, "dvc.lock").read_text() if there and Path(repo, "dvc.lock").exists() else ""
        results = []
        jobs = there + here  # stages run max_parallel at a time, here or on workers
        for start in range(0, len(jobs), max_parallel):
            futures = [
                dispatch_stage.submit(dispatch, n, lock, run_id) if n in there else
                run_stage.with_options(retries=2 if n.split("@")[0] in NETWORK_STAGES else 0,
                                       retry_delay_seconds=10)
                .submit(repo, stages[n], run_id)
                for n in jobs[start:start + max_parallel]
            ]
            for future in futures:
                outcome = future.result()
                stage_runs.append({"wave": wave, **{k: outcome[k] for k in ("stage", "where", "seconds")}})
                if "lock" in outcome:
                    results.append(outcome)  # ran on a worker: recorded after the wave
                else:
                    ran.append(outcome["stage"])
        if here:
            dvc_command(repo, "commit", "--force", *here)  # one writer records the whole wave
            if dispatch:  # later stages may run on workers: they pull these outputs from the remote
                dvc_command(repo, "push", *remote_args(remote), *here, timeout=STAGE_TIMEOUT_S)
        record_worker_outputs(repo, results, remote)
        ran += there
        on_workers.update({r["stage"]: r["flow_run"] for r in results})
    logger.info("ran %d stage(s) (%d on workers), %d up to date", len(ran), len(on_workers), len(skipped))
    create_markdown_artifact(key="stage-runs", description="stages this flow run ran, wave by wave",
                             markdown=stage_runs_markdown(stage_runs, skipped))
    return {"ran": ran, "skipped": skipped, "on_workers": on_workers, "stage_runs": stage_runs,
            "mlflow_runs": link_mlflow_runs(run_id)}


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
    result = pipeline(args.repo, args.targets, args.overrides, args.max_parallel, args.experiment_name,
                      args.workers, args.remote)
    if result.get("stage_runs") is not None:
        print(stage_runs_markdown(result["stage_runs"], result["skipped"]))
    print((f"DVC experiment {result['experiment']}: " if result.get("experiment") else "")
          + f"ran {len(result['ran'])}, up to date {len(result['skipped'])}, "
          f"MLflow runs {len(result['mlflow_runs'])}")


if __name__ == "__main__":
    main()
