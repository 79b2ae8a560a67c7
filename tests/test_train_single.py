"""Single-class training (Veksler Sec. 3.4, 4.3): plan, negative pairing, and the train_single stage end to end."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import lofiseg.train.loop
from lofiseg.config import RegularizedScheduleParams, WebParams
from lofiseg.data.format import Dataset, DatasetFormatError, DatasetWriter, Sample
from lofiseg.data.labels import class_records, negative_records
from lofiseg.data.loading import TensorSplit
from lofiseg.data.synthetic import generate_saliency, generate_web
from lofiseg.data.web import collect_web_images
from lofiseg.losses.regularized import RegularizedLossSchedule, complete_regularized_terms
from lofiseg.models.bundle import load_bundle
from lofiseg.models.factory import build_model
from lofiseg.track.runs import bundle_run
from lofiseg.train.regularized_plan import (
    RegularizedStep,
    gt_labels,
    loss_image,
    negative_indices,
    paired_batches,
    training_plan,
)
from stages import train_single
from tests.pipeline_repo import PROJECT, TINY, deep_merge

TINY_MODEL = {"arch": "tiny_unet", "encoder": None, "encoder_weights": None, "freeze_encoder": False, "width": 8}
TRAIN = {
    "synthetic": {"classes": ["sun", "leaf", "brick"]},
    "train_single": {"image_size": 32, "batch_size": 4, "gt_epochs": 1, "init_from": None, "model": TINY_MODEL,
                     "schedule": {"annealing_epochs": 2, "normal_epochs": 1, "negative_epochs": 1},
                     "finetune": {"image_size": 48, "epochs": 0}},
}


# --- units --------------------------------------------------------------------------------------------------

def _split(values: list[int]) -> TensorSplit:
    """Images whose every pixel holds one value: the value names the image."""
    images = torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    return TensorSplit(images, None, [f"i{v}" for v in values], [("x",)] * len(values))


def _names(images: torch.Tensor) -> list[int]:
    assert images.dtype == torch.uint8  # float on the training device only (batch_to_device)
    return images[:, 0, 0, 0].tolist()


def test_paired_batches_put_other_images_after_each_positive_batch():
    positives, negatives = _split([10, 11, 12, 13, 14]), _split([200, 201, 202])
    batches = list(paired_batches(positives, negatives, 2, torch.Generator().manual_seed(0)))
    assert [len(b["negative"]) for b in batches] == [4, 4, 2]  # B positives + B negatives (5 = 2 + 2 + 1)
    seen_pos, seen_neg = [], []
    for batch in batches:
        flags, names = batch["negative"], _names(batch["image"])
        half = len(flags) // 2
        assert flags.tolist() == [False] * half + [True] * half
        seen_pos += names[:half]
        seen_neg += names[half:]
        assert _names(positives.images[batch["index"]]) == names[:half]
    assert sorted(seen_pos) == [10, 11, 12, 13, 14]  # every positive once per epoch
    assert sorted(seen_neg[:3]) == [200, 201, 202]  # every negative once before any repeats
    assert set(seen_neg) <= {200, 201, 202}

    alone = list(paired_batches(positives, None, 2, torch.Generator().manual_seed(0)))
    assert all(not b["negative"].any() for b in alone) and sum(len(b["negative"]) for b in alone) == 5

    with_masks = TensorSplit(positives.images, torch.zeros(5, 4, 4, dtype=torch.uint8), positives.ids,
                             positives.tags)
    with pytest.raises(ValueError, match="with_masks=False"):
        next(paired_batches(with_masks, negatives, 2, torch.Generator()))


def test_negative_indices_cycle_through_permutations():
    picks = negative_indices(3, 7, torch.Generator().manual_seed(1)).tolist()
    assert len(picks) == 7
    assert sorted(picks[:3]) == [0, 1, 2] and sorted(picks[3:6]) == [0, 1, 2]
    with pytest.raises(ValueError, match="count must be >= 1"):
        negative_indices(0, 4, torch.Generator())


def test_training_plan_anneals_then_normal_negative_and_finetune():
    schedule = RegularizedLossSchedule(annealing_epochs=3, normal_epochs=1, negative_epochs=1)
    plan = training_plan(schedule, 32, 48, 2, negatives=True)
    # Eq. 8, code rule: sigma = 0.05 + (i - 1) / (n - 1) * 0.10 for i = 1..3 -> 0.05, 0.10, 0.15; then 0.15
    assert [round(p.stage.sigma, 6) for p in plan] == [0.05, 0.1, 0.15, 0.15, 0.15, 0.15, 0.15]
    assert [p.stage.lambda_reg for p in plan] == [1.0, 1.0, 1.0, 100.0, 100.0, 100.0, 100.0]
    assert [p.stage.lambda_neg for p in plan] == [0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0]
    assert [p.negatives for p in plan] == [False] * 4 + [True] * 3
    assert [p.image_size for p in plan] == [32] * 5 + [48] * 2
    assert [p.phase for p in plan][-2:] == ["finetune", "finetune"]

    transferred = training_plan(RegularizedLossSchedule(annealing_epochs=0, normal_epochs=2), 32, 48, 1)
    assert [p.stage.stage for p in transferred] == ["normal", "normal", "normal"]
    assert {p.stage.sigma for p in transferred} == {0.15} and not any(p.negatives for p in transferred)


def test_loss_image_is_imagenet_normalised_and_gt_labels_binarise():
    image = torch.tensor([1.0, 0.456, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = loss_image(image)[0, :, 0, 0]
    # (1 - 0.485) / 0.229 = 2.24891; (0.456 - 0.456) / 0.224 = 0; (0 - 0.406) / 0.225 = -1.80444
    assert torch.allclose(out, torch.tensor([2.24891, 0.0, -1.80444]), atol=1e-5)
    mask = torch.tensor([[0, 1, 2], [255, 3, 0]], dtype=torch.uint8)
    assert gt_labels(mask).tolist() == [[0, 1, 1], [255, 1, 0]]


def test_regularized_loss_takes_the_volumetric_sizes_from_params():
    loss = RegularizedScheduleParams(volumetric_target=0.3, volumetric_min=0.25).loss()
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 1] = math.log(0.2 / 0.8)  # foreground probability 0.2 in every pixel of both images
    # Eq. 4: (mean size 0.2 - target 0.3)^2 + lambda_s 5 * mean_i (0.2 - min 0.25)^2 = 0.01 + 5 * 0.0025
    volumetric = loss.terms(logits, torch.zeros(2, 3, 8, 8)).volumetric
    assert volumetric.item() == pytest.approx(0.01 + 5 * 0.0025, rel=1e-5)
    with pytest.raises(ValueError, match="volumetric_min 0.4 must not exceed volumetric_target 0.3"):
        RegularizedScheduleParams(volumetric_target=0.3, volumetric_min=0.4)


def test_regularized_step_follows_the_plan_and_averages_the_terms():
    torch.manual_seed(0)
    model = build_model("tiny_unet", 2, width=4).eval()
    plan = training_plan(RegularizedLossSchedule(annealing_epochs=2, normal_epochs=0, negative_epochs=1), 8)
    step = RegularizedStep(plan)
    images = torch.rand(4, 3, 8, 8)
    negative = torch.tensor([False, False, True, True])
    with torch.no_grad():
        first = step(model, {"image": images, "negative": torch.zeros(4, dtype=torch.bool)}, 0)
        second = step(model, {"image": images, "negative": negative}, 2)
        logits = model(images)
    # epoch 0: annealing, sigma 0.05, every lambda 1, no negatives; epoch 2: normal + Eq. 7, lambda_neg 2
    expected0 = complete_regularized_terms(logits, loss_image(images), None, sigma=0.05, lambda_reg=1.0)
    expected2 = complete_regularized_terms(logits, loss_image(images), negative, sigma=0.15, lambda_reg=100.0,
                                           lambda_neg=2.0)
    assert torch.allclose(first, expected0.total) and torch.allclose(second, expected2.total)
    metrics = step.epoch_metrics(2)
    assert metrics["loss_negative"] == pytest.approx(float(expected2.negative) / 2)  # mean over the 2 steps
    assert metrics["sigma"] == 0.15 and metrics["lambda_neg"] == 2.0
    assert step.epoch_metrics(2)["loss_negative"] == 0.0  # reset after reading


# --- the stage ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    with DatasetWriter(root / "raw" / "web") as writer:
        for sample in generate_web(["sun", "leaf"], per_class=6, negatives=2, confuser_prob=0.3, test_per_class=2,
                                   image_size=32, seed=0):
            writer.add(sample)
    with DatasetWriter(root / "raw" / "saliency") as writer:
        for sample in generate_saliency({"train": 4}, image_size=32, seed=0):
            writer.add(sample)
    web = WebParams(classes={"sun": {"kind": "synthetic"}, "leaf": {"kind": "synthetic"}})
    collect_web_images(web, root / "web", root / "cache", synthetic=root / "raw" / "web", progress=False)
    # the same images without any mask: what real web images look like
    with DatasetWriter(root / "web_nomask") as writer:
        dataset = Dataset(root / "web")
        for record in dataset:
            writer.add(Sample(record.id, dataset.image(record), None, record.split, record.tags))
    return root


@pytest.fixture(autouse=True)
def isolated(root, monkeypatch):
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
    monkeypatch.setenv("LOFISEG_DEVICE", "cpu")


def params_file(root, name: str, changes: dict | None = None):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(deep_merge(deep_merge(deep_merge(raw, TINY), TRAIN), changes or {}),
                                   sort_keys=False))
    return path


def stage(root, params, *args: str) -> None:
    train_single.main(["--params", str(params), "--checkpoints", str(root / "ckpt"), *args])


def read(path) -> dict:
    return json.loads(path.read_text())


def test_regularized_training_never_needs_a_mask(root):
    shutil.copytree(root / "web", root / "web_masks_deleted")
    shutil.rmtree(root / "web_masks_deleted" / "masks")
    params = params_file(root, "reg", {"train_single": {"finetune": {"epochs": 1}}})
    stage(root, params, "--init", "--data", "web_masks_deleted", "--out", "init_null")
    assert sorted(p.name for p in (root / "init_null").iterdir()) == ["init.json"]
    assert read(root / "init_null" / "init.json") == {"init_from": None, "kind": "none"}

    stage(root, params, "--class", "sun", "--data", "web_masks_deleted", "--init-model", "init_null",
          "--out", "sun_reg")
    out = root / "sun_reg"
    assert {"model.pt", "history.json", "info.json", "curves.png", "schedule.json"} <= {p.name for p in out.iterdir()}
    info = read(out / "info.json")
    assert info["class"] == "sun" and info["supervision"] == "reg" and info["channel"] == 1
    assert info["image_size"] == 48 and info["init_from"] is None  # finetune transferred 32 -> 48 px
    assert info["images"] == 6 and info["negative_images"] == 6  # leaf's train images are sun's negatives
    history = read(out / "history.json")
    assert [h["stage"] for h in history] == ["annealing", "annealing", "normal", "negative", "negative"]
    assert [h["image_size"] for h in history] == [32, 32, 32, 32, 48]
    assert [h["loss_negative"] > 0 for h in history] == [False, False, False, True, True]
    assert all("images_per_s" not in h for h in history)  # timings: MLflow only
    model, bundle_info = load_bundle(out / "model.pt")
    assert "mlflow_run_id" not in bundle_info and "mlflow_run_id" not in info and model.num_classes == 2
    assert model(torch.rand(1, 3, 48, 48)).shape == (1, 2, 48, 48)
    assert not (root / "ckpt" / "sun-reg.pt").exists()

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    run = client.get_run(bundle_run(out / "model.pt", uri=f"sqlite:///{root}/mlflow.db"))
    assert run.info.run_name == "sun-reg" and run.info.status == "FINISHED"
    assert "images_per_s" in run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name == "lofiseg-single-class"
    sigma = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "sigma"), key=lambda m: m.step)]
    assert sigma == pytest.approx([0.05, 0.15, 0.15, 0.15, 0.15])  # Eq. 8 with n = 2, then the normal stage
    lambda_neg = client.get_metric_history(run.info.run_id, "lambda_neg")
    assert [m.value for m in sorted(lambda_neg, key=lambda m: m.step)] == [0, 0, 0, 2, 2]
    assert {"loss_sparse_crf", "loss_volumetric", "loss_positional", "lambda_reg"} <= set(run.data.metrics)
    assert run.data.params["class"] == "sun" and run.data.params["train_single.schedule.annealing_epochs"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"info.json", "history.json", "curves.png"} <= artifacts


def test_init_from_a_class_replaces_annealing(root):
    params = params_file(root, "transfer", {"train_single": {"init_from": "leaf"}})
    stage(root, params, "--init", "--data", "web_nomask", "--out", "init_leaf")
    init = root / "init_leaf"
    assert {"model.pt", "info.json", "curves.png", "init.json"} <= {p.name for p in init.iterdir()}
    assert [h["stage"] for h in read(init / "history.json")] == ["annealing", "annealing", "normal"]
    assert read(init / "info.json")["class"] == "leaf"

    stage(root, params, "--class", "sun", "--data", "web_nomask", "--init-model", "init_leaf", "--out", "sun_tr")
    info = read(root / "sun_tr" / "info.json")
    assert info["init_from"] == "leaf" and info["schedule"]["annealing_epochs"] == 0
    history = read(root / "sun_tr" / "history.json")
    assert [h["stage"] for h in history] == ["normal", "negative"]  # no annealing epoch
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    sigma = client.get_metric_history(bundle_run(root / "sun_tr" / "model.pt", uri=f"sqlite:///{root}/mlflow.db"), "sigma")
    assert [m.value for m in sigma] == [0.15, 0.15]

    # a path: checked against train_single.model and copied byte for byte
    by_path = params_file(root, "by_path", {"train_single": {"init_from": str(init / "model.pt")}})
    stage(root, by_path, "--init", "--data", "web_nomask", "--out", "init_path")
    assert (root / "init_path" / "model.pt").read_bytes() == (init / "model.pt").read_bytes()
    wider = params_file(root, "wider", {"train_single": {"init_from": str(init / "model.pt"),
                                                         "model": {"width": 16}}})
    with pytest.raises(ValueError, match="init model has width=8, but train_single.model builds width=16"):
        stage(root, wider, "--init", "--data", "web_nomask", "--out", "init_wider")


def test_init_from_a_data_set_trains_on_its_train_images(root):
    params = params_file(root, "dataset", {"train_single": {"init_from": "saliency",
                                                            "schedule": {"annealing_epochs": 1}}})
    stage(root, params, "--init", "--data", "web_nomask", "--raw", "raw", "--out", "init_sal")
    info = read(root / "init_sal" / "info.json")
    assert info["kind"] == "dataset" and info["images"] == 4 and info["class"] is None


def test_a_killed_run_resumes_at_the_next_epoch(root, monkeypatch):
    params = params_file(root, "resume")
    real_save, saved = lofiseg.train.loop.save_checkpoint, []

    def save_then_die(path, state):
        real_save(path, state)
        saved.append(state["epoch"])
        if len(saved) == 2:
            raise RuntimeError("simulated kill after epoch 2")

    monkeypatch.setattr(lofiseg.train.loop, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="simulated kill"):
        stage(root, params, "--class", "leaf", "--data", "web_nomask", "--out", "leaf_resumed")
    checkpoint = lofiseg.train.loop.load_checkpoint(root / "ckpt" / "leaf-reg.pt")
    assert checkpoint["epoch"] == 1 and not (root / "leaf_resumed").exists()

    saved.clear()
    monkeypatch.setattr(lofiseg.train.loop, "save_checkpoint", lambda path, state: (saved.append(state["epoch"]),
                                                                                 real_save(path, state)))
    stage(root, params, "--class", "leaf", "--data", "web_nomask", "--out", "leaf_resumed")
    assert saved == [2, 3]  # epochs 3 and 4 (0-based 2, 3) only
    run_id = bundle_run(root / "leaf_resumed" / "model.pt", uri=f"sqlite:///{root}/mlflow.db")
    assert run_id == checkpoint["meta"]["run_id"]  # the same MLflow run continued
    assert [h["epoch"] for h in read(root / "leaf_resumed" / "history.json")] == [0, 1, 2, 3]
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert sorted(m.step for m in client.get_metric_history(run_id, "sigma")) == [0, 1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_gt_baseline_trains_on_masks_or_says_why_not(root):
    params = params_file(root, "gt")
    stage(root, params, "--class", "sun", "--gt", "--data", "web", "--out", "sun_gt")
    info = read(root / "sun_gt" / "info.json")
    assert info["supervision"] == "gt" and info["image_size"] == 32 and (root / "sun_gt" / "model.pt").is_file()
    run = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db").get_run(
        bundle_run(root / "sun_gt" / "model.pt", uri=f"sqlite:///{root}/mlflow.db"))
    assert run.info.run_name == "sun-gt"

    stage(root, params, "--class", "sun", "--gt", "--data", "web_nomask", "--out", "sun_gt_skipped")
    assert [p.name for p in (root / "sun_gt_skipped").iterdir()] == ["info.json"]
    skipped = read(root / "sun_gt_skipped" / "info.json")
    assert skipped["class"] == "sun" and skipped["supervision"] == "gt"
    assert "6 of the 6 train images tagged 'sun' have no ground truth mask" in skipped["skipped"]


def test_class_errors_name_the_class(root):
    params = params_file(root, "errors", {"web": {"classes": {"sun": {"kind": "synthetic"},
                                                              "leaf": {"kind": "synthetic"},
                                                              "brick": {"kind": "synthetic"}}}})
    with pytest.raises(SystemExit, match=r"--class 'moon' is not in web.classes \['sun', 'leaf', 'brick'\]"):
        stage(root, params, "--class", "moon", "--data", "web", "--out", "moon")
    with pytest.raises(DatasetFormatError, match=r"no train image tagged 'brick'.*tags are \['leaf', 'sun'\]"):
        stage(root, params, "--class", "brick", "--data", "web", "--out", "brick")
    assert not (root / "moon").exists() and not (root / "brick").exists()


def test_negatives_are_the_other_classes_records(root):
    dataset = Dataset(root / "web")
    assert {t for r in class_records(dataset, "sun") for t in r.tags} == {"sun"}
    assert {t for r in negative_records(dataset, "sun") for t in r.tags} == {"leaf"}
    assert all(r.split == "train" for r in negative_records(dataset, "sun"))


def test_recalibrate_bn_changes_only_the_batchnorm_statistics(root):
    for switch in (False, True):
        params = params_file(root, f"bn_{switch}", {"train_single": {"recalibrate_bn": switch}})
        stage(root, params, "--class", "sun", "--gt", "--data", "web", "--out", f"sun_gt_bn_{switch}")
    plain, plain_info = load_bundle(root / "sun_gt_bn_False" / "model.pt")
    recalibrated, info = load_bundle(root / "sun_gt_bn_True" / "model.pt")
    assert "bn_recalibrated" not in plain_info and info["bn_recalibrated"]
    weights, stats = dict(plain.named_parameters()), dict(plain.named_buffers())
    for name, value in recalibrated.named_parameters():  # the same training: the same weights
        assert torch.equal(value, weights[name]), name
    moved = [name for name, value in recalibrated.named_buffers()
             if name.endswith("running_mean") and not torch.equal(value, stats[name])]
    assert moved and not any(name.startswith("encoder.") for name in moved)  # decoder BN only; frozen encoder kept
