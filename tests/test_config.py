"""params.yaml is validated once, at the edge, with messages that name the key and what is allowed."""

from __future__ import annotations

import copy

import pytest
import yaml

from lofiseg.config import ParamsError, load_params, parse_params, rate_key

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
    with pytest.raises(ParamsError, match=r"trian: unknown key; allowed keys: download, evaluate, noise, pseudo_label, registry, retrain, seed, synthetic, tracking, "
                       r"train_deeplab, train_regions, train_saliency, train_single, web"):
        parse_params(_params(trian={}))


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
