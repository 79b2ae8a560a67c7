"""The Prefect `pipeline` flow on a tiny copy of the project: DAG order, concurrent stages, a clean DVC state."""

from __future__ import annotations

import json

import pytest

from flows.dag import Stage, read_dag, waves
from tests.pipeline_repo import dvc, make_repo

pytestmark = pytest.mark.slow

TINY_FLOW = {
    "noise": {"rates": [0.0, 0.5]},
    "train_saliency": {"losses": ["cas"], "image_size": 32, "epochs": 1, "batch_size": 4,
                       "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None,
                                 "freeze_encoder": False, "width": 8}},
    "evaluate": {"grid_samples": 2},
}


def test_waves_follow_dependencies_and_targets():
    stages = {
        "a": Stage("a", "x", (), frozenset()),
        "b@1": Stage("b@1", "x", (), frozenset({"a"})),
        "b@2": Stage("b@2", "x", (), frozenset({"a"})),
        "c": Stage("c", "x", (), frozenset({"b@1", "b@2"})),
        "d": Stage("d", "x", (), frozenset({"a"})),
    }
    assert waves(stages) == [["a"], ["b@1", "b@2", "d"], ["c"]]
    assert waves(stages, ["b@2"]) == [["a"], ["b@2"]]
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['e'\]"):
        waves(stages, ["e"])


@pytest.fixture(scope="module")
def flow_repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    return make_repo(root / "repo", TINY_FLOW), root


def test_pipeline_flow_runs_the_dag_then_skips_it(flow_repo, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    repo, root = flow_repo
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
    monkeypatch.setenv("LOFISEG_DEVICE", "cpu")
    monkeypatch.chdir(repo)

    from flows.pipeline import pipeline

    stages = read_dag(repo)
    assert stages["evaluate_saliency"].upstream >= {"train_saliency@cas-0.0", "train_saliency@cas-0.5", "download"}
    with prefect_test_harness(server_startup_timeout=120):
        first = pipeline(str(repo))
        # both training stages ran in one wave, concurrently, and were recorded with one dvc commit
        assert set(first["ran"]) == set(stages)
        assert first["ran"].index("evaluate_saliency") > first["ran"].index("train_saliency@cas-0.5")
        status = json.loads(dvc(repo, "status", "--json").stdout or "{}")
        assert status == {}, status  # the lock file matches the workspace: nothing for DVC to redo
        assert {r["run_name"] for r in first["mlflow_runs"]} >= {"cas-0.0", "cas-0.5", "evaluate_saliency"}

        second = pipeline(str(repo))
        assert second["ran"] == [] and set(second["skipped"]) == set(stages)
    assert "Data and pipelines are up to date" in dvc(repo, "repro").stdout
