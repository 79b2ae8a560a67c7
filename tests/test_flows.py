"""The Prefect `pipeline` flow on a tiny copy of the project: DAG order, concurrent stages, a clean DVC state."""

from __future__ import annotations

import json

import pytest

from flows.dag import Stage, read_dag, waves
from tests.pipeline_repo import dvc, make_repo, run

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
    targets = ["evaluate_saliency", "train_single@sun", "train_single@leaf"]
    expected = {name for wave in waves(stages, targets) for name in wave}
    assert {"train_single@sun", "train_single@leaf"} <= set(waves(stages, targets)[-1] + waves(stages, targets)[-2])
    with prefect_test_harness(server_startup_timeout=120):
        first = pipeline(str(repo), targets)
        # the two training stages of a wave (two noise rates, then two classes) ran concurrently and were
        # recorded with one dvc commit per wave
        assert set(first["ran"]) == expected
        assert first["ran"].index("evaluate_saliency") > first["ran"].index("train_saliency@cas-0.5")
        status = json.loads(dvc(repo, "status", *targets, "--with-deps", "--json").stdout or "{}")
        assert status == {}, status  # the lock file matches the workspace: nothing for DVC to redo
        assert {r["run_name"] for r in first["mlflow_runs"]} >= {"cas-0.0", "cas-0.5", "evaluate_saliency",
                                                                  "sun-reg", "leaf-reg"}

        second = pipeline(str(repo), targets)
        assert second["ran"] == [] and set(second["skipped"]) == expected
    out = dvc(repo, "repro", *targets).stdout
    assert "Data and pipelines are up to date" in out or "didn't change" in out


def test_pipeline_flow_with_an_override_runs_a_dvc_experiment(tmp_path, monkeypatch):
    """`-S train_saliency.epochs=2` on evaluate_saliency: a DVC experiment that exp show / params diff /
    metrics diff / plots diff see on lofiseg's files, and that commands.compare compares by its name."""
    from prefect.testing.utilities import prefect_test_harness

    from commands.compare import revision_runs
    from flows.pipeline import pipeline

    repo = make_repo(tmp_path / "repo", {**TINY_FLOW, "noise": {"rates": [0.0]}})  # one model: cas-0.0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("LOFISEG_DEVICE", "cpu")
    monkeypatch.chdir(repo)
    dvc(repo, "repro", "evaluate_saliency")  # the baseline, committed: 1 epoch
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")

    with prefect_test_harness(server_startup_timeout=120):
        with pytest.raises(ValueError, match=r"overrides: expected key=value items .* got \['epochs'\]"):
            pipeline(str(repo), overrides=["epochs"])
        result = pipeline(str(repo), targets=["evaluate_saliency"], overrides=["train_saliency.epochs=2"],
                          experiment_name="two-epochs")
    assert result["experiment"] == "two-epochs"
    assert result["ran"] == ["train_saliency@cas-0.0", "evaluate_saliency"]  # DVC's order; the data is reused
    assert set(result["skipped"]) == {"download", "noise@0.0"}
    assert {r["run_name"] for r in result["mlflow_runs"]} == {"cas-0.0", "evaluate_saliency"}  # tagged runs

    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    baseline = next(entry for entry in shown if entry["rev"] != "workspace")
    exps = {rev["name"]: rev["data"] for e in baseline["experiments"] for rev in e["revs"]}
    assert baseline["data"]["params"]["params.yaml"]["data"]["train_saliency"]["epochs"] == 1
    assert exps["two-epochs"]["params"]["params.yaml"]["data"]["train_saliency"]["epochs"] == 2

    params = json.loads(dvc(repo, "params", "diff", "HEAD", "two-epochs", "--json").stdout)
    assert params == {"params.yaml": {"train_saliency.epochs": {"old": 1, "new": 2, "diff": 1}}}
    metrics = json.loads(dvc(repo, "metrics", "diff", "HEAD", "two-epochs", "--all", "--json").stdout)
    saliency = metrics["metrics/saliency.json"]
    assert set(saliency) == {f"cas.0.0.saliency.{k}" for k in ("mae", "fbeta_adaptive", "fbeta_max",
                                                               "fbeta_weighted")}
    assert any(v["old"] != v["new"] for v in saliency.values())  # one more epoch changed the scores
    # the training curves the target wrote: one epoch at HEAD, two in the experiment
    plots = json.loads(dvc(repo, "plots", "diff", "HEAD", "two-epochs", "--json", "-x", "epoch",
                           "-y", "train_loss", "--targets", "models/saliency/cas/0.0/history.json").stdout)
    assert "errors" not in plots
    values = plots["data"]["models/saliency/cas/0.0/history.json"][0]["content"]["data"]["values"]
    assert sorted((v["rev"], v["epoch"]) for v in values) == [("HEAD", 0), ("two-epochs", 0), ("two-epochs", 1)]

    runs = revision_runs(repo, ["HEAD", "two-epochs"])
    assert runs[1]["run_id"] == exps["two-epochs"]["rev"]
    assert [r["params"]["train_saliency.epochs"] for r in runs] == ["1", "2"]
    assert set(runs[1]["metrics"]) == set(saliency)
