"""Label audit (issue 16): hand-worked agreement and Hungarian relabelling, flag P/R/F1, a model that is right by
construction flags exactly the flipped images, and the audit stage on a tiny data set."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from lofiseg.config import ParamsError, SyntheticSaliency, parse_params
from lofiseg.data.audited import relabel, write_audited_copy
from lofiseg.data.format import Dataset, DatasetWriter
from lofiseg.data.noise import make_noisy_copy
from lofiseg.data.synthetic import generate_saliency
from lofiseg.infer.label_audit import agreement_matrices, audit_labels, binary_probs
from lofiseg.metrics.flags import flag_scores
from lofiseg.models.bundle import save_bundle
from lofiseg.models.factory import build_model
from tests.pipeline_repo import PROJECT, TINY, deep_merge, dvc, make_repo, tool_env


def test_binary_flip_scores_the_mean_saliency_difference():
    mask = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.uint8)
    saliency = torch.tensor([[[0.9, 0.2], [0.4, 0.7]]])  # mean 0.8 on given 0, 0.3 on given 1: flipped
    (result,) = audit_labels(binary_probs(saliency), mask)
    assert result.flagged and result.permutation == {0: 1, 1: 0}
    assert result.score == pytest.approx(0.8 - 0.3)
    (kept,) = audit_labels(binary_probs(1 - saliency), mask)
    assert not kept.flagged and kept.permutation == {} and kept.score == pytest.approx(0.0)


def test_a_flipped_empty_mask_is_all_foreground_and_is_flagged():
    mask = torch.ones(1, 2, 2, dtype=torch.uint8)  # an empty mask flipped by the noise stage
    saliency = torch.full((1, 2, 2), 0.2)
    (result,) = audit_labels(binary_probs(saliency), mask)
    assert result.flagged and result.permutation == {0: 1, 1: 0}
    assert result.score == pytest.approx(0.8 - 0.2)  # one label present: (A[1, 0] - A[1, 1]) / 1


def test_three_regions_hungarian_relabelling_by_hand():
    """A = [[.8 .1 .1] [.1 .2 .7] [0 .6 .4]]: the six assignments sum to 1.4 (identity), 2.1 (1<->2), .6, .8,
    .8, .3, so 1 <-> 2 wins by (2.1 - 1.4) / 3."""
    mask = torch.tensor([[[0, 0, 1], [1, 2, 2]]], dtype=torch.uint8)
    rows = {0: [0.8, 0.1, 0.1], 1: [0.1, 0.2, 0.7], 2: [0.0, 0.6, 0.4]}
    probs = torch.tensor([rows[v] for v in mask.flatten().tolist()]).T.reshape(1, 3, 2, 3)
    agreement, present = agreement_matrices(probs, mask)
    assert torch.allclose(agreement[0], torch.tensor([rows[0], rows[1], rows[2]]))
    assert present.all()
    (result,) = audit_labels(probs, mask)
    assert result.flagged and result.permutation == {1: 2, 2: 1}
    assert result.score == pytest.approx(0.7 / 3)
    assert relabel(mask[0].numpy(), result.permutation).tolist() == [[0, 0, 2], [2, 1, 1]]
    assert not audit_labels(probs, mask, min_score=0.3)[0].flagged


def test_ignore_pixels_do_not_count_and_bad_labels_are_named():
    mask = torch.tensor([[[0, 255], [1, 255]]], dtype=torch.uint8)
    saliency = torch.tensor([[[0.1, 1.0], [0.9, 0.0]]])
    agreement, _ = agreement_matrices(binary_probs(saliency), mask)
    assert torch.allclose(agreement[0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    with pytest.raises(ValueError, match=r"labels >= 2.*\[3\]"):
        agreement_matrices(binary_probs(saliency), torch.tensor([[[0, 3], [1, 0]]], dtype=torch.uint8))


def test_flag_precision_recall_f1_by_hand():
    scores = flag_scores([True, True, False, False, True], [True, False, True, False, True])
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (2, 1, 1, 1)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    clean = flag_scores([False, False], [False, False])  # nothing to find, nothing flagged
    assert (clean["precision"], clean["recall"], clean["f1"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="flagged has 1 images, truth 2"):
        flag_scores([True], [True, False])


@pytest.mark.parametrize(("audit", "message"), [
    ({"retrain_rates": [0.3]}, r"audit.retrain_rates \[0.3\] must be among noise.rates \[0.0, 0.5\]"),
    ({"retrain_rates": [0]}, r"audit.retrain_rates.*write every rate as a decimal"),
    ({"min_score": 1.0}, r"audit.min_score"),
])
def test_audit_params_are_checked_naming_the_key(audit, message):
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert parse_params(raw).audit.retrain_rates == []  # CE on the audited copy is off by default
    with pytest.raises(ParamsError, match=message):
        parse_params(deep_merge(raw, {"audit": audit}))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    with DatasetWriter(root / "raw") as writer:
        for sample in generate_saliency(SyntheticSaliency(train=12, val=4, test=2), image_size=32, seed=0):
            writer.add(sample)
    make_noisy_copy(root / "raw", root / "noisy", rate=0.5, seed=0)
    return root


def test_a_model_right_by_construction_flags_exactly_the_flipped_and_restores_the_truth(noisy, tmp_path):
    raw, data = Dataset(noisy / "raw"), Dataset(noisy / "noisy")
    train = data.split("train")
    truth = [r.extra["noise_flipped"] == "1" for r in train]
    assert 0 < sum(truth) < len(truth)
    saliency = torch.stack([torch.from_numpy(raw.mask(raw[r.id])).float() for r in train])  # the true mask
    masks = torch.stack([torch.from_numpy(data.mask(r)) for r in train])
    results = audit_labels(binary_probs(saliency), masks)
    assert [r.flagged for r in results] == truth
    assert all(r.score == pytest.approx(1.0) for r, t in zip(results, truth, strict=True) if t)
    assert flag_scores([r.flagged for r in results], truth)["f1"] == 1.0

    changed = write_audited_copy(noisy / "noisy", tmp_path / "audited",
                                 {r.id: (v.permutation, v.score) for r, v in zip(train, results, strict=True)})
    audited = Dataset(tmp_path / "audited")
    assert changed == sum(truth)
    for record in audited:
        assert np.array_equal(audited.mask(record), raw.mask(raw[record.id])), record.id
        expected = str(int(record.extra["noise_flipped"] == "1")) if record.split == "train" else ""
        assert record.extra["audit_flipped"] == expected
    with pytest.raises(ValueError, match="audited ids \\['nope'\\]"):
        write_audited_copy(noisy / "noisy", tmp_path / "bad", {"nope": ({}, 0.0)})


TINY_CAS = {"tracking": {"enabled": False}, "noise": {"rates": [0.5]},
            "train_saliency": {"losses": ["cas"], "image_size": 32, "epochs": 1, "batch_size": 4,
                               "model": {"arch": "tiny_unet", "encoder": None, "encoder_weights": None,
                                         "freeze_encoder": False, "width": 8}}}


def _stage(root, *args):
    env = tool_env({"PYTHONPATH": str(PROJECT), "LOFISEG_DEVICE": "cpu"})
    proc = subprocess.run([sys.executable, "-m", *args, "--params", str(root / "params.yaml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_audit_stage_writes_the_corrected_copy_report_and_metrics(noisy):
    root = noisy
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_merge(deep_merge(raw, TINY), TINY_CAS)))
    _stage(root, "stages.train_saliency", "--loss", "cas", "--rate", "0.5", "--data", "noisy", "--out", "cas")
    _stage(root, "stages.audit", "--rate", "0.5", "--data", "noisy", "--model", "cas", "--out", "audited",
           "--report", "report", "--metrics", "metrics/audit/0.5.json")
    metrics = json.loads((root / "metrics/audit/0.5.json").read_text())
    noisy_set, audited = Dataset(root / "noisy"), Dataset(root / "audited")
    train = audited.split("train")
    flagged = [r.id for r in train if r.extra["audit_flipped"] == "1"]
    assert metrics["images"] == len(train) == 12 and metrics["flagged"] == len(flagged) == metrics["relabelled"]
    assert metrics["truly_flipped"] == sum(r.extra["noise_flipped"] == "1" for r in train)
    assert {"precision", "recall", "f1", "tp"} <= set(metrics)
    for record in train:  # a flagged binary mask is the given one flipped, the others are unchanged
        given = noisy_set.mask(noisy_set[record.id])
        expected = np.where(given == 255, 255, 1 - given) if record.id in flagged else given
        assert np.array_equal(audited.mask(record), expected.astype(np.uint8)), record.id
        assert 0.0 <= float(record.extra["audit_score"]) <= 1.0
    with open(root / "report/flags.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted(flagged)
    assert (root / "report/grid.png").stat().st_size > 0 and (root / "report/flags.md").is_file()


@pytest.mark.slow
def test_dvc_runs_the_audit_per_rate_and_trains_on_the_audited_copy_only_when_asked(tmp_path):
    repo = make_repo(tmp_path / "repo")
    off = dvc(repo, "stage", "list").stdout
    assert "audit@0.0" in off and "audit@0.5" in off and "train_audited" not in off
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_merge(params, {"audit": {"retrain_rates": [0.5]}})))
    assert "train_audited@0.5" in dvc(repo, "stage", "list").stdout


def test_evaluate_saliency_scores_the_ce_model_of_the_audited_copy_when_present(noisy, tmp_path):
    from stages.evaluate_saliency import AUDITED, evaluate_saliency

    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params = parse_params(deep_merge(deep_merge(raw, TINY), TINY_CAS))
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "saliency").symlink_to(noisy / "raw")
    (tmp_path / "noisy").mkdir()
    (tmp_path / "noisy" / "0.5").symlink_to(noisy / "noisy")
    torch.manual_seed(0)
    for folder, loss in (("cas", "cas"), (AUDITED, "ce")):
        model = build_model(num_classes=2, **params.train_saliency.model.model_dump())
        save_bundle(tmp_path / "models" / folder / "0.5" / "model.pt", model,
                    {"loss": loss, "noise_rate": 0.5, "channel": 1, "image_size": 32})
    metrics, _ = evaluate_saliency(params, tmp_path / "models", tmp_path / "raw", tmp_path / "noisy",
                                   tmp_path / "saliency.json", tmp_path / "report")
    assert set(metrics) == {"cas", AUDITED}
    assert set(metrics[AUDITED]["0.5"]["saliency"]) == {"fbeta_adaptive", "fbeta_weighted", "fbeta_max", "mae"}
