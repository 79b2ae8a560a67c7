"""The weakly supervised chain (web images -> single-class models -> pseudo GT -> DeepLab) through `dvc repro`.

Two classes, a handful of 32 px images, one epoch per training stage, the default networks (Unet and
DeepLabV3+ on the offline Lite0 encoder), tracked in a real MLflow sqlite store.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lofiseg.data.format import Dataset
from tests.pipeline_repo import dvc, make_repo

pytestmark = pytest.mark.slow

CLASSES = ("sun", "leaf")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic")
    repo = make_repo(root / "repo")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "MLFLOW_ARTIFACT_ROOT": str(root / "artifacts"),
           "LOFISEG_DEVICE": "cpu"}
    dvc(repo, "repro", "evaluate_semantic", env=env)
    return repo, env, root


def test_every_out_exists(repo):
    repo, _, _ = repo
    assert (repo / "data/web/manifest.csv").is_file() and (repo / "reports/web/report.json").is_file()
    assert json.loads((repo / "models/single/init/init.json").read_text())["init_from"] is None
    for name in CLASSES:
        for supervision in ("reg", "gt"):
            info = json.loads((repo / f"models/single/{name}/{supervision}/info.json").read_text())
            assert info["class"] == name and (repo / f"models/single/{name}/{supervision}/model.pt").is_file()
        assert (repo / f"data/pseudo/{name}/manifest.csv").is_file()
    for supervision in ("pseudo", "gt", "web_gt"):
        assert (repo / f"models/deeplab/{supervision}/model.pt").is_file()
    for name in ("table2.md", "miou.md", "iou_per_class.png", "scenes_grid.png", "pseudo_grid.png"):
        assert (repo / "reports/semantic" / name).stat().st_size > 100, name


def test_pseudo_labels_hold_background_their_class_or_ignore(repo):
    repo, _, _ = repo
    pseudo = Dataset(repo / "data/pseudo_gt")
    web = Dataset(repo / "data/web")
    assert {r.id for r in pseudo} <= {r.id for r in web}
    assert {t for r in pseudo for t in r.tags} == set(CLASSES)
    for record in pseudo:
        (name,) = record.tags
        values = set(np.unique(pseudo.mask(record)).tolist())
        assert values <= {0, 1 + CLASSES.index(name), 255}, (record.id, values)


def test_metrics_keys(repo):
    repo, env, _ = repo
    metrics = json.loads((repo / "metrics/semantic.json").read_text())
    for key in ("pseudo_labels", "deeplab_pseudo", "deeplab_gt", "deeplab_web_gt"):
        assert 0.0 <= metrics[key]["miou"] <= 1.0
        assert set(metrics[key]["iou"]) == {"background", *CLASSES}
    pseudo, ceiling, upper = (metrics[k]["miou"] for k in ("deeplab_pseudo", "deeplab_web_gt", "deeplab_gt"))
    assert metrics["pseudo_vs_ceiling"] == pytest.approx(pseudo / ceiling)
    assert metrics["ceiling_ratio"] == pytest.approx(ceiling / upper)
    assert metrics["deeplab_ratio"] == pytest.approx(pseudo / upper)
    for name in CLASSES:
        for supervision in ("reg", "gt"):
            assert 0.0 <= metrics["single_class"][name][supervision]["fbeta"] <= 1.0
    table = (repo / "reports/semantic/table2.md").read_text()
    assert "| class | reg F-beta | gt F-beta | gap (gt - reg) |" in table and "| sun |" in table
    # the repository's test-time inference (params.yaml evaluate.semantic_scales / semantic_flip) is stated
    miou = (repo / "reports/semantic/miou.md").read_text()
    assert "softmax averaged over the image at 1, 1.5, 2 x the training size and the mirror images" in miou
    # and how each DeepLab was trained, from its info.json: mosaics for the web-trained models only
    assert ("Training augmentation: pseudo 2x2 mosaics (0.25), flip, blur, rescale 0.5-2; gt flip, blur, rescale "
            "0.5-2; web_gt 2x2 mosaics (0.25), flip, blur, rescale 0.5-2.") in miou
    shown = json.loads(dvc(repo, "metrics", "show", "--json", env=env).stdout)
    data = next(iter(shown.values()))["data"]["metrics/semantic.json"]["data"]
    assert "miou" in data["deeplab_pseudo"]


def test_mlflow_has_the_runs(repo):
    _, _, root = repo
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")

    def run_names(experiment: str) -> set[str]:
        found = client.get_experiment_by_name(experiment)
        return {r.info.run_name for r in client.search_runs([found.experiment_id])}

    assert run_names("lofiseg-single-class") == {f"{c}-{s}" for c in CLASSES for s in ("reg", "gt")}
    assert run_names("lofiseg-semantic") == {"deeplab-pseudo", "deeplab-gt", "deeplab-web_gt"}
    assert "evaluate_semantic" in run_names("lofiseg-evaluation")


def test_dvc_status_is_clean_after_repro(repo):
    repo, env, _ = repo
    status = dvc(repo, "status", "evaluate_semantic", "--with-deps", "--json", env=env).stdout
    assert json.loads(status or "{}") == {}
