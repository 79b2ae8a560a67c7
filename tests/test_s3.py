"""Data and artifacts on S3, against moto's S3 server on 127.0.0.1: the DVC remote (push, wipe, pull) and the
MLflow artifact store, with a configurable endpoint, and what an unreachable endpoint does to both."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch

from lofiseg.track import models as track_models
from lofiseg.track import store as track_store
from lofiseg.track.store import TrackingUnavailable
from lofiseg.track.tracker import Tracker
from tests.pipeline_repo import dvc, make_repo
from tests.servers import closed_port, isolate_aws_env, moto_server, serve_on_loopback  # noqa: F401

pytestmark = pytest.mark.slow

BUCKET = "bucket"
BOUNDED_RETRIES = {"AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard"}  # botocore: 1 try + 1 retry


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:  # noqa: F811
    """Dummy credentials, bounded retries, the bucket on moto; yields moto's endpoint (NOT set globally:
    each test says which endpoint DVC or MLflow talks to)."""
    import boto3

    isolate_aws_env(monkeypatch)
    # DVC's S3 plugin parses AWS_CONFIG_FILE whenever the path exists, and /dev/null is not a config file:
    # point it at a file that does not exist instead.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    for key, value in BOUNDED_RETRIES.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=moto_server)
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    return moto_server


def keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- DVC remote on S3 ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project copy with the `download` stage's outputs in the workspace and the DVC cache."""
    repo = make_repo(tmp_path_factory.mktemp("s3") / "repo", {"noise": {"rates": [0.0]}})
    dvc(repo, "repro", "download")
    return repo


def add_remote(repo: Path, name: str, prefix: str, endpoint: str, timeouts: bool = False) -> None:
    dvc(repo, "remote", "add", "--force", name, f"s3://{BUCKET}/{prefix}")
    dvc(repo, "remote", "modify", name, "endpointurl", endpoint)  # any S3-compatible store
    if timeouts:  # seconds; with AWS_MAX_ATTEMPTS they bound how long a dead endpoint can hold a push
        dvc(repo, "remote", "modify", name, "connect_timeout", "2")
        dvc(repo, "remote", "modify", name, "read_timeout", "10")


def wipe_and_pull(repo: Path, remote: str) -> None:
    """Delete the cache and the cached outputs, then restore both from ``remote``."""
    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(repo / "data/raw")
    assert not (repo / "data/raw").exists()
    dvc(repo, "pull", "--remote", remote, "download", timeout=120)  # the stage that ran (the others never did)


def test_dvc_push_wipe_pull_restores_byte_identical_data(data_repo: Path, aws: str) -> None:
    before = tree_hashes(data_repo / "data/raw")
    assert len(before) > 50 and "saliency/manifest.csv" in before
    add_remote(data_repo, "store", "dvc", aws)

    objects = len(set(before.values())) + 1  # one object per distinct content, plus the .dir manifest
    out = dvc(data_repo, "push", "--remote", "store", "download", timeout=120).stdout
    assert f"{objects} files pushed" in out
    stored = keys(aws, "dvc/files/md5/")
    assert len(stored) == objects and sum(k.endswith(".dir") for k in stored) == 1

    wipe_and_pull(data_repo, "store")
    assert tree_hashes(data_repo / "data/raw") == before
    assert dvc(data_repo, "status", "--json", "download").stdout.strip() in ("", "{}")  # workspace matches dvc.lock
    assert dvc(data_repo, "status", "--cloud", "--remote", "store", "--json", "download").stdout.strip() in ("", "{}")


def test_unreachable_remote_fails_in_bounded_time_and_leaves_no_partial_state(data_repo: Path, aws: str) -> None:
    before = tree_hashes(data_repo / "data/raw")
    cache = tree_hashes(data_repo / ".dvc/cache")
    dead = f"http://127.0.0.1:{closed_port()}"
    add_remote(data_repo, "flaky", "dvc-flaky", dead, timeouts=True)

    start = time.monotonic()
    failed = dvc(data_repo, "push", "--remote", "flaky", "download", check=False, timeout=120)
    elapsed = time.monotonic() - start
    assert failed.returncode != 0 and elapsed < 30, (failed.returncode, elapsed)
    assert f'Could not connect to the endpoint URL: "{dead}/{BUCKET}/dvc-flaky/' in failed.stderr
    assert "Traceback" not in failed.stderr

    # Nothing half-done: the cache and the workspace are untouched, the bucket got nothing.
    assert tree_hashes(data_repo / ".dvc/cache") == cache
    assert tree_hashes(data_repo / "data/raw") == before
    assert dvc(data_repo, "status", "--json", "download").stdout.strip() in ("", "{}")
    assert keys(aws, "dvc-flaky/") == []

    # The endpoint is fixed in the remote's config: the same push now completes, and pulls back identical.
    dvc(data_repo, "remote", "modify", "flaky", "endpointurl", aws)
    dvc(data_repo, "push", "--remote", "flaky", "download", timeout=120)
    assert len(keys(aws, "dvc-flaky/files/md5/")) == len(set(before.values())) + 1
    wipe_and_pull(data_repo, "flaky")
    assert tree_hashes(data_repo / "data/raw") == before


@dataclass
class CuttingProxy:
    """Forwards every request to ``target`` (moto) until ``puts_left`` uploads went through; later uploads get
    their connection dropped without an answer, as when the network goes away in the middle of a push."""

    target: str
    puts_left: int
    base_url: str = ""
    dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _proxy_handler(proxy: CuttingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if self.command == "PUT":
                with proxy.lock:
                    proxy.puts_left -= 1
                    cut = proxy.puts_left < 0
                    proxy.dropped += cut
                if cut:
                    self.close_connection = True
                    return  # no answer: the connection closes
            host, port = proxy.target.removeprefix("http://").split(":")
            upstream = http.client.HTTPConnection(host, int(port), timeout=30)
            try:
                upstream.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                    self.send_header(key, value)
            size = answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", size)  # HEAD: the object's size, with no body
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = forward  # noqa: N815 - stdlib names

    return Handler


def test_push_cut_off_midway_never_publishes_the_directory_and_resumes(data_repo: Path, aws: str) -> None:
    before = tree_hashes(data_repo / "data/raw")
    objects = len(set(before.values())) + 1
    proxy = CuttingProxy(aws, puts_left=objects - 3)  # all but 2 files and the .dir manifest get through
    with serve_on_loopback(_proxy_handler(proxy), proxy):
        add_remote(data_repo, "cut", "dvc-cut", proxy.base_url, timeouts=True)
        start = time.monotonic()
        failed = dvc(data_repo, "push", "--remote", "cut", "download", check=False, timeout=120)
        elapsed = time.monotonic() - start
        assert failed.returncode != 0 and elapsed < 60, (failed.returncode, elapsed)
        # the 2 files cut off, and the .dir manifest DVC then holds back
        assert "3 files failed to upload" in failed.stderr and "Traceback" not in failed.stderr
        # Bounded: per lost file, s3fs's 5 tries x botocore's AWS_MAX_ATTEMPTS=2 x one reconnect by the HTTP
        # client (measured: 10 x AWS_MAX_ATTEMPTS drops per file), so at most 2 x 20 here
        assert 4 <= proxy.dropped <= 40, proxy.dropped

        # S3 writes whole objects: the remote holds complete files only, and no .dir, so the directory is
        # not published and DVC still knows what is missing
        stored = keys(aws, "dvc-cut/files/md5/")
        assert len(stored) == objects - 3 and not any(k.endswith(".dir") for k in stored)
        missing = dvc(data_repo, "status", "--cloud", "--remote", "cut", "--json", "download").stdout
        assert '"new"' in missing

        proxy.puts_left = 10**9  # the network is back: the next push sends only what is missing
        assert "3 files pushed" in dvc(data_repo, "push", "--remote", "cut", "download", timeout=120).stdout
        assert len(keys(aws, "dvc-cut/files/md5/")) == objects
        wipe_and_pull(data_repo, "cut")
    assert tree_hashes(data_repo / "data/raw") == before


# --- MLflow artifacts on S3 ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A sqlite store shared by the module (MLflow's migrations take seconds); one experiment per test."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    track_store.check_store(uri)
    return uri


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def test_mlflow_artifacts_and_model_land_in_the_bucket_and_load_back(aws: str, mlflow_store: str,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv(track_store.S3_ENDPOINT_ENV, aws)
    notes = tmp_path / "notes.md"
    notes.write_text("# run notes\n")
    model = tiny_model()
    with Tracker("s3-artifacts", "tiny", uri=mlflow_store, artifact_root=f"s3://{BUCKET}/mlflow") as tracker:
        tracker.log_artifact(notes, subdir="reports")
        model_uri = tracker.log_model(model, "model", torch.zeros(1, 3, 16, 16), pip_requirements=["torch"])
        run_id = tracker.run_id

    stored = keys(aws, "mlflow/")
    assert f"mlflow/s3-artifacts/{run_id}/artifacts/reports/notes.md" in stored
    model_files = [k for k in stored if k.startswith("mlflow/s3-artifacts/models/")]
    assert {Path(k).name for k in model_files} >= {"MLmodel", "model.pth"}, stored

    fetched = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports/notes.md",
                                                  dst_path=str(tmp_path / "fetched"), tracking_uri=mlflow_store)
    assert Path(fetched).read_bytes() == notes.read_bytes()
    loaded = track_models.load_model(model_uri, tracking_uri=mlflow_store)
    batch = torch.rand(2, 3, 8, 12)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))


def test_tracker_with_unreachable_s3_fails_fast_naming_the_endpoint(aws: str, mlflow_store: str,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from mlflow import MlflowClient

    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv(track_store.S3_ENDPOINT_ENV, dead)
    root = f"s3://{BUCKET}/mlflow"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as caught:
        with Tracker("s3-down", "run", uri=mlflow_store, artifact_root=root, timeout_s=2.0):
            pytest.fail("the body must not run without an artifact store")
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert dead in message and f"{root}/s3-down" in message and track_store.S3_ENDPOINT_ENV in message
    assert MlflowClient(mlflow_store).get_experiment_by_name("s3-down") is None  # nothing left behind

    with caplog.at_level(logging.WARNING, logger="lofiseg.track.tracker"):
        with Tracker("s3-down", "run", uri=mlflow_store, artifact_root=root, required=False,
                     timeout_s=2.0) as tracker:
            assert not tracker.active
    assert "training WITHOUT tracking" in caplog.text and dead in caplog.text

    monkeypatch.setenv(track_store.S3_ENDPOINT_ENV, aws)  # reachable, but no such bucket
    with pytest.raises(TrackingUnavailable, match="bucket 'absent' does not exist"):
        with Tracker("s3-absent", "run", uri=mlflow_store, artifact_root="s3://absent/mlflow"):
            pass


def test_s3_lost_mid_run_fails_the_upload_in_bounded_time_and_the_run(aws: str, mlflow_store: str,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    notes = tmp_path / "notes.md"
    notes.write_text("lost\n")
    monkeypatch.setenv(track_store.S3_ENDPOINT_ENV, aws)
    dead = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(Exception, match=f"Could not connect to the endpoint URL: \"{dead}/") as caught:
        with Tracker("s3-lost", "run", uri=mlflow_store, artifact_root=f"s3://{BUCKET}/mlflow") as tracker:
            run_id = tracker.run_id
            monkeypatch.setenv(track_store.S3_ENDPOINT_ENV, dead)  # the store goes away after the check
            start = time.monotonic()
            try:
                tracker.log_artifact(notes)
            finally:
                elapsed = time.monotonic() - start
    assert elapsed < 15, elapsed  # AWS_MAX_ATTEMPTS=2: one retry, not botocore's default of 5 attempts
    run = MlflowClient(mlflow_store).get_run(run_id)
    assert run.info.status == "FAILED" and dead in run.data.tags["lofiseg.error"], caught.value
    assert keys(aws, f"mlflow/s3-lost/{run_id}/") == []
    assert os.environ[track_store.S3_ENDPOINT_ENV] == dead
