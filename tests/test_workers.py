"""The pipeline flow's fan-out: training stages go to two real Prefect workers of a process work pool, each
in its own clone, with a DVC remote and a git origin as the only things shared; the orchestrator's workspace
then matches its dvc.lock (``dvc status`` clean) exactly as if it had run ``dvc repro``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.dispatch import prepare_dispatch
from flows.worker import artifact_key, lock_from_markdown, lock_markdown
from tests.pipeline_repo import PROJECT, dvc, make_repo, run

pytestmark = pytest.mark.slow

TARGETS = ["train_single@sun", "train_single@leaf"]


def test_lock_entry_round_trips_through_the_artifact_markdown():
    entry = {"cmd": "python -m stages.x", "outs": [{"path": "models/x", "md5": "ab.dir", "size": 3, "nfiles": 1}]}
    assert lock_from_markdown(lock_markdown("train_single@sun", entry)) == entry
    assert artifact_key("train_single@sun") == "dvc-lock-train-single-sun"


def test_dispatch_refuses_a_workspace_workers_cannot_reproduce(tmp_path, monkeypatch):
    monkeypatch.delenv("LOFISEG_GIT_URL", raising=False)
    repo = make_repo(tmp_path / "repo")
    with pytest.raises(ValueError, match="expected a deployment as '<flow>/<deployment>', got 'stage'"):
        prepare_dispatch(str(repo), "stage")
    with pytest.raises(RuntimeError, match="no git URL for the workers"):
        prepare_dispatch(str(repo), "lofiseg-stage/stage")
    monkeypatch.setenv("LOFISEG_GIT_URL", "/nowhere.git")
    with open(repo / "params.yaml", "a") as params:
        params.write("\n# an uncommitted edit\n")
    with pytest.raises(RuntimeError, match="tracked files differ from"):
        prepare_dispatch(str(repo), "lofiseg-stage/stage")
    run(repo, "git", "checkout", "params.yaml")
    found = prepare_dispatch(str(repo), "lofiseg-stage/stage")
    assert found.wants("train_single@sun") and found.wants("pseudo_label@leaf") and not found.wants("web")


def start_worker(name: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    prefect = str(Path(sys.executable).with_name("prefect"))
    return subprocess.Popen([prefect, "worker", "start", "--pool", "gpu", "--type", "process", "--name", name,
                             "--limit", "1"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_worker(worker: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the worker's process group; SIGKILL it if it has not exited after ``grace`` seconds (Prefect's
    worker can hang in its own shutdown, after the flow runs it served are done: a CI run saw it take > 60 s)."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=grace)


def test_training_stages_run_on_two_workers_and_the_lock_comes_back(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    repo = make_repo(tmp_path / "repo")
    shutil.copy2(PROJECT / "prefect.yaml", repo / "prefect.yaml")
    dvc(repo, "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote"))  # S3 in production
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "shared DVC remote")
    run(repo, "git", "branch", "-M", "main")  # the branch prefect.yaml's pull step clones
    run(tmp_path, "git", "clone", "-q", "--bare", str(repo), str(tmp_path / "origin.git"))
    run(repo, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    mlflow_env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
                  "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts")}
    for key, value in {**mlflow_env, "LOFISEG_DEVICE": "cpu"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(repo)

    workers = []
    with prefect_test_harness(server_startup_timeout=120):
        env = {**os.environ, **mlflow_env, "PREFECT_API_URL": PREFECT_API_URL.value(), "DO_NOT_TRACK": "1",
               "LOFISEG_GIT_URL": str(tmp_path / "origin.git"), "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
        prefect = str(Path(sys.executable).with_name("prefect"))
        run(repo, prefect, "work-pool", "create", "gpu", "--type", "process", env=env, timeout=300)
        run(repo, prefect, "--no-prompt", "deploy", "--name", "stage", "--job-variable",
            '{"env": {"LOFISEG_DEVICE": "cpu"}}', env=env, timeout=300)
        try:
            for name in ("gpu-1", "gpu-2"):
                workers.append(start_worker(name, env, tmp_path / f"{name}.log"))
            result = pipeline(str(repo), TARGETS, workers="lofiseg-stage/stage")
        finally:
            for worker in workers:
                stop_worker(worker)

        # download and web ran here; the three training stages ran as flow runs of the `stage` deployment
        assert set(result["on_workers"]) == {"train_single_init", *TARGETS}
        assert set(result["ran"]) == {"download", "web", "train_single_init", *TARGETS}
        graph = {(r["wave"], r["stage"], r["where"].split(":")[0]) for r in result["stage_runs"]}
        assert graph == {(1, "download", "here"), (2, "web", "here"), (3, "train_single_init", "worker"),
                         (4, "train_single@leaf", "worker"), (4, "train_single@sun", "worker")}

        async def flow_runs() -> dict:
            async with get_client() as client:
                found = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    name=FlowRunFilterName(any_=[result["on_workers"][n] for n in TARGETS])))
                return {r.name: r for r in found}

        runs = asyncio.run(flow_runs())
        sun, leaf = (runs[result["on_workers"][n]] for n in TARGETS)
        assert sun.state.is_completed() and leaf.state.is_completed()
        assert sun.start_time < leaf.end_time and leaf.start_time < sun.end_time  # the two classes overlapped
        assert {sun.work_pool_name, leaf.work_pool_name} == {"gpu"}

    # the orchestrator's workspace holds the workers' outputs and its dvc.lock records them
    status = json.loads(dvc(repo, "status", *TARGETS, "--with-deps", "--json").stdout or "{}")
    assert status == {}, status
    for name in ("sun", "leaf"):
        assert (repo / f"models/single/{name}/reg/model.pt").is_file()
    assert {r["run_name"] for r in result["mlflow_runs"]} >= {"sun-reg", "leaf-reg"}  # tagged on the workers
    assert "Running stage" not in dvc(repo, "repro", *TARGETS).stdout  # plain DVC agrees: nothing to redo
