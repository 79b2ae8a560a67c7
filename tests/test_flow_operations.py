"""The `pipeline` flow against a real Prefect API on tiny DAGs (a temporary git + DVC repository): a stage's
output is in the task run's logs while it runs; a failed stage loses nothing that finished; retries and
timeouts come from params ``orchestration``."""

from __future__ import annotations

import contextvars
import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.pipeline_repo import dvc, make_repo, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_repo(root: Path, stages: dict, orchestration: dict | None = None) -> Path:
    """The project's params (plus ``orchestration.stages``) with a dvc.yaml of ``stages`` only, committed."""
    repo = make_repo(root / "repo", {"orchestration": {"stages": orchestration or {}}})
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "a tiny DAG")
    return repo


@pytest.fixture
def in_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))

    def enter(repo: Path) -> Path:
        monkeypatch.chdir(repo)
        return repo
    return enter


def dvc_status(repo: Path, *stages: str) -> dict:
    return json.loads(dvc(repo, "status", *stages, "--json").stdout or "{}")


def task_runs(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))


def task_run_logs(task_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(
            any_=[task_run_id])))]


WAIT_FOR_RELEASE = """\
import sys, time
from pathlib import Path
print("live line 42")  # no flush: the flow's stage environment makes Python unbuffered
release, deadline = Path(sys.argv[1]), time.monotonic() + 120
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.1)
Path(sys.argv[2]).write_text("done\\n")
"""


def test_a_stage_line_is_in_the_api_logs_while_the_stage_runs(prefect_api, tmp_path, in_repo):
    from flows.pipeline import pipeline

    release = tmp_path / "release"
    repo = make_repo(tmp_path / "repo")
    (repo / "wait.py").write_text(WAIT_FOR_RELEASE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"live": {
        "cmd": f"python wait.py {release} live.txt", "deps": ["wait.py"], "outs": ["live.txt"]}}}))
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "a stage that waits to be released")
    in_repo(repo)

    results, context = [], contextvars.copy_context()
    flow_thread = threading.Thread(target=lambda: results.append(context.run(pipeline, str(repo))))
    flow_thread.start()
    try:
        logs, deadline = [], time.monotonic() + 90
        while "live line 42" not in logs and time.monotonic() < deadline:
            time.sleep(0.5)
            found = task_runs("live")
            logs = task_run_logs(found[0].id) if found else []
        assert "live line 42" in logs, logs
        # the stage cannot have ended: it waits for the release file, and its output is not written yet
        assert not (repo / "live.txt").exists() and flow_thread.is_alive()
    finally:
        release.touch()
        flow_thread.join(timeout=120)
    assert results and results[0]["ran"] == ["live"]
    assert dvc_status(repo, "live") == {}


def test_a_failed_stage_loses_nothing_that_finished(prefect_api, tmp_path, in_repo):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    from flows.pipeline import StagesFailed, pipeline

    stages = {
        "bad": {"cmd": "echo half > bad.txt && echo 'cannot do it' >&2 && exit 1", "outs": ["bad.txt"]},
        "good": {"cmd": "sleep 2 && echo good > good.txt", "outs": ["good.txt"]},  # ends after bad failed
        "after_bad": {"cmd": "cat bad.txt > after_bad.txt", "deps": ["bad.txt"], "outs": ["after_bad.txt"]},
        "after_good": {"cmd": "cat good.txt > after_good.txt", "deps": ["good.txt"], "outs": ["after_good.txt"]},
    }
    repo = in_repo(tiny_repo(tmp_path, stages))

    with pytest.raises(StagesFailed) as failure:
        pipeline(str(repo), max_parallel=2)
    assert str(failure.value).splitlines() == [
        "stage(s) failed: bad",
        "  stage bad failed (exit 1): cannot do it",
        "not started (downstream of a failure): after_bad",
        "recorded in dvc.lock before failing: good, after_good",
    ]
    assert dvc_status(repo, "good", "after_good") == {}  # committed before the flow failed
    assert set(dvc_status(repo, "bad", "after_bad")) == {"bad", "after_bad"}
    assert not (repo / "after_bad.txt").exists()  # downstream of the failure: never started
    with get_client(sync_client=True) as client:
        failed = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=["FAILED"]))))
    assert any("stage(s) failed: bad" in (r.state.message or "") for r in failed)

    stages["bad"]["cmd"] = "echo fixed > bad.txt"
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    second = pipeline(str(repo), max_parallel=2)
    assert second["ran"] == ["bad", "after_bad"]  # only the failed stage and its downstream
    assert set(second["skipped"]) == {"good", "after_good"}
    assert dvc_status(repo) == {}
    assert (repo / "after_bad.txt").read_text() == "fixed\n"


def test_retries_and_timeouts_come_from_params(prefect_api, tmp_path, in_repo):
    from flows.pipeline import StagesFailed, pipeline

    marker = tmp_path / "first-attempt-done"
    stages = {
        "flaky": {"cmd": f"test -f {marker} || {{ touch {marker}; echo 'first attempt fails' >&2; exit 1; }}; "
                         "echo ok > flaky.txt", "outs": ["flaky.txt"]},
        "slow": {"cmd": "echo started; sleep 60; echo late > slow.txt", "outs": ["slow.txt"]},
    }
    orchestration = {"flaky": {"retries": 1, "retry_delay_seconds": 0}, "slow": {"timeout_seconds": 2}}
    repo = in_repo(tiny_repo(tmp_path, stages, orchestration))

    started = time.monotonic()
    with pytest.raises(StagesFailed) as failure:
        pipeline(str(repo), max_parallel=2)
    assert time.monotonic() - started < 50  # slow was killed after 2 s, not left to sleep 60
    assert str(failure.value).splitlines()[:2] == ["stage(s) failed: slow",
                                                   "  stage slow timed out after 2 s and was killed: started"]
    assert "recorded in dvc.lock before failing: flaky" in str(failure.value)
    flaky = task_runs("flaky")
    assert [(r.run_count, r.state.type.value) for r in flaky] == [(2, "COMPLETED")]  # one retry, as params say
    assert dvc_status(repo, "flaky") == {}
    assert (repo / "flaky.txt").read_text() == "ok\n"
