"""lofiseg.track.registry, lofiseg.evaluate.gate, stages.register and commands.promote against a real MLflow sqlite store in a tmp folder."""

from __future__ import annotations

import hashlib
import json
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

from lofiseg.config import ParamsError
from lofiseg.data.format import sha256_file
from lofiseg.models.bundle import save_bundle
from lofiseg.models.factory import build_model
from lofiseg.track import models as track_models
from lofiseg.track import store as track_store
from lofiseg.track.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_DECISION,
    TAG_EVAL_SET,
    TAG_PREVIOUS,
    TAG_REASON,
    TAG_SOURCE_RUN,
    Registry,
    RegistryError,
    decide,
    promotion_hold,
)
from lofiseg.track.runs import TAG_BUNDLE_SHA256, bundle_run
from lofiseg.track.store import TrackingUnavailable
from lofiseg.track.tracker import Tracker
from stages.cli import run
from tests.pipeline_repo import PROJECT, commit_repo, dvc
from tests.pipeline_repo import run as pipeline_run

REPO = Path(__file__).resolve().parents[1]
METRIC = "deeplab/miou"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One sqlite store for the module (MLflow's migrations take seconds); it is also MLFLOW_TRACKING_URI."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ARTIFACT_ROOT", (root / "artifacts").as_uri())
        track_store.check_store(uri)
        yield uri


@pytest.fixture(scope="module")
def registry(store: str) -> Registry:
    return Registry(store)


def make_bundle(folder: Path, seed: int, **info: object) -> Path:
    torch.manual_seed(seed)
    model = build_model(arch="tiny_unet", num_classes=3, width=4)
    save_bundle(folder / "model.pt", model, {"image_size": 32, **info})
    return folder


def register(registry: Registry, name: str, bundle: Path, value: float, eval_set: str = "md5-a",
             **kwargs: object):
    return registry.register_and_gate(name, bundle, metrics={METRIC: value, "deeplab/pixel_acc": 0.9},
                                      eval_set=eval_set, eval_data="data/raw", gate_metric=METRIC,
                                      direction="maximize", min_improvement=0.005, **kwargs)


def closed_port_uri() -> str:
    with socket.socket() as sock:  # bind, read the port, close: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- the gate, by hand ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("challenger", "champion", "direction", "min_improvement", "same", "promote", "words"),
    [
        (0.3, None, "maximize", 0.005, True, True, "first model"),  # no champion yet
        (0.3, None, "maximize", 0.005, False, True, "first model"),  # nothing to compare with
        (0.9, 0.5, "maximize", 0.0, False, False, "different evaluation set"),  # +0.4, but not comparable
        (0.80, 0.70, "maximize", 0.005, True, True, "better"),  # 0.80 - 0.70 = +0.1 >= 0.005
        (0.70, 0.70, "maximize", 0.0, True, False, "no improvement"),  # tie: 0 is not an improvement
        (0.704, 0.700, "maximize", 0.005, True, False, "too small"),  # +0.004 < 0.005
        (0.805, 0.800, "maximize", 0.005, True, True, "better"),  # +0.005 exactly (0.00499999... in floats)
        (0.60, 0.70, "maximize", 0.0, True, False, "no improvement"),  # -0.1
        (0.04, 0.05, "minimize", 0.005, True, True, "better"),  # MAE: 0.05 - 0.04 = +0.01 >= 0.005
        (0.048, 0.05, "minimize", 0.005, True, False, "too small"),  # 0.05 - 0.048 = +0.002
        (0.06, 0.05, "minimize", 0.0, True, False, "no improvement"),  # 0.05 - 0.06 = -0.01
        (math.nan, 0.5, "maximize", 0.0, True, False, "not a number"),
    ])
def test_decide_truth_table(challenger, champion, direction, min_improvement, same, promote, words) -> None:
    decision = decide(challenger, champion, direction, min_improvement, same)
    assert decision.promote is promote
    assert words in decision.reason


def test_decide_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="direction"):
        decide(0.5, 0.4, "up", 0.0, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_improvement"):
        decide(0.5, 0.4, "maximize", -0.1, True)


# --- registration and promotion -------------------------------------------------------------------------------

def test_the_source_run_is_the_training_run_that_wrote_the_model_file(registry: Registry, store: str,
                                                                        tmp_path: Path) -> None:
    """model.pt holds no run id (a DVC output stays byte-identical across runs): the registry finds the training
    run by the file's sha256, which the run carries as a tag; no such run, no source-run tag."""
    bundle = make_bundle(tmp_path / "b", 3)
    assert bundle_run(bundle / "model.pt", uri=store) is None
    unknown = register(registry, "source-run", bundle, 0.5)
    assert TAG_SOURCE_RUN not in registry.version("source-run", unknown.version).tags
    with Tracker("training", "writes-b", uri=store) as training:
        training.set_tags({TAG_BUNDLE_SHA256: sha256_file(bundle / "model.pt")})
    with Tracker("training", "other-model", uri=store) as other:
        other.set_tags({TAG_BUNDLE_SHA256: "0" * 64})
    assert bundle_run(bundle / "model.pt", uri=store) == training.run_id
    found = register(registry, "source-run", bundle, 0.5)
    assert registry.version("source-run", found.version).tags[TAG_SOURCE_RUN] == training.run_id


def test_first_is_champion_better_promoted_worse_stays_challenger(registry: Registry, tmp_path: Path) -> None:
    name = "gate-order"
    first = register(registry, name, make_bundle(tmp_path / "a", 0, mlflow_run_id="train-run-1"), 0.60,
                     tags={"git.commit": "c0ffee"})
    assert (first.version, first.promote, first.champion) == ("1", True, "1")
    assert registry.aliases(name) == {CHAMPION: "1", CHALLENGER: "1"}
    v1 = registry.version(name, "1")
    assert v1.tags[TAG_EVAL_SET] == "md5-a" and v1.tags["git.commit"] == "c0ffee"
    assert v1.tags[TAG_SOURCE_RUN] == "train-run-1"
    assert float(v1.tags[f"lofiseg.metric.{METRIC}"]) == 0.60
    assert float(v1.tags["lofiseg.metric.deeplab/pixel_acc"]) == 0.9
    assert v1.tags[TAG_DECISION] == "promoted" and "first model" in v1.tags[TAG_REASON]
    assert TAG_PREVIOUS not in v1.tags
    run = registry.client.get_run(first.run_id)  # the register run: metrics, and the model's input example
    assert run.data.metrics[METRIC] == pytest.approx(0.60)
    info = track_store.import_mlflow().models.get_model_info(f"models:/{name}/1")
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    (images,), (labels,) = info.signature.inputs.to_dict(), info.signature.outputs.to_dict()
    assert (images["tensor-spec"], labels["tensor-spec"]) == ({"dtype": "uint8", "shape": (-1, -1, -1, 3)},
                                                              {"dtype": "uint8", "shape": (-1, -1, -1)})
    requirements = (Path(track_store.import_mlflow().artifacts.download_artifacts(f"models:/{name}/1"))
                    / "requirements.txt").read_text()  # public packages, pinned: never lofiseg
    assert sorted(line.split("==")[0] for line in requirements.splitlines()) == ["mlflow", "numpy", "torch"]

    better = register(registry, name, make_bundle(tmp_path / "b", 1), 0.62)  # +0.02 >= 0.005
    assert (better.version, better.promote, better.champion_version, better.champion) == ("2", True, "1", "2")
    assert better.champion_value == pytest.approx(0.60)
    assert registry.aliases(name) == {CHAMPION: "2", CHALLENGER: "2"}
    assert registry.version(name, "2").tags[TAG_PREVIOUS] == "1"

    worse = register(registry, name, make_bundle(tmp_path / "c", 2), 0.623)  # +0.003 < 0.005
    assert (worse.version, worse.promote, worse.champion) == ("3", False, "2")
    assert registry.aliases(name) == {CHAMPION: "2", CHALLENGER: "3"}
    v3 = registry.version(name, "3").tags
    assert v3[TAG_DECISION] == "rejected" and "too small" in v3[TAG_REASON] and "0.623" in v3[TAG_REASON]


def test_different_eval_set_is_refused(registry: Registry, tmp_path: Path) -> None:
    name = "gate-eval-set"
    register(registry, name, make_bundle(tmp_path / "a", 0), 0.5, eval_set="md5-a")
    other = register(registry, name, make_bundle(tmp_path / "b", 1), 0.9, eval_set="md5-b")  # +0.4 but ...
    assert not other.promote and other.champion == "1"
    reason = registry.version(name, "2").tags[TAG_REASON]
    assert "different evaluation set" in reason and "md5-b" in reason and "md5-a" in reason
    unknown = register(registry, name, make_bundle(tmp_path / "c", 2), 0.9, eval_set=None)
    assert not unknown.promote and "unknown" in unknown.reason  # no DVC hash: never comparable


def test_manual_promote_and_rollback(registry: Registry, tmp_path: Path, capsys) -> None:
    from commands import promote

    name = "by-hand"
    for i, value in enumerate([0.5, 0.7, 0.6]):  # v1 champion, v2 promoted (prev v1), v3 rejected
        register(registry, name, make_bundle(tmp_path / str(i), i), value)
    assert registry.champion(name) == "2"

    assert run(promote.main, ["--name", name, "--version", "3", "--reason", "looks better on photos"]) == 0
    assert "champion v2 -> v3" in capsys.readouterr().out
    tags = registry.version(name, "3").tags
    assert (tags[TAG_DECISION], tags[TAG_REASON], tags[TAG_PREVIOUS]) == (
        "promoted (manual)", "looks better on photos", "2")

    assert run(promote.main, ["--name", name, "--rollback"]) == 0  # v3 -> v2
    assert "champion v3 -> v2 (rollback)" in capsys.readouterr().out
    assert registry.champion(name) == "2"
    assert registry.version(name, "3").tags[TAG_DECISION] == "rolled back"
    assert registry.rollback(name).new == "1"  # and once more: v2 had replaced v1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback(name)  # v1 was the first champion
    with pytest.raises(RegistryError, match="no version '9'"):
        registry.promote(name, 9)
    with pytest.raises(SystemExit, match="does not exist"):
        promote.main(["--name", "no-such-model", "--rollback"])


def test_champion_uri_loads_and_predicts_like_the_bundle(registry: Registry, tmp_path: Path) -> None:
    from lofiseg.models.bundle import load_bundle

    name = "loadable"
    bundle = make_bundle(tmp_path / "a", 3)
    register(registry, name, bundle, 0.5)
    loaded = track_models.load_model(f"models:/{name}@champion")
    model, _ = load_bundle(bundle / "model.pt")
    x = torch.rand(2, 3, 40, 24, generator=torch.Generator().manual_seed(0))  # not the example's size
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert str(registry.resolve(f"models:/{name}@champion").version) == "1"
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        registry.resolve(f"models:/{name}@staging")


def test_predict_command_runs_the_champion(registry: Registry, tmp_path: Path) -> None:
    from commands import predict
    from lofiseg.data.format import read_mask
    from lofiseg.models.bundle import load_bundle
    from lofiseg.viz.images import save_png

    name = "predict-me"
    bundle = make_bundle(tmp_path / "a", 4)
    register(registry, name, bundle, 0.5)
    images = tmp_path / "images"
    image = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    save_png(images / "x.png", image)
    out = tmp_path / "out"
    predict.main(["--model", f"models:/{name}@champion", "--images", str(images), "--out", str(out)])
    model, _ = load_bundle(bundle / "model.pt")  # trained at 32 px (tag lofiseg.image_size): run at 32 px
    expected = predict.predict_labels(model, image, 32, torch.device("cpu"))
    np.testing.assert_array_equal(read_mask(out / "x.png"), expected)
    assert json.loads((out / "predict.json").read_text())["size"] == 32


def test_unreachable_store_fails_fast_and_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys) -> None:
    from commands import predict
    from lofiseg.viz.images import save_png

    uri = closed_port_uri()
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="MLFLOW_TRACKING_URI") as caught:
        Registry(uri)
    assert uri in str(caught.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    save_png(tmp_path / "images/x.png", np.zeros((8, 8, 3), np.uint8))
    argv = ["--model", "models:/m@champion", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o")]
    assert run(predict.main, argv) == 2  # a user error: message, no traceback
    assert uri in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert time.monotonic() - start < 10.0


# --- the stage ------------------------------------------------------------------------------------------------

def write_stage_repo(root: Path, miou: float, enabled: bool = True, eval_params: tuple[str, ...] = (),
                     evaluate: dict | None = None, deeplab_name: str = "stage-deeplab") -> None:
    """A tiny repo: params.yaml (the repo's, with a small registry section), bundles, metrics, dvc.lock."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(evaluate or {})
    params["registry"] = {"enabled": enabled, "models": {
        deeplab_name: {"bundle": "models/deeplab/pseudo", "metrics": "metrics/semantic.json",
                       "eval_data": "data/raw", "eval_params": list(eval_params),
                          "gate": {"metric": "deeplab_pseudo/miou", "direction": "maximize",
                                   "min_improvement": 0.005}},
        "stage-saliency": {"bundle": "models/saliency/cas/0.5", "metrics": "metrics/saliency.json",
                           "eval_data": "data/raw",
                           "gate": {"metric": "cas/0.5/saliency/mae", "direction": "minimize"}}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    make_bundle(root / "models/deeplab/pseudo", 5)
    torch.manual_seed(6)
    saliency = build_model(arch="tiny_unet", num_classes=2, width=4)
    save_bundle(root / "models/saliency/cas/0.5/model.pt", saliency,
                {"task": "saliency", "channel": 0, "image_size": 32})
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/semantic.json").write_text(json.dumps({"deeplab_pseudo": {"miou": miou, "iou": [0.1]}}))
    (root / "metrics/saliency.json").write_text(json.dumps({"cas": {"0.5": {"saliency": {"mae": 0.05}}}}))
    lock = {"schema": "2.0", "stages": {"download": {"cmd": "x", "outs": [
        {"path": "data/raw", "hash": "md5", "md5": "3867a0a10cdd107e7b915c9476f0d749.dir"}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_register_stage_end_to_end(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import register as stage

    monkeypatch.chdir(tmp_path)
    write_stage_repo(tmp_path, miou=0.40)
    stage.main(["--out", "reports/registry.json"])
    report = json.loads((tmp_path / "reports/registry.json").read_text())
    deeplab, saliency = report["models"]["stage-deeplab"], report["models"]["stage-saliency"]
    assert (deeplab["version"], deeplab["decision"], deeplab["champion"]) == ("1", "promoted", "1")
    assert deeplab["eval_set"] == "3867a0a10cdd107e7b915c9476f0d749.dir"
    assert deeplab["metrics"] == {"deeplab_pseudo/miou": 0.40}  # the list "iou" is not a number: left out
    assert (saliency["decision"], saliency["challenger_value"]) == ("promoted", 0.05)
    champion = track_models.load_model("models:/stage-saliency@champion")  # saliency: ChannelSelected, 1 channel
    assert champion(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)

    (tmp_path / "metrics/semantic.json").write_text(json.dumps({"deeplab_pseudo": {"miou": 0.402}}))
    stage.main(["--out", "reports/registry.json"])  # +0.002 < 0.005 and a tie on MAE: nobody moves
    report = json.loads((tmp_path / "reports/registry.json").read_text())
    deeplab, saliency = report["models"]["stage-deeplab"], report["models"]["stage-saliency"]
    assert (deeplab["version"], deeplab["decision"], deeplab["champion"]) == ("2", "rejected", "1")
    assert "too small" in deeplab["reason"] and deeplab["champion_value"] == 0.40
    assert (saliency["version"], saliency["decision"]) == ("2", "rejected")

    (tmp_path / "metrics/semantic.json").write_text(json.dumps({"deeplab_pseudo": {"miou": 0.45}}))
    stage.main(["--model", "stage-deeplab", "--out", "reports/registry/stage-deeplab.json"])  # as dvc.yaml runs it
    one = json.loads((tmp_path / "reports/registry/stage-deeplab.json").read_text())
    assert (one["name"], one["version"], one["decision"], one["champion"]) == ("stage-deeplab", "3", "promoted", "3")
    assert Registry().champion("stage-saliency") == "1"  # the other model was left alone
    with pytest.raises(ParamsError, match=r"--model 'nope' is not in registry.models"):
        stage.main(["--model", "nope", "--out", "x.json"])


def test_a_metric_measured_another_way_is_not_compared(store: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """eval_params: the same evaluation set scored with other test-time scales is another evaluation."""
    from stages import register as stage

    monkeypatch.chdir(tmp_path)
    keys, name = ("evaluate.semantic_scales", "evaluate.semantic_flip"), "measured-deeplab"
    write_stage_repo(tmp_path, miou=0.40, eval_params=keys, deeplab_name=name,
                     evaluate={"semantic_scales": [1.0], "semantic_flip": False})
    stage.main(["--model", name, "--out", "r.json"])
    first = json.loads((tmp_path / "r.json").read_text())
    assert first["eval_set"] == ("3867a0a10cdd107e7b915c9476f0d749.dir evaluate.semantic_scales=[1.0] "
                                 "evaluate.semantic_flip=false")
    assert first["decision"] == "promoted"

    write_stage_repo(tmp_path, miou=0.60, eval_params=keys, deeplab_name=name,
                     evaluate={"semantic_scales": [1.0, 1.5, 2.0], "semantic_flip": True})
    stage.main(["--model", name, "--out", "r.json"])
    second = json.loads((tmp_path / "r.json").read_text())
    assert (second["version"], second["decision"], second["champion"]) == ("2", "rejected", "1")  # +0.2: not
    # comparable
    assert "other eval_params" in second["reason"] and "semantic_flip=true" in second["reason"]

    Registry().promote(name, 2, "the new protocol is the baseline from now on")
    write_stage_repo(tmp_path, miou=0.65, eval_params=keys, deeplab_name=name,
                     evaluate={"semantic_scales": [1.0, 1.5, 2.0], "semantic_flip": True})
    stage.main(["--model", name, "--out", "r.json"])
    third = json.loads((tmp_path / "r.json").read_text())  # measured like the new champion: compared
    assert (third["version"], third["decision"], third["champion"]) == ("3", "promoted", "3")
    assert third["champion_value"] == 0.60


def test_register_stage_errors_and_switch_off(store: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import register as stage

    monkeypatch.chdir(tmp_path)
    write_stage_repo(tmp_path, miou=0.40)
    (tmp_path / "metrics/semantic.json").write_text(json.dumps({"deeplab_pseudo": {"mIoU": 0.4}}))
    with pytest.raises(ParamsError, match=r"metrics/semantic.json has no key 'miou' under deeplab_pseudo") as err:
        stage.main(["--out", "reports/registry.json"])
    assert "'deeplab_pseudo/miou'" in str(err.value) and "mIoU" in str(err.value)
    assert not (tmp_path / "reports/registry.json").exists()  # checked before anything was registered

    write_stage_repo(tmp_path, miou=0.40, enabled=False)
    stage.main(["--out", "reports/registry.json"])
    report = json.loads((tmp_path / "reports/registry.json").read_text())
    assert report == {"enabled": False, "skipped": "registry.enabled is false", "models": {}}


def test_register_stages_depend_on_their_own_model_entry_only() -> None:
    """dvc.yaml as DVC reads it: changing one model's gate must not re-register the other models."""
    with Repo(str(PROJECT)) as repo:
        for name in ("lofiseg-deeplab", "lofiseg-saliency"):
            (stage,) = repo.stage.collect(f"register@{name}")
            params = [p for dep in stage.deps if isinstance(dep, ParamsDependency) for p in dep.params]
            assert sorted(params) == ["registry.enabled", f"registry.models.{name}", "tracking"]


def test_eval_set_identity_is_the_data_set_content_or_the_dvc_hash(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lofiseg.evaluate.gate import eval_set_identity

    monkeypatch.chdir(tmp_path)
    scenes = tmp_path / "data/raw/scenes"
    scenes.mkdir(parents=True)
    (scenes / "manifest.csv").write_text("id,split,tags,image,mask,source,sha256\n")
    # an empty set with no side file: its digest is the manifest's
    expected = "dataset-sha256:" + hashlib.sha256(b"id,split,tags,image,mask,source,sha256\n").hexdigest()
    assert eval_set_identity("data/raw/scenes") == expected
    (tmp_path / "data/raw/web").mkdir()  # a sibling set changing does not change the scenes' identity
    assert eval_set_identity("data/raw/scenes") == expected
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"s": {
        "cmd": "x", "deps": [{"path": "data/other", "md5": "abc.dir", "size": 1, "nfiles": 1}]}}}))
    assert eval_set_identity("data/other") == "abc.dir"  # not a data set: DVC's record
    assert eval_set_identity("data/nowhere") is None


# --- where champion may move from -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("experiment", "branch", "in_git", "held_by"),
    [
        (None, "main", True, None),  # the promote_from branch: the gate decides
        (None, None, False, None),  # outside git: nothing to tell, the gate decides
        ("exp-1", None, True, "DVC experiment 'exp-1'"),  # dvc exp run detaches HEAD and names the experiment
        ("exp-1", "main", True, "DVC experiment 'exp-1'"),  # an experiment never promotes, even from main
        (None, "feature", True, "git branch 'feature'"),
        (None, None, True, "a detached HEAD"),
    ])
def test_promotion_hold_by_where_the_registration_runs(experiment, branch, in_git, held_by) -> None:
    hold = promotion_hold(experiment=experiment, branch=branch, in_git=in_git, promote_from="main")
    if held_by is None:
        assert hold is None
    else:
        assert hold.startswith(f"registered from {held_by}: champion moves only from branch 'main'")


def git_stage_repo(root: Path, name: str, miou: float) -> None:
    """write_stage_repo as a git + DVC repository on branch main, its evaluation set a data set (a manifest),
    with one DVC stage: ``register`` of model ``name``."""
    write_stage_repo(root, miou=miou, deeplab_name=name)
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/manifest.csv").write_text("id,split,tags,image,mask,source,sha256\n")
    (root / "dvc.lock").unlink()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"register": {
        "cmd": f"python -m stages.register --model {name} --out reports/registry/{name}.json",
        "deps": ["metrics/semantic.json"], "outs": [{f"reports/registry/{name}.json": {"cache": False}}]}}}))
    commit_repo(root, "stage repo")


def test_an_experiment_or_another_branch_never_moves_the_champion(store: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Real `dvc repro` and `dvc exp run` of the register stage in a git repository: main promotes, a better
    experiment is held as challenger (and says why), and so is a better model on another branch."""
    from stages import register as stage

    name, report = "exp-deeplab", tmp_path / "reports/registry/exp-deeplab.json"
    git_stage_repo(tmp_path, name, miou=0.40)
    env = {"PYTHONPATH": str(PROJECT)}  # the stage command imports this checkout's stages and lofiseg
    dvc(tmp_path, "repro", env=env)
    first = json.loads(report.read_text())
    assert (first["version"], first["decision"], first["held"]) == ("1", "promoted", None)

    (tmp_path / "metrics/semantic.json").write_text(json.dumps({"deeplab_pseudo": {"miou": 0.60}}))  # +0.2
    dvc(tmp_path, "exp", "run", "--name", "better-miou", env=env)
    held = json.loads(report.read_text())
    assert (held["version"], held["decision"], held["promote"], held["champion"]) == ("2", "held", False, "1")
    assert held["reason"].startswith("registered from DVC experiment 'better-miou': champion moves only from "
                                     "branch 'main'")
    assert "the gate alone would promote it: better: 0.6 vs champion 0.4" in held["reason"]
    registry = Registry()
    assert registry.aliases(name) == {CHAMPION: "1", CHALLENGER: "2"}
    tags = registry.version(name, "2").tags
    assert (tags["dvc.experiment"], tags[TAG_DECISION]) == ("better-miou", "held")
    assert tags[TAG_REASON] == held["reason"]

    pipeline_run(tmp_path, "git", "checkout", "-q", "-b", "feature")  # no experiment, but not main either
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics/semantic.json").write_text(json.dumps({"deeplab_pseudo": {"miou": 0.70}}))
    stage.main(["--model", name, "--out", str(report)])
    on_branch = json.loads(report.read_text())
    assert (on_branch["version"], on_branch["decision"], on_branch["champion"]) == ("3", "held", "1")
    assert on_branch["reason"].startswith("registered from git branch 'feature'")
    assert registry.version(name, "3").tags["git.branch"] == "feature"

    pipeline_run(tmp_path, "git", "checkout", "-q", "main")  # the same model from main: the gate promotes it
    stage.main(["--model", name, "--out", str(report)])
    assert json.loads(report.read_text())["decision"] == "promoted" and registry.champion(name) == "4"


def test_tag_versions_of_runs_tags_exactly_the_versions_those_runs_created(registry: Registry,
                                                                          tmp_path: Path) -> None:
    first = register(registry, "tag-after", make_bundle(tmp_path / "a", 0), 0.5)
    second = register(registry, "tag-after", make_bundle(tmp_path / "b", 1), 0.6)
    tagged = registry.tag_versions_of_runs([first.run_id, "no-such-run"], {"git.commit": "abc123"})
    assert tagged == [("tag-after", "1")]
    assert registry.version("tag-after", first.version).tags["git.commit"] == "abc123"
    assert "git.commit" not in registry.version("tag-after", second.version).tags
