"""The saliency training stage: killed with SIGKILL mid-run, the same command resumes to the same model."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from lofiseg.config import SyntheticSaliency
from lofiseg.data.format import DatasetWriter, sha256_file
from lofiseg.data.noise import make_noisy_copy
from lofiseg.data.synthetic import generate_saliency
from lofiseg.models.factory import build_model
from lofiseg.track.runs import TAG_BUNDLE_SHA256
from lofiseg.train.loop import load_checkpoint, seed_everything
from tests.pipeline_repo import PROJECT, TINY, deep_merge, tool_env

pytestmark = pytest.mark.slow

TRAIN = {"train_saliency": {"losses": ["cas"], "image_size": 32, "epochs": 6, "batch_size": 4,
                            "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None,
                                      "freeze_encoder": False, "width": 8}}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    with DatasetWriter(root / "raw") as writer:
        for sample in generate_saliency(SyntheticSaliency(train=8, val=4, test=0), image_size=32, seed=0):
            writer.add(sample)
    make_noisy_copy(root / "raw", root / "noisy", rate=0.5, seed=0)
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(deep_merge(raw, TINY), TRAIN)))
    return root


def _cmd(root, out, ckpt):
    return [sys.executable, "-m", "stages.train_saliency", "--params", str(root / "params.yaml"), "--loss", "cas",
            "--rate", "0.5", "--data", str(root / "noisy"), "--out", str(root / out), "--checkpoints", str(root / ckpt)]


def _env(root):
    return tool_env({"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "MLFLOW_ARTIFACT_ROOT": str(root / "art"),
                     "PYTHONPATH": str(PROJECT), "LOFISEG_DEVICE": "cpu"})


def _run(root, out, ckpt):
    proc = subprocess.run(_cmd(root, out, ckpt), cwd=root, env=_env(root), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_kill_minus_nine_then_resume_gives_the_same_model(workdir):
    root = workdir
    _run(root, "straight", "ckpt-straight")

    proc = subprocess.Popen(_cmd(root, "resumed", "ckpt-resumed"), cwd=root, env=_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = root / "ckpt-resumed" / "cas-0.5.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)
    assert state is not None and state["epoch"] < 5, "the run must be killed mid-way"
    assert not (root / "resumed" / "model.pt").exists()
    run_id = state["meta"]["run_id"]

    _run(root, "resumed", "ckpt-resumed")
    straight = torch.load(root / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(root / "resumed" / "model.pt", weights_only=True)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert "mlflow_run_id" not in resumed["info"]  # the run id lives in MLflow, not in the DVC output
    assert resumed["info"]["val"] == straight["info"]["val"]
    assert not ckpt.exists()  # finished: nothing left to resume

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(6))  # no epoch logged twice
    assert client.get_run(run_id).info.status == "FINISHED"
    # the same MLflow run continued, and it is tagged with the model file it wrote
    assert client.get_run(run_id).data.tags[TAG_BUNDLE_SHA256] == sha256_file(root / "resumed" / "model.pt")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_store_fails_fast_or_trains_untracked_when_allowed(workdir):
    root = workdir
    env = _env(root) | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"}
    started = time.monotonic()
    proc = subprocess.run(_cmd(root, "untracked", "ckpt-untracked"), cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "http://127.0.0.1:" in proc.stderr and "tracking.required: false" in proc.stderr
    assert time.monotonic() - started < 60
    assert not (root / "untracked").exists()  # nothing trained, nothing written

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["tracking"]["required"] = False
    params["train_saliency"]["epochs"] = 1
    (root / "optional.yaml").write_text(yaml.safe_dump(params))
    cmd = _cmd(root, "untracked", "ckpt-untracked")
    cmd[cmd.index("--params") + 1] = str(root / "optional.yaml")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training WITHOUT tracking" in proc.stderr
    assert (root / "untracked" / "model.pt").is_file()


def test_bf16_autocast_trains_the_stage_on_cpu_and_validates_every_k_epochs(workdir):
    """amp: bf16 runs on CPU: the loss stays finite and the weights move; validate_every 4 of 6 epochs
    validates after epochs 4 and 6 (the last) only, and the model written is the last epoch's."""
    root = workdir
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train_saliency"] |= {"amp": "bf16", "validate_every": 4}
    (root / "bf16.yaml").write_text(yaml.safe_dump(params))
    cmd = _cmd(root, "bf16", "ckpt-bf16")
    cmd[cmd.index("--params") + 1] = str(root / "bf16.yaml")
    proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    history = json.loads((root / "bf16" / "history.json").read_text())
    assert len(history) == 6 and all(math.isfinite(h["train_loss"]) for h in history)
    assert [h["epoch"] for h in history if h["val_mae"] is not None] == [3, 5]  # null on the skipped epochs
    seed_everything(params["seed"])
    start = build_model(num_classes=2, **params["train_saliency"]["model"]).state_dict()
    trained = torch.load(root / "bf16" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    assert any(not torch.equal(start[k], trained[k]) for k in start)
