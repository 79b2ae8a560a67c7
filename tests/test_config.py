"""params.yaml is validated once, at the edge, with messages that name the key and what is allowed."""

from __future__ import annotations

import copy
import itertools
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from lofiseg.config import (
    OrchestrationParams,
    ParamsError,
    PseudoLabelParams,
    RegularizedScheduleParams,
    TrainRegionsParams,
    load_params,
    parse_params,
    rate_key,
)
from lofiseg.infer.dense_crf import CRFParams
from lofiseg.infer.regions import RegionSettings
from lofiseg.losses.regularized import CompleteRegularizedLoss, RegularizedLossSchedule
from lofiseg.models.factory import build_model

REPO_PARAMS = yaml.safe_load(open("params.yaml"))


def _params(**changes):
    raw = copy.deepcopy(REPO_PARAMS)
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return raw


def test_repo_params_are_valid():
    params = load_params("params.yaml")
    assert params.noise.dataset in params.download.enabled()
    assert all(isinstance(r, float) for r in params.noise.rates)


def test_unknown_key_names_key_and_allowed_keys():
    raw = _params(noise__rats=[0.1])
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    assert "noise.rats: unknown key; allowed keys: boundary_px, dataset, drop_region_prob, rates" in str(err.value)


def test_unknown_nested_key_inside_dict_of_sections():
    raw = _params()
    raw["download"]["datasets"]["saliency"]["generater"] = "saliency"
    with pytest.raises(ParamsError, match=r"download.datasets.saliency.generater: unknown key; allowed keys: "
                                          r"classes, description, enabled, files, generator"):
        parse_params(raw)


def test_unknown_top_level_section():
    with pytest.raises(ParamsError, match=r"trian: unknown key; allowed keys: audit, download, evaluate, noise, orchestration, pseudo_label, registry, retrain, seed, synthetic, tracking, "
                       r"train_deeplab, train_regions, train_saliency, train_single, web"):
        parse_params(_params(trian={}))


def test_orchestration_first_matching_pattern_wins():
    stages = load_params("params.yaml").orchestration
    assert stages == OrchestrationParams()  # params.yaml spells out the defaults
    assert (stages.stage_policy("download").retries, stages.stage_policy("web").retries) == (2, 2)
    assert stages.stage_policy("train_single@sun").timeout_seconds == 6 * 3600
    assert stages.stage_policy("evaluate_saliency").model_dump() == {"retries": 0, "retry_delay_seconds": 10,
                                                                     "timeout_seconds": 6 * 3600}
    ordered = parse_params(_params(orchestration={"stages": {
        "train_single@sun": {"retries": 1}, "train_*": {"timeout_seconds": 60}}})).orchestration
    assert ordered.stage_policy("train_single@sun").model_dump() == {"retries": 1, "retry_delay_seconds": 10,
                                                                     "timeout_seconds": 6 * 3600}
    assert ordered.stage_policy("train_single@leaf").timeout_seconds == 60
    assert ordered.stage_policy("download").retries == 0  # a section replaces the default patterns


@pytest.mark.parametrize("stages, message", [
    ({"web": {"retries": -1}}, r"orchestration.stages.web.retries: Input should be greater than or equal to 0"),
    ({"web": {"timeout_seconds": 0}}, r"orchestration.stages.web.timeout_seconds: Input should be greater than"),
    ({"web": {"retry_delay_seconds": 2.5}}, r"orchestration.stages.web.retry_delay_seconds: Input should be a "
                                            r"valid integer"),
    ({" web": {}}, r"stage pattern ' web' must be a non-empty fnmatch pattern"),
    ({"web": {"retry": 1}}, r"orchestration.stages.web.retry: unknown key; allowed keys: retries, "
                            r"retry_delay_seconds, timeout_seconds"),
])
def test_orchestration_is_checked_at_the_edge(stages, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(_params(orchestration={"stages": stages}))


def test_out_of_range_and_wrong_type():
    with pytest.raises(ParamsError) as err:
        parse_params(_params(noise__rates=[0.0, 1.5], synthetic__image_size="big", seed=-1))
    msg = str(err.value)
    assert "noise.rates[1]: Input should be less than or equal to 1 (got 1.5)" in msg
    assert "synthetic.image_size: Input should be a valid integer" in msg and "'big'" in msg
    assert "seed: Input should be greater than or equal to 0 (got -1)" in msg


def test_test_time_scales_must_be_positive():
    with pytest.raises(ParamsError, match=r"evaluate.semantic_scales\[1\]: Input should be greater than 0"):
        parse_params(_params(evaluate__semantic_scales=[1.0, 0.0]))
    assert parse_params(_params(evaluate__semantic_scales=[0.75, 1.5], evaluate__semantic_flip=True)
                        ).evaluate.semantic_scales == [0.75, 1.5]


def test_mosaic_is_a_probability_per_supervision_and_needs_an_even_image_size():
    with pytest.raises(ParamsError, match=r"train_deeplab.mosaic.pseudo: Input should be less than or equal to 1"):
        parse_params(_params(train_deeplab__mosaic__pseudo=1.5))
    with pytest.raises(ParamsError, match=r"train_deeplab.mosaic.web: unknown key; allowed keys: gt, pseudo, web_gt"):
        parse_params(_params(train_deeplab__mosaic__web=0.5))
    with pytest.raises(ParamsError, match=r"mosaic \{'pseudo': 0.25, 'web_gt': 0.25\} tiles four half-size images: "
                                          r"image_size must be even, got 65"):
        parse_params(_params(train_deeplab__image_size=65))
    off = {"pseudo": 0.0, "gt": 0.0, "web_gt": 0.0}
    assert parse_params(_params(train_deeplab__image_size=65, train_deeplab__mosaic=off)).train_deeplab.image_size == 65


def test_registry_eval_params_must_be_params_keys():
    raw = _params()
    raw["registry"]["models"]["lofiseg-deeplab"]["eval_params"] = ["evaluate.semantic_flip", "evaluate.scalez"]
    with pytest.raises(ParamsError, match=r"registry.models.lofiseg-deeplab.eval_params\[1\] 'evaluate.scalez' "
                                          r"is not a params key"):
        parse_params(raw)
    assert parse_params(_params()).value_at("evaluate.semantic_scales") == [1.0, 1.5, 2.0]


def test_literal_lists_allowed_values():
    raw = _params()
    raw["download"]["datasets"]["saliency"]["source"] = "ftp"
    with pytest.raises(ParamsError, match=r"download.datasets.saliency.source: Input should be 'synthetic', "
                                          r"'local', 'http' or 's3' \(got 'ftp'\)"):
        parse_params(raw)


def test_integer_rates_rejected_so_stage_names_match():
    with pytest.raises(ParamsError, match=r"write every rate as a decimal \(e.g. 0.0, 1.0\), got 1"):
        parse_params(_params(noise__rates=[0.0, 1]))
    assert [rate_key(r) for r in (0.0, 0.02, 0.5, 1.0)] == ["0.0", "0.02", "0.5", "1.0"]


def test_cross_reference_to_unknown_dataset():
    with pytest.raises(ParamsError, match=r"noise.dataset 'ecssd' is not an enabled data set"):
        parse_params(_params(noise__dataset="ecssd"))


def test_source_specific_fields():
    raw = _params()
    raw["download"]["datasets"]["x"] = {"source": "http", "files": [{"uri": "s3://b/k"}]}
    with pytest.raises(ParamsError, match=r"download.datasets.x: Value error, source 'http': uri 's3://b/k' must"):
        parse_params(raw)
    raw["download"]["datasets"]["x"] = {"source": "synthetic"}
    with pytest.raises(ParamsError, match=r"source 'synthetic' needs 'generator'"):
        parse_params(raw)
    raw["download"]["datasets"]["x"] = {"source": "s3", "files": [{"uri": "s3://b/k", "sha256": "abc"}]}
    with pytest.raises(ParamsError, match=r"download.datasets.x.files\[0\].sha256: String should match"):
        parse_params(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_params_are_frozen():
    params = load_params("params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.noise.rates = [0.3]


def test_semantic_label_space_and_dataset_classes():
    params = load_params("params.yaml")
    assert params.semantic_classes() == ["background", "sun", "leaf", "brick", "star"]
    assert params.dataset_classes("scenes") == ["background", "sun", "leaf", "brick", "star"]
    assert params.dataset_classes("voc2012")[:3] == ["background", "aeroplane", "bicycle"]
    with pytest.raises(ValueError, match=r"download.datasets.saliency: not a semantic data set"):
        params.dataset_classes("saliency")


@pytest.mark.parametrize(("changes", "message"), [
    ({"web__classes": {"sun": {"kind": "synthetic"}, "moon": {"kind": "synthetic"}}},
     r"web.classes \['moon'\]: kind 'synthetic' needs a class of synthetic.classes"),
    ({"web__classes": {"sun": {"kind": "local"}}}, r"kind 'local' needs 'path'"),
    ({"train_single__init_from": "nowhere"}, r"train_single.init_from 'nowhere' must be null, a class of web.classes"),
    ({"evaluate__semantic_sets": ["saliency"]}, r"evaluate.semantic_sets\[0\]: .*not a semantic data set"),
    ({"train_deeplab__gt_dataset": "voc2012"}, r"train_deeplab.gt_dataset 'voc2012' is not an enabled data set"),
    ({"web__classes": {"aeroplane": {"kind": "local", "path": "x"}}},
     r"train_deeplab.gt_dataset 'scenes': none of its classes"),
    ({"registry__models": {"bad name!": {"bundle": "m", "metrics": "m.json", "eval_data": "d",
                                         "gate": {"metric": "miou"}}}}, r"registered model name 'bad name!'"),
    ({"train_single__schedule__sigma_rule": "other"}, r"train_single.schedule.sigma_rule"),
])
def test_cross_references_of_the_new_sections(changes, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(_params(**changes))


def test_init_from_accepts_a_class_a_data_set_or_a_model_file():
    for value in ("leaf", "saliency", "models/pretrained/model.pt"):
        assert parse_params(_params(train_single__init_from=value)).train_single.init_from == value


# --- model settings at the edge ---------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    ({"train_saliency__model__encoder": "tu-tf_efficientnet_lite9"},
     r"train_saliency.model.encoder: Value error, arch 'unet' needs an encoder, one of \['mobilenet_v2', "
     r"'resnext50_32x4d', .*'tu-tf_efficientnet_lite0', 'timm-tf_efficientnet_lite0'\], got 'tu-tf_efficientnet_lite9'"),
    ({"train_deeplab__model__arch": "deeplabv3_resnet101"},
     r"train_deeplab.model.encoder: Value error, arch 'deeplabv3_resnet101' has the fixed encoder 'resnet101': "
     r"encoder must be null or 'resnet101', got 'tu-tf_efficientnet_lite0'"),
    ({"train_regions__model": {"arch": "tiny_unet", "encoder": "resnet18"}},
     r"train_regions.model.encoder: Value error, arch 'tiny_unet' has its own encoder: encoder must be null"),
    ({"train_single__model__encoder_weights": "imagenet1k"},
     r"train_single.model.encoder_weights: Value error, encoder_weights must be null, imagenet, lite0-imagenet or "
     r"the path of an existing state-dict file; no such file: 'imagenet1k'"),
    ({"train_single__model__encoder": "mobilenet_v2"},
     r"train_single.model.encoder_weights: Value error, encoder_weights 'lite0-imagenet' needs encoder in "
     r"\['tu-tf_efficientnet_lite0', 'timm-tf_efficientnet_lite0'\], got encoder 'mobilenet_v2'"),
    ({"train_regions__model": {"arch": "tiny_unet", "encoder_weights": "imagenet"}},
     r"train_regions.model.encoder_weights: Value error, arch 'tiny_unet' has no pretrained weights"),
    ({"train_deeplab__device": "gpu"},
     r"train_deeplab.device: Value error, device must be auto, cpu, cuda or cuda:N \(N = 0, 1, ...\), got 'gpu'"),
    ({"train_saliency__device": "cuda:x"}, r"train_saliency.device: Value error, device must be auto, cpu, cuda"),
])
def test_model_settings_are_checked_at_the_edge(changes, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(_params(**changes))


def test_model_settings_accept_what_build_model_accepts(tmp_path):
    state = tmp_path / "encoder.pt"
    state.write_bytes(b"")  # only its existence is checked at the edge; build_model reads it
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert parse_params(_params(train_deeplab__device=device)).train_deeplab.device == device
    model = {"arch": "deeplabv3_resnet50", "encoder": "resnet50", "encoder_weights": str(state)}
    assert parse_params(_params(train_deeplab__model=model)).train_deeplab.model.encoder_weights == str(state)
    tiny = {"arch": "tiny_unet", "encoder": None, "encoder_weights": None}
    assert parse_params(_params(train_regions__model=tiny)).train_regions.model.arch == "tiny_unet"


def test_a_model_typo_stops_the_stage_before_any_work_with_exit_2(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(_params(train_saliency__model__encoder="resnet19")))
    proc = subprocess.run([sys.executable, "-m", "stages.train_saliency", "--params", str(bad), "--loss", "ce",
                           "--rate", "0.0", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "error: " in proc.stderr and "train_saliency.model.encoder: Value error, arch 'unet' needs an encoder, " \
        "one of ['mobilenet_v2'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


# --- one source of defaults: the library's settings objects -----------------------------------------------

def test_defaults_come_from_the_library_settings():
    schedule = RegularizedScheduleParams()
    assert schedule.loss_schedule() == RegularizedLossSchedule()  # the paper's 15 + 50 epochs, no negative stage
    assert (schedule.loss_schedule().normal_epochs, schedule.loss_schedule().negative_epochs) == (50, 0)
    default_loss, loss = CompleteRegularizedLoss(), schedule.loss()
    assert vars(loss).keys() == vars(default_loss).keys()
    assert {k: v for k, v in vars(loss).items() if not k.startswith("_")} == \
        {k: v for k, v in vars(default_loss).items() if not k.startswith("_")}
    assert TrainRegionsParams().region_settings(seed=0) == RegionSettings()
    assert PseudoLabelParams().crf_settings() == CRFParams()
    assert PseudoLabelParams(crf=False).crf_settings() is None


def test_repo_params_run_todays_numbers():
    """params.yaml writes every knob at the value the library used before it was a knob."""
    params = load_params("params.yaml")
    assert params.train_regions.region_settings(seed=0) == RegionSettings()
    assert params.train_regions.region_settings(seed=0, info={"delta_d": 2.0}).embedding_bandwidth == 2.0
    assert params.pseudo_label.crf_settings() == CRFParams(iterations=5)
    assert params.train_single.schedule.loss_schedule() == RegularizedLossSchedule(normal_epochs=10, negative_epochs=5)
    assert params.train_single.schedule.loss_schedule(anneal=False, negatives=False) == RegularizedLossSchedule(
        annealing_epochs=0, normal_epochs=10, negative_epochs=0)
    loss = params.train_single.schedule.loss()
    assert (loss.lambda_s, loss.border_width, loss.center_size, loss.min_size_reduction) == (5.0, 3, 3, "mean")


def test_new_knobs_reach_the_settings():
    changed = parse_params(_params(train_regions__clustering="kmeans", train_regions__max_points=512,
                                   train_regions__crf_iterations=3,
                                   train_regions__crf_kernels={"bilateral_sxy": 20.0},
                                   pseudo_label__crf_kernels={"gaussian_compat": 0.0},
                                   train_single__schedule__lambda_s=2.5, train_single__schedule__border_width=2,
                                   train_single__schedule__center_size=4,
                                   train_single__schedule__min_size_reduction="sum"))
    regions = changed.train_regions.region_settings(seed=3)
    assert (regions.clustering, regions.max_points, regions.seed) == ("kmeans", 512, 3)
    assert regions.crf == CRFParams(iterations=3, bilateral_sxy=20.0)
    assert changed.pseudo_label.crf_settings() == CRFParams(gaussian_compat=0.0)
    loss = changed.train_single.schedule.loss()
    assert (loss.lambda_s, loss.border_width, loss.center_size, loss.min_size_reduction) == (2.5, 2, 4, "sum")
    with pytest.raises(ParamsError, match=r"train_regions.clustering: Input should be 'argmax' or 'kmeans'"):
        parse_params(_params(train_regions__clustering="meanshift"))
    with pytest.raises(ParamsError, match=r"pseudo_label.crf_kernels.bilateral_sxy: Input should be greater than 0"):
        parse_params(_params(pseudo_label__crf_kernels={"bilateral_sxy": 0.0}))


# --- the papers' settings, one edit away ------------------------------------------------------------------

def paper_settings(text: str) -> list[tuple[str, str, dict]]:
    """(section, label, edit) of every "paper setting" comment of params.yaml: an inline flow mapping
    (``# paper setting: {...}``) or a YAML block on the following ``#   `` lines; the section is the next
    top-level key."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        match = re.match(r"^# paper setting( \((?P<label>[^)]*)\))?:(?P<inline>.*)$", line)
        if not match:
            continue
        body = match["inline"].strip()
        if not body:
            block = [item[2:] for item in itertools.takewhile(lambda x: x.startswith("#   "), lines[i + 1:])]
            body = textwrap.dedent("\n".join(block))
        section = next(m[1] for item in lines[i + 1:] if (m := re.match(r"^([a-z_]+):\s*$", item)))
        found.append((section, match["label"] or section, yaml.safe_load(body)))
    return found


PAPER_SETTINGS = paper_settings(open("params.yaml").read())


def test_every_documented_paper_setting_is_found():
    assert [(section, label) for section, label, _ in PAPER_SETTINGS] == [
        ("train_saliency", "train_saliency"), ("train_saliency", "train_saliency"),
        ("train_single", "UMobV2"), ("train_single", "UResNext"), ("train_deeplab", "train_deeplab")]


@pytest.mark.parametrize(("section", "label", "edit"), PAPER_SETTINGS,
                         ids=[f"{s}-{e['model']['arch']}-{e['model'].get('encoder')}" for s, _, e in PAPER_SETTINGS])
def test_paper_setting_validates_and_builds_its_model(section, label, edit):
    raw = _params()
    raw[section].update(edit)
    params = parse_params(raw, f"params.yaml with the paper setting of {section} ({label})")
    cfg = getattr(params, section)
    assert {key: getattr(cfg, key) for key in edit if key != "model" and not isinstance(edit[key], dict)} == \
        {key: value for key, value in edit.items() if key != "model" and not isinstance(value, dict)}
    model_args = cfg.model.model_dump() | {"encoder_weights": None}  # no download in tests
    model = build_model(num_classes=2, **model_args).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
