"""The multi-class DeepLab stage: pseudo and gt supervision, label remapping, resume, torchrun (DDP, gloo, CPU)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from lofiseg.config import SyntheticScenes, load_params, parse_params
from lofiseg.data.augment import augmentations
from lofiseg.data.format import Dataset, DatasetWriter, Sample, sha256_file
from lofiseg.data.labels import class_names_json, remap_labels
from lofiseg.data.loading import TensorSplit
from lofiseg.data.supervision import NoWebTruth, split_records, tensor_digest
from lofiseg.data.synthetic import generate_scenes, generate_web
from lofiseg.models.bundle import load_bundle
from lofiseg.track.runs import TAG_BUNDLE_SHA256, bundle_run
from lofiseg.train.distributed import (
    DistContext,
    check_batch_size,
    context_from_env,
    shard_batch,
    shard_batches,
)
from lofiseg.train.loop import load_checkpoint
from lofiseg.train.run import TIMINGS
from stages import train_deeplab
from tests.pipeline_repo import PROJECT, TINY, deep_merge, tool_env

SCENE_CLASSES = ["sun", "leaf", "brick"]  # synthetic.classes: scenes masks 0, sun 1, leaf 2, brick 3
WEB_CLASSES = ["leaf", "sun"]  # web.classes: the semantic label space is background 0, leaf 1, sun 2
TRAIN = {"image_size": 32, "epochs": 1, "batch_size": 4, "mosaic": {"pseudo": 0.5, "gt": 0.5},
         "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None, "freeze_encoder": False,
                   "width": 8}}


def _params(root, name: str, train: dict) -> str:
    raw = deep_merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), TINY)
    raw["synthetic"]["classes"] = SCENE_CLASSES
    raw["web"]["classes"] = {name: {"kind": "synthetic"} for name in WEB_CLASSES}
    raw["train_deeplab"] = deep_merge(raw["train_deeplab"], train)
    path = root / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # sort_keys=False keeps web.classes' order
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("deeplab")
    with DatasetWriter(root / "pseudo_gt") as writer:  # pseudo GT stand-in: web masks as class ids
        for sample in generate_web(WEB_CLASSES, per_class=5, negatives=0, confuser_prob=0.3, test_per_class=1,
                                   image_size=32, seed=0):
            sample.mask = (sample.mask > 0).astype(np.uint8) * (WEB_CLASSES.index(sample.tags[0]) + 1)
            sample.split = "val" if sample.split == "test" else "train"
            writer.add(sample)
        writer.add_file("classes.json", class_names_json(["background", *WEB_CLASSES]))
    with DatasetWriter(root / "raw" / "scenes") as writer:
        for sample in generate_scenes(SCENE_CLASSES, SyntheticScenes(train=8, val=3, test=0), 2, 3, 32, seed=0):
            writer.add(sample)
    first = next(generate_web(["sun"], 1, 0, 0.0, 0, 32, seed=1))
    with DatasetWriter(root / "same") as writer:  # one image repeated: BatchNorm sees the same statistics
        for i in range(10):  # on any slice of a batch, so DDP must equal one process (see the resume test)
            writer.add(Sample(f"same-{i}", first.image, first.mask, split="train" if i < 8 else "val"))
    return root


@pytest.fixture
def tracking_env(workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(workdir / "art"))
    monkeypatch.setenv("LOFISEG_DEVICE", "cpu")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return workdir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(root) -> dict[str, str]:
    return tool_env({"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "MLFLOW_ARTIFACT_ROOT": str(root / "art"),
                     "PYTHONPATH": str(PROJECT), "LOFISEG_DEVICE": "cpu", "OMP_NUM_THREADS": "1"})


def _torchrun(root, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(PROJECT / ".venv" / "bin" / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


# --- sharding ---------------------------------------------------------------------------------------------


def test_shards_cover_the_batch_and_weights_give_the_global_mean():
    mask = torch.zeros(5, 2, 2, dtype=torch.long)
    mask[0] = 255  # sample 0: no labelled pixel
    mask[3, 0] = 255  # sample 3: 2 of 4 labelled
    batch = {"image": torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 2, 2), "mask": mask, "index": torch.arange(5)}
    shards = [shard_batch(batch, DistContext(rank, 2)) for rank in (0, 1)]
    # tensor_split: rank 0 gets samples 0..2, rank 1 gets 3..4
    assert [s["index"].tolist() for s in shards] == [[0, 1, 2], [3, 4]]
    assert torch.equal(torch.cat([s["image"] for s in shards]), batch["image"])
    # labelled pixels: N = 0 + 4 + 4 + 2 + 4 = 14; rank 0 n = 8, rank 1 n = 6
    # weights W n_r / N = 2 * 8 / 14 and 2 * 6 / 14; their average is 1
    assert shards[0]["loss_weight"].item() == pytest.approx(16 / 14)
    assert shards[1]["loss_weight"].item() == pytest.approx(12 / 14)
    assert shard_batch(batch, DistContext())["loss_weight"].item() == 1.0
    # a trailing batch too small for 2 samples per rank is skipped
    small = {k: v[:3] for k, v in batch.items()}
    assert [len(s["index"]) for s in shard_batches([batch, small], DistContext(0, 2))] == [3]
    with pytest.raises(ValueError, match="batch_size 3 is too small for 2 processes"):
        check_batch_size(3, DistContext(1, 2), "batch_size")


def test_context_from_env():
    assert context_from_env({}) == DistContext(0, 1, 0)
    assert context_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == DistContext(1, 2, 1)
    with pytest.raises(ValueError, match="RANK=2 WORLD_SIZE=2"):
        context_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'x'"):
        context_from_env({"WORLD_SIZE": "x"})


# --- data ---------------------------------------------------------------------------------------------------


def test_gt_masks_are_remapped_by_class_name(workdir):
    params = load_params(_params(workdir, "params-unit.yaml", TRAIN))
    assert params.semantic_classes() == ["background", "leaf", "sun"]
    data = train_deeplab.supervision_data("gt", workdir / "raw", params)
    raw = Dataset(workdir / "raw" / "scenes")
    assert data.val_source == "val split" and data.val.ids == [r.id for r in raw.split("val")]
    for i, record in enumerate(raw.split("val")):
        source = raw.mask(record)
        # sun 1 -> 2, leaf 2 -> 1, brick 3 -> 0 (not a web class: background), background stays 0
        expected = np.choose(source, [0, 2, 1, 0]).astype(np.uint8)
        assert np.array_equal(data.val.masks[i].numpy(), expected)
    assert np.array_equal(remap_labels(raw.mask(raw.split("train")[0]), ["background", *SCENE_CLASSES],
                                       params.semantic_classes(), others=0), data.train.masks[0].numpy())


def test_a_data_set_without_val_lends_a_tenth_of_train(workdir, tmp_path):
    with DatasetWriter(tmp_path / "noval") as writer:
        for sample in generate_web(["sun"], per_class=20, negatives=0, confuser_prob=0.0, test_per_class=0,
                                   image_size=16, seed=0):
            writer.add(sample)
    data = Dataset(tmp_path / "noval")
    train, val, how = split_records(data)
    assert len(val) == 2 and len(train) == 18 and how == "2 of 20 train images held out (no val split)"
    assert [r.id for r in val] == [r.id for r in sorted(data.split("train"), key=lambda r: (r.sha256, r.id))[:2]]
    assert split_records(data)[1] == val  # deterministic


def test_web_truth_labels_each_object_with_its_class_and_skips_without_masks(workdir, tmp_path):
    """web_gt: the object (mask 1) of a leaf image becomes leaf 1, of a sun image sun 2; confusers and the rest
    stay background 0, ignore stays 255; a web set with image-level tags only has no ceiling."""
    params = load_params(_params(workdir, "params-web.yaml", TRAIN))
    samples = list(generate_web(WEB_CLASSES, per_class=3, negatives=0, confuser_prob=1.0, test_per_class=0,
                                image_size=32, seed=0))
    samples[0].mask[0, :4] = 255
    with DatasetWriter(tmp_path / "web") as writer:
        for sample in samples:
            writer.add(sample)
    data = train_deeplab.supervision_data("web_gt", tmp_path / "web", params)
    web = Dataset(tmp_path / "web")
    labels = dict(zip(data.train.ids + data.val.ids, [*data.train.masks, *data.val.masks], strict=True))
    assert set(labels) == {s.id for s in samples}
    for record in web:
        source, expected_id = web.mask(record), 1 + WEB_CLASSES.index(record.tags[0])
        expected = np.where(source == 1, expected_id, source).astype(np.uint8)  # 0 stays 0, 255 stays 255
        assert np.array_equal(labels[record.id].numpy(), expected), record.id
    assert (labels[samples[0].id][0, :4] == 255).all()

    with DatasetWriter(tmp_path / "tags_only") as writer:
        for sample in samples:
            writer.add(Sample(sample.id, sample.image, None, split=sample.split, tags=sample.tags))
    with pytest.raises(NoWebTruth, match=r"tags_only: no train image of web classes"):
        train_deeplab.supervision_data("web_gt", tmp_path / "tags_only", params)
    out = tmp_path / "ceiling"
    train_deeplab.main(["--params", _params(workdir, "params-web.yaml", TRAIN), "--supervision", "web_gt",
                        "--data", str(tmp_path / "tags_only"), "--out", str(out)])
    assert not (out / "model.pt").exists()
    assert "no train image of web classes" in json.loads((out / "info.json").read_text())["skipped"]


# --- the stage ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("supervision", ["pseudo", "gt"])
def test_stage_trains_and_tracks(tracking_env, supervision):
    root = tracking_env
    data = root / ("pseudo_gt" if supervision == "pseudo" else "raw")
    out = root / "models" / supervision
    train_deeplab.main(["--params", _params(root, "params-1.yaml", TRAIN), "--supervision", supervision,
                        "--data", str(data), "--out", str(out), "--checkpoints", str(root / "ckpt")])
    for name in ("model.pt", "history.json", "info.json", "curves.png", "val_grid.png"):
        assert (out / name).is_file(), name
    model, info = load_bundle(out / "model.pt")
    assert model.num_classes == 3 and info["classes"] == ["background", "leaf", "sun"]
    assert info["supervision"] == supervision and info["image_size"] == 32 and info["world_size"] == 1
    assert info["augment"] == {"mosaic": 0.5, "flip": True, "blur": True, "rescale": [0.5, 2.0]}
    assert 0.0 <= info["val"]["miou"] <= 1.0 and set(info["val"]["iou"]) == {"background", "leaf", "sun"}
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0] and "val_miou" in history[0]
    assert not (root / "ckpt" / f"{supervision}.pt").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run = client.get_run(bundle_run(out / "model.pt", uri=f"sqlite:///{root}/mlflow.db"))
    assert run.info.run_name == f"deeplab-{supervision}" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "lofiseg-semantic"
    assert run.data.tags["supervision"] == supervision and "val_miou" in run.data.metrics
    assert run.data.params["classes"] == "background,leaf,sun"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"info.json", "curves.png", "val_grid.png"} <= artifacts
    assert any(m.name == "model" for m in client.search_logged_models([run.info.experiment_id]))


@pytest.mark.slow
def test_killed_run_resumes_under_torchrun_and_matches_one_process(tracking_env):
    """Kill -9 a one-process run mid-way, finish it with torchrun (2 ranks, gloo), compare to a straight run.

    On the ``same`` data (one image repeated, no augmentation) every BatchNorm slice statistic equals the
    global batch's, so DDP must reproduce the one-process run up to float rounding; on varied data it cannot
    on CPU (no SyncBatchNorm there), which the DDP-math test below covers with a BatchNorm-free network.
    """
    root = tracking_env
    no_augment = {"flip": False, "blur": False, "rescale": None, "mosaic": {"pseudo": 0.0}}
    params = _params(root, "params-same.yaml", {**TRAIN, **no_augment, "epochs": 4,
                                                "lr_policy": "poly"})  # the schedule must resume where it was
    args = ["--params", params, "--supervision", "pseudo", "--data", str(root / "same")]
    train_deeplab.main([*args, "--out", str(root / "straight"), "--checkpoints", str(root / "ck-straight")])

    resumed = [*args, "--out", str(root / "resumed"), "--checkpoints", str(root / "ck-resumed")]
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_deeplab", *resumed], cwd=root, env=_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = root / "ck-resumed" / "pseudo.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(ckpt)
    assert state is not None and state["epoch"] < 3, "the run must be killed mid-way"
    assert not (root / "resumed" / "model.pt").exists()

    _torchrun(root, "-m", "stages.train_deeplab", *resumed)
    straight = torch.load(root / "straight" / "model.pt", weights_only=True)
    ddp = torch.load(root / "resumed" / "model.pt", weights_only=True)
    for key, value in straight["state_dict"].items():
        # BatchNorm's running variance is the unbiased n/(n-1) estimate of the slice a rank sees (n = 2 H W
        # pixels per channel per rank vs 4 H W in one process): up to 1/127 apart at the 8 x 8 level
        tol = 1e-2 if key.endswith("running_var") else 1e-4
        assert torch.allclose(value.float(), ddp["state_dict"][key].float(), atol=tol, rtol=tol), key
    assert ddp["info"]["world_size"] == 2 and "mlflow_run_id" not in ddp["info"]
    history = json.loads((root / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    # poly by hand: 1e-3 (1 - e / 4) ** 0.9 = 1e-3, 7.719e-4, 5.359e-4, 2.872e-4
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 7.7193e-4, 5.3589e-4, 2.8717e-4], rel=1e-4)
    done = state["epoch"] + 1
    before_kill = [{k: v for k, v in h.items() if k not in TIMINGS} for h in state["history"]]
    written = [{k: v for k, v in h.items() if v is not None} for h in history[:done]]  # null: not validated
    assert written == before_kill  # epochs before the kill come from the checkpoint as they were
    reference = json.loads((root / "straight" / "history.json").read_text())
    for ours, theirs in zip(history[done:], reference[done:], strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert ours.keys() == theirs.keys()  # validated on the same epochs (validate_every)
        assert ours.get("val_miou") == pytest.approx(theirs.get("val_miou"), abs=1e-6)
    assert not ckpt.exists() and not any((root / "ck-resumed").iterdir())  # rank 0 cleaned up; rank 1 wrote none

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run_id = state["meta"]["run_id"]
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [0, 1, 2, 3]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    runs = client.search_runs([run.info.experiment_id], filter_string="tags.mlflow.runName = 'deeplab-pseudo'")
    assert run_id in {r.info.run_id for r in runs}
    assert run.data.tags[TAG_BUNDLE_SHA256] == sha256_file(root / "resumed" / "model.pt")  # the run that wrote it


DDP_WORKER = '''
"""2 ranks (gloo) vs one process on the same global batches: a BatchNorm-free float64 net, 2 epochs."""
import json, sys
import torch
from torch import nn
from lofiseg.data.loading import TensorSplit, iterate_batches, random_flip, random_rescale
from lofiseg.train.distributed import DistContext, distributed_session, shard_batches, wrap_model
from lofiseg.losses import cross_entropy_loss
from lofiseg.train.loop import epoch_generator

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
masks = torch.randint(0, 3, (12, 16, 16), generator=g, dtype=torch.uint8)
masks[torch.rand(12, 16, 16, generator=g) < 0.3] = 255  # ignored pixels: slices have unequal counts
split = TensorSplit(torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8), masks,
                    [str(i) for i in range(12)], [()] * 12)

def train(ctx, weighted):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).double()
    net = wrap_model(model, ctx, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(2):
        batches = iterate_batches(split, 6, epoch_generator(0, epoch), shuffle=True,
                                  augment=[random_flip, random_rescale])
        for batch in shard_batches(batches, ctx):
            loss = cross_entropy_loss(net(batch["image"].double()), batch["mask"])
            loss = loss * batch["loss_weight"].double() if weighted else loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])

with distributed_session(torch.device("cpu")) as (ctx, device):
    weighted, unweighted = train(ctx, True), train(ctx, False)
    if ctx.is_main:
        single = train(DistContext(), True)
        json.dump({"weighted": float((weighted - single).abs().max()),
                   "unweighted": float((unweighted - single).abs().max())}, open(sys.argv[1], "w"))
'''


@pytest.mark.slow
def test_ddp_gradient_equals_the_global_batch_gradient(tmp_path):
    """Each rank trains on its slice of the global batch; the loss weights make DDP equal one process."""
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    _torchrun(tmp_path, str(tmp_path / "worker.py"), str(tmp_path / "result.json"))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["weighted"] < 1e-7  # measured 1.5e-9: one process's weights after 4 Adam steps, to rounding
    assert result["unweighted"] > 1e-5  # measured 2.6e-4: per-rank means drift (unequal labelled pixels)


def test_augment_settings_are_the_transforms_and_read_back_in_words(tmp_path):
    """What info.json records is what the stage trains with, and evaluate_semantic says it in miou.md."""
    from lofiseg.viz.semantic_report import training_augmentation

    cfg = parse_params(yaml.safe_load((PROJECT / "params.yaml").read_text())).train_deeplab
    pseudo, gt = train_deeplab.supervision_augment(cfg, "pseudo"), train_deeplab.supervision_augment(cfg, "gt")
    assert pseudo == {"mosaic": 0.25, "flip": True, "blur": True, "rescale": [0.5, 2.0]} and gt["mosaic"] == 0.0
    names = [getattr(t, "func", t).__name__ for t in augmentations(pseudo)]
    assert names == ["random_mosaic", "random_flip", "random_blur", "random_rescale"]
    assert [getattr(t, "func", t).__name__ for t in augmentations(gt)][0] == "random_flip"
    assert augmentations({"mosaic": 0.0, "flip": False, "blur": False, "rescale": None}) == []

    info = tmp_path / "info.json"
    assert training_augmentation(info) == "not recorded"  # bundles made before info.json recorded it
    info.write_text(json.dumps({"augment": pseudo}))
    assert training_augmentation(info) == "2x2 mosaics (0.25), flip, blur, rescale 0.5-2"
    info.write_text(json.dumps({"augment": {"mosaic": 0.0, "flip": False, "blur": False, "rescale": None}}))
    assert training_augmentation(info) == "none"


def test_the_data_fingerprint_moves_with_one_mask_pixel() -> None:
    """train_deeplab's checkpoint fingerprint digests exactly what training sees: the same images with one
    corrected mask pixel are other data (a checkpoint made from the old masks is not resumed)."""
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).reshape(2, 3, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    split = TensorSplit(images, masks, ["a", "b"], [(), ()])
    corrected = masks.clone()
    corrected[1, 2, 3] = 1
    assert tensor_digest(split, split) == tensor_digest(TensorSplit(images.clone(), masks.clone(), ["a", "b"],
                                                                    [(), ()]), split)
    assert tensor_digest(TensorSplit(images, corrected, ["a", "b"], [(), ()]), split) != tensor_digest(split, split)
