"""`dvc repro` of the data stages end to end in a temporary git repository, on tiny settings."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from lofiseg.data.format import Dataset
from tests.pipeline_repo import dvc, make_repo, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    dvc(repo, "repro", "download", "noise")
    return repo


def test_outputs_exist_and_validate(repo):
    for name in ("saliency", "web", "scenes", "regions"):
        Dataset(repo / "data/raw" / name).validate()
    sal = Dataset(repo / "data/raw/saliency")
    assert [len(sal.split(s)) for s in ("train", "val", "test")] == [8, 4, 4]
    web = Dataset(repo / "data/raw/web")
    assert {t for r in web for t in r.tags} >= {"sun", "leaf"}
    assert (repo / "reports/data/contact_sheet.png").stat().st_size > 1000
    assert (repo / "dvc.lock").is_file()


def test_noisy_copies_differ_only_in_flipped_train_masks(repo):
    clean, noisy = Dataset(repo / "data/noisy/0.0"), Dataset(repo / "data/noisy/0.5")
    assert all(r.extra["noise_flipped"] == "0" for r in clean)
    flipped = [r for r in noisy if r.extra["noise_flipped"] == "1"]
    assert flipped and all(r.split == "train" for r in flipped)
    for r in flipped:
        assert np.array_equal(noisy.mask(r), 1 - clean.mask(r.id))


def test_second_repro_is_a_fast_no_op(repo):
    started = time.perf_counter()
    out = dvc(repo, "repro", "download", "noise").stdout
    assert "Data and pipelines are up to date" in out
    assert time.perf_counter() - started < 30


def test_dag_lists_the_stages(repo):
    out = dvc(repo, "dag", "--md").stdout
    assert "download" in out and "noise@0.5" in out


def test_bad_params_stop_the_stage_before_work(repo):
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text.replace("noise:\n", "noise:\n  rats: 3\n", 1))
    before = (repo / "data/raw/saliency/manifest.csv").read_bytes()
    try:
        proc = run(repo, sys.executable, "-m", "stages.download", check=False)
        assert proc.returncode == 2
        assert "noise.rats: unknown key; allowed keys: boundary_px, dataset, drop_region_prob, rates" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert (repo / "data/raw/saliency/manifest.csv").read_bytes() == before  # nothing lost
    finally:
        (repo / "params.yaml").write_text(text)
