"""The saliency experiment through `dvc repro` in a temporary git repo, on tiny settings, tracked in MLflow."""

from __future__ import annotations

import json

import pytest

from tests.pipeline_repo import dvc, make_repo

pytestmark = pytest.mark.slow

TINY_TRAIN = {
    "noise": {"rates": [0.0, 0.5]},
    "train_saliency": {"image_size": 32, "epochs": 2, "batch_size": 4,
                       "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None,
                                 "freeze_encoder": False, "width": 8}},
    "evaluate": {"grid_samples": 2},
}
LOSSES, RATES = ("ce", "cace", "cas"), ("0.0", "0.5")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("saliency")
    repo = make_repo(root / "repo", TINY_TRAIN)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "MLFLOW_ARTIFACT_ROOT": str(root / "artifacts"),
           "LOFISEG_DEVICE": "cpu"}
    dvc(repo, "repro", "evaluate_saliency", env=env)
    return repo, env, root


def test_models_metrics_table_and_grid(repo):
    repo, _, _ = repo
    for loss in LOSSES:
        for rate in RATES:
            info = json.loads((repo / f"models/saliency/{loss}/{rate}/info.json").read_text())
            assert info["loss"] == loss and info["channel"] in (0, 1)
    metrics = json.loads((repo / "metrics/saliency.json").read_text())
    assert set(metrics) == set(LOSSES)
    for loss in LOSSES:
        assert set(metrics[loss]) == set(RATES)
        for rate in RATES:
            scores = metrics[loss][rate]["saliency"]
            assert set(scores) == {"fbeta_adaptive", "fbeta_weighted", "fbeta_max", "mae"}
            assert all(0.0 <= v <= 1.0 for v in scores.values())
    table = (repo / "reports/saliency/table3.md").read_text()
    assert "| noise rate | ce F-beta / MAE | cace F-beta / MAE | cas F-beta / MAE |" in table
    assert "| 0.5 |" in table
    assert (repo / "reports/saliency/grid.png").stat().st_size > 1000
    assert (repo / "reports/saliency/plots/saliency.csv").read_text().startswith("noise_rate,ce,cace,cas")


def test_dvc_metrics_and_plots_read_the_files(repo):
    repo, env, _ = repo
    shown = json.loads(dvc(repo, "metrics", "show", "--json", env=env).stdout)
    data = next(iter(shown.values()))["data"]["metrics/saliency.json"]["data"]
    assert set(data["cas"]["0.5"]["saliency"]) == {"fbeta_adaptive", "fbeta_weighted", "fbeta_max", "mae"}
    plots = json.loads(dvc(repo, "plots", "show", "--json", env=env).stdout)
    assert "reports/saliency/plots/saliency.csv" in plots["data"]


def test_mlflow_has_one_run_per_model_with_metrics(repo):
    _, _, root = repo
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("lofiseg-saliency")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"{loss}-{rate}" for loss in LOSSES for rate in RATES)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"train_loss", "val_fbeta_adaptive", "val_mae"} <= set(r.data.metrics)
        assert "channel" in r.data.tags and "git.commit" in r.data.tags
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [0, 1]
    evaluation = client.get_experiment_by_name("lofiseg-evaluation")
    (run,) = client.search_runs([evaluation.experiment_id])
    assert run.data.metrics["saliency.cas.0.5.saliency.fbeta_adaptive"] >= 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "saliency")}
    assert {"saliency/table3.md", "saliency/grid.png", "saliency/saliency.json"} <= artifacts


def test_second_repro_does_nothing(repo):
    repo, env, _ = repo
    out = dvc(repo, "repro", "evaluate_saliency", env=env).stdout
    assert "Data and pipelines are up to date" in out
