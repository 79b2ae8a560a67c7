"""Real photo sets end to end through params alone (issue 18): a local semantic set with its own class table,
web classes taken from it, the upper bound on the same classes, evaluation on the split a set has."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lofiseg.config import (
    DatasetSpec,
    DownloadParams,
    Params,
    ParamsError,
    RegisteredModel,
    TrainSingleParams,
    WebParams,
    parse_params,
)
from lofiseg.data.format import IGNORE, Dataset, DatasetWriter, Sample
from lofiseg.data.labels import read_class_names
from lofiseg.data.layouts import LayoutError, build_dataset
from lofiseg.data.web import collect_web_images
from lofiseg.evaluate.semantic import score_deeplab
from lofiseg.models.bundle import save_bundle
from lofiseg.models.factory import build_model
from stages import evaluate_semantic, register, train_deeplab
from tests.pipeline_repo import PROJECT, deep_merge
from tests.real_stand_ins import CLASSES, PHOTOS, msrc_like_entry, photo_mask, write_msrc_like


def project_params(changes: dict) -> Params:
    """The repository's params.yaml with ``changes`` merged in (mappings merge, other values replace)."""
    return parse_params(deep_merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), changes))


OPTIONS = DownloadParams(retries=0, backoff_seconds=0.0, timeout_seconds=5.0,
                         datasets={"x": {"source": "synthetic", "generator": "saliency"}})


@pytest.fixture
def msrc(tmp_path: Path) -> Path:
    return write_msrc_like(tmp_path / "msrc_v2")


def build_msrc(msrc: Path, out: Path, **changes: object) -> Dataset:
    spec = DatasetSpec.model_validate({**msrc_like_entry(msrc), **changes})
    return Dataset(build_dataset("msrc", spec, out, out.parent / "cache", OPTIONS, progress=False))


# --- 1. a local semantic set with its own class table -------------------------------------------------------

def test_semantic_layout_keeps_class_ids_maps_void_and_reads_tags_and_names(msrc: Path, tmp_path: Path):
    ds = build_msrc(msrc, tmp_path / "raw" / "msrc")
    assert {r.id: (r.split, r.tags) for r in ds} == {
        i: (split, (tag,) if tag else ()) for i, (tag, split, _) in PHOTOS.items()}
    mask = ds.mask("1_1_s")
    expected = photo_mask(2)
    assert np.array_equal(mask, np.where(expected == 0, IGNORE, expected))  # void 0 -> 255, ids kept
    assert mask[0, 0] == 4 and mask[31, 0] == 1 and mask[15, 15] == 2 and mask[9, 9] == IGNORE
    assert read_class_names(ds.root) == CLASSES


def test_semantic_layout_errors_name_the_file_and_value(msrc: Path, tmp_path: Path):
    with pytest.raises(LayoutError, match=r"groups.csv: tags_file needs the columns 'id' and 'subject'"):
        build_msrc(msrc, tmp_path / "a", tags_column="subject")
    with pytest.raises(LayoutError, match=r"1_1_s.png.*class-index mask values \[2, 4\]; allowed 0..1"):
        build_msrc(msrc, tmp_path / "b", classes=["void", "grass"])
    with pytest.raises(ValueError, match="void_value 5 needs layout 'semantic' and must be a mask id 0..4"):
        DatasetSpec.model_validate({**msrc_like_entry(msrc), "void_value": 5})
    with pytest.raises(ValueError, match="tags_column needs tags_file"):
        DatasetSpec.model_validate({**msrc_like_entry(msrc), "tags_file": None})
    with pytest.raises(ValueError, match="layout 'semantic' needs 'classes'"):
        DatasetSpec.model_validate({**msrc_like_entry(msrc), "classes": None, "void_value": None})


# --- 2. web classes from a data set ---------------------------------------------------------------------------

def msrc_web(raw: Path, out: Path, **changes: object) -> Dataset:
    web = WebParams.model_validate({"classes": {"cow": {"kind": "dataset", "name": "msrc", "tag": "cow"},
                                                "sheep": {"kind": "dataset", "name": "msrc", "tag": "sheep"}},
                                    **changes})
    report = collect_web_images(web, out, out.parent / "webcache", progress=False, datasets=raw)
    assert not report.rejected
    return Dataset(out)


@pytest.fixture
def raw(msrc: Path, tmp_path: Path) -> Path:
    build_msrc(msrc, tmp_path / "raw" / "msrc")
    return tmp_path / "raw"


def test_a_data_sets_tagged_photos_become_a_web_class_with_one_class_masks(raw: Path, tmp_path: Path):
    web = msrc_web(raw, tmp_path / "web")
    source = Dataset(raw / "msrc")
    assert {r.id: (r.split, r.tags) for r in web} == {
        i: (split, (tag,)) for i, (tag, split, _) in PHOTOS.items() if tag}  # train, val and test; untagged left out
    for record in web:
        truth = source.mask(record.id)
        object_id = CLASSES.index(record.tags[0])
        expected = np.where(truth == IGNORE, IGNORE, truth == object_id).astype(np.uint8)
        assert np.array_equal(web.mask(record), expected)  # the class's pixels 1, sky and grass 0, void 255
        assert web.image(record).tobytes() == source.image(record.id).tobytes()
    assert set(np.unique(web.mask("2_1_s")).tolist()) == {0, 1, IGNORE}
    capped = msrc_web(raw, tmp_path / "capped", max_images_per_class=1)
    assert sorted(r.id for r in capped if r.split != "test") == ["1_1_s", "2_1_s"]  # first by id; test kept
    assert len([r for r in capped if r.split == "test"]) == 2


def test_data_set_web_classes_say_what_is_missing(raw: Path, tmp_path: Path):
    web = WebParams.model_validate({"classes": {"horse": {"kind": "dataset", "name": "msrc", "tag": "horse"}}})
    with pytest.raises(ValueError, match=r"data set 'msrc' at .* has no class 'horse' \(its classes.json: "):
        collect_web_images(web, tmp_path / "w", tmp_path / "c", progress=False, datasets=raw)
    with pytest.raises(ValueError, match=r"manifest.csv: web class 'horse' takes its images from data set "
                                         r"'msrc', which is missing; run the download stage first"):
        collect_web_images(web, tmp_path / "w", tmp_path / "c", progress=False, datasets=tmp_path / "elsewhere")
    web = WebParams.model_validate({"classes": {"cow": {"kind": "dataset", "name": "msrc", "tag": "dog"}}})
    with pytest.raises(ValueError, match=r"no image tagged 'dog' in .*; its tags are \['cow', 'sheep'\]"):
        collect_web_images(web, tmp_path / "w", tmp_path / "c", progress=False, datasets=raw)
    with pytest.raises(ParamsError, match=r"web.classes.cow.name 'msrc' is not an enabled data set"):
        project_params({"web": {"classes": {"cow": {"kind": "dataset", "name": "msrc", "tag": "cow"}}}})


def test_the_gt_baseline_gets_the_regularized_budget_unless_told():
    single = project_params({}).train_single
    assert single.gt_epochs is None
    assert single.gt_epoch_count() == 15 + 10 + 5  # params.yaml: annealing + normal + negative, no finetune
    assert TrainSingleParams.model_validate({"gt_epochs": 7}).gt_epoch_count() == 7
    transfer = project_params({"train_single": {"init_from": "sun", "negatives": False,
                                                "finetune": {"epochs": 4}}}).train_single
    assert transfer.gt_epoch_count() == 10 + 4  # no annealing after a transfer, no negative stage, + finetune


# --- 3. the upper bound on the same classes ---------------------------------------------------------------------

def msrc_params(msrc: Path, **sections: dict) -> Params:
    """params.yaml with the MSRC-like set downloaded and its cow and sheep photos as the web classes."""
    return project_params(deep_merge({
        "download": {"datasets": {"msrc": msrc_like_entry(msrc)}},
        "web": {"classes": {"cow": {"kind": "dataset", "name": "msrc", "tag": "cow"},
                            "sheep": {"kind": "dataset", "name": "msrc", "tag": "sheep"}}},
        "train_deeplab": {"gt_dataset": "msrc", "image_size": 32},
        "evaluate": {"semantic_sets": ["msrc"]}}, sections))


def test_the_upper_bound_trains_and_is_scored_on_the_web_classes_only(msrc: Path, raw: Path):
    params = msrc_params(msrc)
    assert params.semantic_classes() == ["background", "cow", "sheep"]
    data = train_deeplab.supervision_data("gt", raw, params)
    source = Dataset(raw / "msrc")
    for split, records in ((data.train, source.split("train")), (data.val, source.split("val"))):
        assert split.ids == [r.id for r in records]
        for i, record in enumerate(records):
            labels = source.mask(record)  # void 255, grass 1, cow 2, sheep 3, sky 4 at 32 px: no resampling
            expected = np.choose(np.where(labels == IGNORE, 5, labels), [0, 0, 1, 2, 0, IGNORE])
            assert np.array_equal(split.masks[i].numpy(), expected)  # grass and sky are background
    truth = params.deeplab_scoring().truth("msrc", np.array([[1, 2, 3, 4, IGNORE]], np.uint8))
    assert truth.tolist() == [[0, 1, 2, 0, IGNORE]]


# --- 4. evaluation on the split a set has ------------------------------------------------------------------------

def test_a_set_without_test_split_is_scored_on_the_split_params_name(msrc: Path, tmp_path: Path):
    val_only = {"split_files": {"val": "splits/val.txt"}}
    build_msrc(msrc, tmp_path / "raw" / "msrc", **val_only)
    bundle = save_bundle(tmp_path / "deeplab" / "model.pt",
                         build_model(arch="tiny_unet", num_classes=3, width=4), {"image_size": 32})
    params = msrc_params(msrc, download={"datasets": {"msrc": val_only}}, evaluate={"splits": {"msrc": "val"}})
    assert params.evaluate.split_of("msrc") == "val" and params.evaluate.split_of("scenes") == "test"
    by_set, _ = score_deeplab(bundle, tmp_path / "raw", params.deeplab_scoring())
    assert by_set["msrc"]["pixel_acc"] is not None  # the one val photo scored

    test_only = msrc_params(msrc)
    with pytest.raises(ValueError, match=r"data set 'msrc' has no 'test' split to score \(it has \{'val': 1\}\); "
                                         r"choose the split with evaluate.splits.msrc"):
        score_deeplab(bundle, tmp_path / "raw", test_only.deeplab_scoring())
    with pytest.raises(ParamsError, match=r"splits names \['voc'\], which no evaluate.\*_sets lists"):
        msrc_params(msrc, evaluate={"splits": {"voc": "val"}})


# --- 7. a single class of one's own ----------------------------------------------------------------------------

def test_one_class_of_ones_own_runs_without_the_multi_class_part(msrc: Path, raw: Path, tmp_path: Path):
    alone = {"web": {"classes": {"dog": {"kind": "local", "path": str(tmp_path / "dogs")}}}}
    with pytest.raises(ParamsError, match=r"train_deeplab.gt_dataset 'scenes': none of its classes .* is in "
                                          r"web.classes \['dog'\]; for single-class models only, set "
                                          r"train_deeplab.enabled: false"):
        project_params(alone)
    params = project_params(deep_merge(alone, {"train_deeplab": {"enabled": False}, "evaluate": {
        "semantic_sets": ["nowhere"]}}))  # the multi-class part's data sets are not checked
    assert list(params.web.classes) == ["dog"]

    # train_deeplab@*: info.json says why, no model
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(deep_merge(yaml.safe_load((PROJECT / "params.yaml").read_text()),
                                                     deep_merge(alone, {"train_deeplab": {"enabled": False}}))))
    train_deeplab.main(["--params", str(params_path), "--supervision", "pseudo", "--data", str(tmp_path),
                        "--out", str(tmp_path / "deeplab" / "pseudo")])
    assert json.loads((tmp_path / "deeplab" / "pseudo" / "info.json").read_text()) == {
        "supervision": "pseudo", "skipped": "train_deeplab.enabled is false"}
    # register: the skipped bundle is reported, not an error
    spec = RegisteredModel(bundle=str(tmp_path / "deeplab" / "pseudo"), metrics="none.json",
                           eval_data="data/raw/scenes", gate={"metric": "deeplab_pseudo/miou"})
    assert register.plan("lofiseg-deeplab", spec, params) == {"skipped": "train_deeplab.enabled is false"}

    # evaluate_semantic: the single-class models and pseudo labels are scored, DeepLab entries are null
    web = msrc_web(raw, tmp_path / "web")
    with DatasetWriter(tmp_path / "pseudo_gt") as writer:
        for record in web.split("train"):
            label = np.where(web.mask(record) == 1, 1 if "cow" in record.tags else 2, 0).astype(np.uint8)
            writer.add(Sample(record.id, web.image(record), label, "train", record.tags))
    cows = msrc_params(msrc, train_deeplab={"enabled": False})
    metrics, files = evaluate_semantic.evaluate(cows, raw, tmp_path / "web", tmp_path / "pseudo_gt",
                                                tmp_path / "single", tmp_path / "deeplab",
                                                tmp_path / "semantic.json", tmp_path / "report")
    assert metrics["deeplab_pseudo"] is None and metrics["deeplab_gt"] is None and metrics["deeplab_ratio"] is None
    assert metrics["pseudo_labels"]["miou"] == pytest.approx(1.0)  # the web truth itself, void left out
    assert metrics["single_class"]["cow"] == {"reg": None, "gt": None, "gap": None}  # no model trained here
    assert not (tmp_path / "report" / "scenes_grid.png").exists() and (tmp_path / "report" / "table2.md").is_file()


def test_the_msrc_overrides_of_the_benchmarks_are_valid_params():
    overrides = yaml.safe_load((PROJECT / "benchmarks" / "params" / "msrc_v2.yaml").read_text())
    params = project_params(overrides)
    spec = params.download.datasets["msrc_v2"]
    assert spec.layout == "semantic" and spec.void_value == 0 and spec.tags_column == "object"
    assert params.dataset_classes("msrc_v2")[4] == "cow" and len(params.dataset_classes("msrc_v2")) == 24
    assert {s.kind for s in params.web.classes.values()} == {"dataset"} and "cow" in params.web.classes
