"""The `retrain` flow end to end with its real parts: a temporary Prefect, a DVC remote and MLflow artifacts on
moto's S3 server (127.0.0.1), the MLflow registry with the promotion gate. Tiny settings, one registered model."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.pipeline_repo import dvc, make_repo
from tests.servers import isolate_aws_env, moto_server  # noqa: F401

pytestmark = pytest.mark.slow

BUCKET = "retrain"
TINY_RETRAIN = {
    "noise": {"rates": [0.0, 0.5]},
    "train_saliency": {"losses": ["cas"], "image_size": 32, "epochs": 1, "batch_size": 4,
                       "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None,
                                 "freeze_encoder": False, "width": 8}},
    "registry": {"models": {"lofiseg-saliency": {
        "bundle": "models/saliency/cas/0.5", "metrics": "metrics/saliency.json", "eval_data": "data/raw",
        "gate": {"metric": "cas/0.5/saliency/fbeta_adaptive", "direction": "maximize", "min_improvement": 0.0}}}},
}
TARGET = "register@lofiseg-saliency"


def test_retrain_pulls_trains_registers_promotes_and_pushes(tmp_path, moto_server, monkeypatch):  # noqa: F811
    import boto3
    from prefect.testing.utilities import prefect_test_harness

    isolate_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))  # DVC's S3 plugin reads it if it exists
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", f"s3://{BUCKET}/mlflow")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("LOFISEG_DEVICE", "cpu")

    repo = make_repo(tmp_path / "repo", TINY_RETRAIN)
    dvc(repo, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc")
    dvc(repo, "remote", "modify", "storage", "endpointurl", moto_server)
    monkeypatch.chdir(repo)

    from flows.retrain import retrain
    from lofiseg.track import models as track_models
    from lofiseg.track.registry import Registry

    with prefect_test_harness(server_startup_timeout=120):
        first = retrain(str(repo), targets=[TARGET, "web"])
        assert TARGET in first["ran"] and "train_saliency@cas-0.5" in first["ran"] and first["pushed"]
        assert (repo / "data/web/manifest.csv").is_file()  # refreshed (forced) before the repro
        (decision,) = first["decisions"]
        assert (decision["name"], decision["version"], decision["decision"]) == ("lofiseg-saliency", "1", "promoted")
        assert "first" in decision["reason"]

        # the registered champion loads from the artifacts in the bucket and predicts
        assert Registry().champion("lofiseg-saliency") == "1"
        import torch

        champion = track_models.load_model("models:/lofiseg-saliency@champion")
        assert champion(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
        client = boto3.client("s3", endpoint_url=moto_server)
        stored = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        assert any(k.startswith("mlflow/") for k in stored) and any(k.startswith("dvc/files/md5/") for k in stored)

        # everything retrain produced is on the remote: a fresh cache restores it byte for byte
        model = (repo / "models/saliency/cas/0.5/model.pt").read_bytes()
        shutil.rmtree(repo / ".dvc/cache")
        shutil.rmtree(repo / "models/saliency/cas/0.5")  # the output, not the .gitignore git would restore
        dvc(repo, "pull", TARGET, "--with-deps")
        assert (repo / "models/saliency/cas/0.5/model.pt").read_bytes() == model

        # nothing changed: the next scheduled run pulls, finds the DAG up to date and registers nothing new
        second = retrain(str(repo), targets=[TARGET, "web"])
        assert second["ran"] == [] and TARGET in second["skipped"]  # web ran (forced) before, content unchanged
        assert Registry().champion("lofiseg-saliency") == "1"
    assert json.loads((repo / "reports/registry/lofiseg-saliency.json").read_text())["version"] == "1"
