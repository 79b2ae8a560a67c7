"""The multi-region experiment through `dvc repro evaluate_regions` in a temporary repo, tiny, tracked in MLflow."""

from __future__ import annotations

import json
import re

import pytest

from tests.pipeline_repo import dvc, make_repo

pytestmark = pytest.mark.slow

METHODS = ("cas", "projective", "ce", "discriminative")
KEYS = {"covering", "rand_index", "vi", "boundary_f", "recall50", "miou_matched", "boundary_iou"}
TINY_REGIONS = {
    "train_regions": {"methods": list(METHODS), "image_size": 32, "epochs": 1, "batch_size": 2,
                      "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None,
                                "freeze_encoder": False, "width": 4}},
    "evaluate": {"grid_samples": 2},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions_pipeline")
    repo = make_repo(root / "repo", TINY_REGIONS)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "MLFLOW_ARTIFACT_ROOT": str(root / "artifacts"),
           "LOFISEG_DEVICE": "cpu"}
    dvc(repo, "repro", "evaluate_regions", env=env)
    return repo, env, root


def test_models_metrics_table_and_grid(repo):
    repo, _, _ = repo
    for method in METHODS:
        info = json.loads((repo / f"models/regions/{method}/info.json").read_text())
        assert info["method"] == method and (repo / f"models/regions/{method}/model.pt").is_file()
    metrics = json.loads((repo / "metrics/regions.json").read_text())
    assert set(metrics) == set(METHODS)
    for scores in metrics.values():
        assert set(scores) == KEYS
        assert all(0.0 <= scores[k] <= 1.0 for k in KEYS - {"vi"}) and scores["vi"] >= 0.0
    table = (repo / "reports/regions/table.md").read_text()
    assert "| method | F-meas. ODS | F-meas. OIS | GT-cov. ODS | GT-cov. OIS |" in table
    assert "| method | mIoU | B. IoU | Recall | Delta % |" in table
    for method in METHODS:
        assert len(re.findall(rf"^\| {method} \|", table, flags=re.MULTILINE)) == 2
    assert (repo / "reports/regions/grid.png").stat().st_size > 1000


def test_mlflow_runs(repo):
    _, _, root = repo
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    training = client.get_experiment_by_name("lofiseg-regions")
    runs = client.search_runs([training.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(METHODS)
    assert all(r.info.status == "FINISHED" for r in runs)
    evaluation = client.get_experiment_by_name("lofiseg-evaluation")
    (run,) = client.search_runs([evaluation.experiment_id])
    assert run.info.run_name == "evaluate_regions"
    assert 0.0 <= run.data.metrics["regions.projective.covering"] <= 1.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "regions")}
    assert {"regions/table.md", "regions/grid.png", "regions/regions.json"} <= artifacts
