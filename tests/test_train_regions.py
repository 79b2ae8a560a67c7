"""The train_regions stage: every method trains, saves a loadable bundle and an MLflow run; kill -9 resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from lofiseg.config import SyntheticRegions, parse_params
from lofiseg.data.format import DatasetWriter, sha256_file
from lofiseg.data.synthetic import generate_regions
from lofiseg.infer.regions import segment_images
from lofiseg.models.bundle import load_bundle
from lofiseg.models.descriptor_heads import descriptor_model
from lofiseg.track.runs import TAG_BUNDLE_SHA256
from lofiseg.train.loop import load_checkpoint
from stages.train_regions import METHODS, make_step, train_regions
from tests.pipeline_repo import PROJECT, TINY, deep_merge, tool_env

pytestmark = pytest.mark.slow

TRAIN = {"train_regions": {"image_size": 32, "epochs": 1, "batch_size": 2, "channels": 6, "embedding_dim": 4,
                           "max_regions": 6,
                           "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None,
                                     "freeze_encoder": False, "width": 4}}}


def params_dict(**train: object) -> dict:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    return deep_merge(deep_merge(deep_merge(raw, TINY), TRAIN), {"train_regions": train})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    with DatasetWriter(root / "raw" / "regions") as writer:
        for sample in generate_regions(SyntheticRegions(train=4, val=2, test=0), 2, 4, image_size=32, seed=0):
            writer.add(sample)
    return root


@pytest.fixture()
def tracked(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(workdir / "artifacts"))
    monkeypatch.setenv("LOFISEG_DEVICE", "cpu")
    return workdir


def test_every_method_trains_saves_a_loadable_bundle_and_an_mlflow_run(tracked):
    root = tracked
    params = parse_params(params_dict())
    images = torch.rand(1, 3, 32, 32)
    for method in METHODS:
        out = root / "models" / method
        info = train_regions(params, method, root / "raw", out, root / "ckpt")
        assert {p.name for p in out.iterdir()} == {"model.pt", "info.json", "history.json", "curves.png",
                                                  "val_grid.png"}
        assert json.loads((out / "info.json").read_text()) == info
        assert set(info["val"]) == {"covering", "rand_index", "vi", "boundary_f", "recall50", "miou_matched",
                                    "boundary_iou"}
        model, saved = load_bundle(out / "model.pt")
        assert saved["method"] == method
        descriptors = descriptor_model(model, method)(images)
        expected = 6 if method in ("cas", "ce") else 4
        assert descriptors.shape == (1, expected, 32, 32)
        if method == "projective":
            assert torch.allclose(descriptors.norm(dim=1), torch.ones(1, 32, 32), atol=1e-5)
        if method in ("cas", "ce"):
            assert torch.allclose(descriptors.sum(1), torch.ones(1, 32, 32), atol=1e-5)
        assert not (root / "ckpt" / f"{method}.pt").exists()
    assert info["delta_d"] == 1.5  # discriminative: the inference bandwidth travels with the model

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name("lofiseg-regions")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(METHODS)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"train_loss", "val_covering", "final_val_recall50"} <= set(run.data.metrics)
        assert run.data.tags["descriptor"] in ("softmax", "projective", "embedding")
    logged = client.search_logged_models([experiment.experiment_id])
    assert sorted(m.source_run_id for m in logged) == sorted(r.info.run_id for r in runs)  # the descriptor models


def test_ce_baseline_maps_region_ids_to_classes_modulo_channels():
    cfg = parse_params(params_dict()).train_regions
    step = make_step("ce", cfg)
    net = torch.nn.Conv2d(3, 6, 1).double()
    batch = {"image": torch.rand(1, 3, 2, 2, dtype=torch.float64), "mask": torch.tensor([[[200, 14], [255, 2]]])}
    # 200 mod 6 = 2 and 14 mod 6 = 2: two regions become one class; 255 stays ignored. Same value as CE on
    # the mapped mask.
    mapped = torch.tensor([[[2, 2], [255, 2]]])
    expected = torch.nn.functional.cross_entropy(net(batch["image"]), mapped, ignore_index=255)
    assert step(net, batch, 0).item() == pytest.approx(expected.item(), abs=1e-12)


def test_a_checkpoint_from_other_params_is_not_resumed(tracked, caplog):
    root = tracked
    ckpt = root / "ck-stale" / "discriminative.pt"
    ckpt.parent.mkdir()
    torch.save({"epoch": 0, "meta": {"fingerprint": "made-elsewhere", "run_id": "nope"}}, ckpt)
    params = parse_params(params_dict(epochs=2))
    with caplog.at_level("WARNING", logger="lofiseg"):
        train_regions(params, "discriminative", root / "raw", root / "stale", root / "ck-stale")
    assert "starting over" in caplog.text
    assert len(json.loads((root / "stale" / "history.json").read_text())) == 2
    assert not ckpt.exists()


def test_method_outside_params_is_refused(tracked):
    params = parse_params(params_dict(methods=["cas"]))
    with pytest.raises(SystemExit, match="not in train_regions.methods"):
        train_regions(params, "projective", tracked / "raw", tracked / "x", tracked / "ckpt")


def _cmd(root, params_file, out, ckpt):
    return [sys.executable, "-m", "stages.train_regions", "--params", str(params_file), "--method", "projective",
            "--raw", str(root / "raw"), "--out", str(root / out), "--checkpoints", str(root / ckpt)]


def _env(root):
    return tool_env({"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow-resume.db",
                     "MLFLOW_ARTIFACT_ROOT": str(root / "art"), "PYTHONPATH": str(PROJECT),
                     "LOFISEG_DEVICE": "cpu"})


def test_kill_minus_nine_then_resume_gives_the_same_model(workdir):
    root = workdir
    params_file = root / "resume.yaml"
    params_file.write_text(yaml.safe_dump(params_dict(epochs=5, methods=["projective"])))

    def run(out, ckpt):
        proc = subprocess.run(_cmd(root, params_file, out, ckpt), cwd=root, env=_env(root), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("straight", "ck-straight")
    proc = subprocess.Popen(_cmd(root, params_file, "resumed", "ck-resumed"), cwd=root, env=_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = root / "ck-resumed" / "projective.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)
    assert state is not None and state["epoch"] < 4, "the run must be killed mid-way"
    run_id = state["meta"]["run_id"]

    run("resumed", "ck-resumed")
    straight = torch.load(root / "straight" / "model.pt", weights_only=True)
    resumed = torch.load(root / "resumed" / "model.pt", weights_only=True)
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow-resume.db")  # the same run continued and wrote it
    assert client.get_run(run_id).data.tags[TAG_BUNDLE_SHA256] == sha256_file(root / "resumed" / "model.pt")
    assert resumed["info"]["val"] == straight["info"]["val"]
    history = json.loads((root / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(5))
    assert all(0.0 <= h["degenerate_fraction"] <= 1.0 for h in history)


def test_params_scales_switch_on_multi_resolution_inference(tracked):
    """train_regions.scales reaches the clustering: [1.0, 2.0] segments at twice the size and merges."""
    root = tracked
    params = parse_params(params_dict(scales=[1.0, 2.0]))
    info = train_regions(params, "projective", root / "raw", root / "models" / "multires", root / "ckpt")
    model, _ = load_bundle(root / "models" / "multires" / "model.pt")
    images = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    settings = params.train_regions.region_settings(params.seed, info)
    assert settings.scales == (1.0, 2.0)
    labels = segment_images(model, "projective", images, settings, batch_size=2)
    assert [lab.shape for lab in labels] == [(64, 64), (64, 64)]  # the finest level's resolution
    single = parse_params(params_dict()).train_regions.region_settings(params.seed, info)
    assert [lab.shape for lab in segment_images(model, "projective", images, single, batch_size=2)] == [(32, 32)] * 2
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_params(params_dict(scales=[2.0, 1.0]))
