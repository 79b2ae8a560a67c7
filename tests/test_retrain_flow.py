"""The `retrain` flow end to end with its real parts: a temporary Prefect, a DVC remote and MLflow artifacts on
moto's S3 server (127.0.0.1), the MLflow registry with the promotion gate, and a bare git repository as the
remote the worker's clone came from and the retrain branch goes to. Tiny settings, one registered model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.pipeline_repo import dvc, make_repo, run
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


def git(repo: Path, *args: str) -> str:
    return run(repo, "git", *args).stdout.strip()


def retrain_branches(origin: Path) -> dict[str, str]:
    """branch -> commit of the retrain/* branches the git remote holds."""
    heads = git(origin, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/retrain/")
    return dict(line.split() for line in heads.splitlines())


def flow_artifact(state, key: str) -> str:
    """The markdown of artifact ``key`` of the flow run behind ``state``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            key=ArtifactFilterKey(any_=[key])))
    return artifact.data


def test_retrain_trains_registers_promotes_pushes_and_versions_its_results(tmp_path, moto_server,  # noqa: F811
                                                                           monkeypatch):
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

    # the team's repository (main, with its DVC remote) on a bare git remote; the worker retrains in a clone
    project = make_repo(tmp_path / "project", TINY_RETRAIN)
    git(project, "branch", "-m", "main")  # registry.promote_from
    dvc(project, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc")
    dvc(project, "remote", "modify", "storage", "endpointurl", moto_server)
    git(project, "commit", "-qam", "DVC remote")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(project), str(origin))
    repo = tmp_path / "worker"
    git(tmp_path, "clone", "-q", str(origin), str(repo))
    monkeypatch.chdir(repo)

    from flows.retrain import retrain
    from lofiseg.track import models as track_models
    from lofiseg.track.registry import Registry

    with prefect_test_harness(server_startup_timeout=120):
        state = retrain(str(repo), targets=[TARGET, "web"], return_state=True)
        first = state.result()
        assert TARGET in first["ran"] and "train_saliency@cas-0.5" in first["ran"] and first["pushed"]
        assert (repo / "data/web/manifest.csv").is_file()  # refreshed (forced) before the repro
        (decision,) = first["decisions"]
        assert (decision["name"], decision["version"], decision["decision"]) == ("lofiseg-saliency", "1", "promoted")
        assert "first" in decision["reason"]

        # the registered champion loads from the artifacts in the bucket and predicts
        registry = Registry()
        assert registry.champion("lofiseg-saliency") == "1"
        import torch

        champion = track_models.load_model("models:/lofiseg-saliency@champion")
        assert champion(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
        client = boto3.client("s3", endpoint_url=moto_server)
        stored = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        assert any(k.startswith("mlflow/") for k in stored) and any(k.startswith("dvc/files/md5/") for k in stored)

        # the results are one commit on a retrain branch of the git remote, on top of main; the clone stays on main
        branch, commit = first["branch"], first["commit"]
        assert branch.startswith(f"retrain/{datetime.now(UTC):%Y-%m-%d}-") and first["git_pushed"]
        assert retrain_branches(origin) == {branch: commit}
        assert git(repo, "branch", "--show-current") == "main"
        assert git(origin, "rev-parse", f"{commit}^") == git(origin, "rev-parse", "main")
        changed = set(git(origin, "diff", "--name-only", "main", commit).splitlines())
        assert {"dvc.lock", "metrics/saliency.json", "reports/registry/lofiseg-saliency.json",
                "reports/web/report.json"} <= changed
        data = [p for p in changed if p.startswith(("data/", "models/")) and not p.endswith("/.gitignore")]
        assert data == []  # DVC's, on the DVC remote; git gets the .gitignore files DVC writes for them
        message = git(origin, "log", "-1", "--format=%B", commit)
        assert "- train_saliency@cas-0.5" in message and "- web" in message
        assert "- lofiseg-saliency v1: promoted (first model" in message
        assert branch in flow_artifact(state, "retrain-commit") and commit in flow_artifact(state, "retrain-commit")

        # ... the registered version and every MLflow run of the flow run name that commit
        version = registry.version("lofiseg-saliency", "1")
        assert (version.tags["git.commit"], version.tags["git.branch"]) == (commit, branch)
        runs = first["mlflow_runs"]
        assert decision["run_id"] in {r["run_id"] for r in runs}  # the register run among them
        for record in runs:
            tags = registry.client.get_run(record["run_id"]).data.tags
            assert (tags["git.commit"], tags["git.branch"]) == (commit, branch)

        # a fresh clone of the branch restores every output from the DVC remote, and DVC finds it up to date
        fresh = tmp_path / "fresh"
        git(tmp_path, "clone", "-q", "--branch", branch, str(origin), str(fresh))
        dvc(fresh, "pull", TARGET, "web", "--with-deps")  # what this retrain brought up to date
        status = dvc(fresh, "status", TARGET, "web", "--with-deps").stdout
        assert "up to date" in status, status
        model = "models/saliency/cas/0.5/model.pt"
        assert Path(fresh, model).read_bytes() == Path(repo, model).read_bytes()

        # nothing changed: the next run pulls, finds the DAG up to date, registers nothing, commits nothing
        state = retrain(str(repo), targets=[TARGET, "web"], return_state=True)
        second = state.result()
        assert second["ran"] == [] and TARGET in second["skipped"]  # web ran (forced) before, content unchanged
        assert (second["commit"], second["branch"]) == (None, None)
        assert retrain_branches(origin) == {branch: commit} and git(repo, "branch", "--list", "retrain/*") == branch
        assert "Nothing changed" in flow_artifact(state, "retrain-commit")
        assert registry.champion("lofiseg-saliency") == "1"
    assert json.loads((repo / "reports/registry/lofiseg-saliency.json").read_text())["version"] == "1"
