"""The `web` stage: synthetic classes plus a local folder with bad items -> data set, report, rejections, sheet."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from lofiseg.data.format import Dataset, DatasetFormatError, DatasetWriter
from lofiseg.data.synthetic import generate_web
from stages import web as web_stage
from tests.pipeline_repo import PROJECT, TINY, deep_merge


def _png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def project(tmp_path):
    with DatasetWriter(tmp_path / "raw" / "web") as writer:
        for sample in generate_web(["sun", "leaf"], per_class=3, negatives=2, confuser_prob=0.3, test_per_class=1,
                                   image_size=32, seed=0):
            writer.add(sample)
    local = tmp_path / "photos"
    local.mkdir()
    (local / "a.png").write_bytes(_png(40, 1))
    (local / "b.png").write_bytes(_png(40, 2))
    (local / "copy_of_a.png").write_bytes(_png(40, 1))  # duplicate bytes
    (local / "small.png").write_bytes(_png(16, 3))  # below min_side 32
    (local / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params = deep_merge(deep_merge(raw, TINY), {"web": {"classes": {
        "sun": {"kind": "synthetic"}, "leaf": {"kind": "synthetic"}, "kite": {"kind": "local", "path": str(local)}}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def _main(root, raw="raw"):
    web_stage.main(["--params", str(root / "params.yaml"), "--raw", str(root / raw), "--out", str(root / "web"),
                    "--cache", str(root / "cache"), "--report", str(root / "report")])


def test_web_stage_builds_the_data_set_and_reports_every_rejection(project):
    _main(project)
    dataset = Dataset(project / "web")
    tags = sorted(t for r in dataset for t in r.tags)
    # 3 train + 1 test per synthetic class; the local class keeps a.png and b.png only; 'none' images stay out
    assert tags == ["kite"] * 2 + ["leaf"] * 4 + ["sun"] * 4
    assert all(r.has_mask for r in dataset if "kite" not in r.tags)
    assert not any(r.has_mask for r in dataset if "kite" in r.tags)

    report = json.loads((project / "report" / "report.json").read_text())
    assert report["classes"] == {"sun": {"accepted": 4, "rejected": 0}, "leaf": {"accepted": 4, "rejected": 0},
                                 "kite": {"accepted": 2, "rejected": 3}}
    assert report["splits"]["sun"] == {"train": 3, "val": 0, "test": 1}
    reasons = {r["source"].rsplit("/", 1)[-1]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == {"copy_of_a.png", "small.png", "broken.png"}
    assert reasons["copy_of_a.png"].startswith("duplicate of kite/")
    assert reasons["small.png"].startswith("too small: 16x16")
    assert reasons["broken.png"].startswith("corrupt image")

    markdown = (project / "report" / "rejections.md").read_text()
    assert "| kite | 2 | 3 | 2 | 0 | 0 |" in markdown
    assert "## Rejected items (3)" in markdown and "small.png" in markdown
    with Image.open(project / "report" / "contact_sheet.png") as sheet:
        assert sheet.mode == "RGB" and sheet.width > 96 and sheet.height > 6 * 96  # 3 classes x (image, mask)


def test_missing_synthetic_web_set_is_a_clear_error(project):
    with pytest.raises(DatasetFormatError, match=r"nowhere/web/manifest.csv.*run the download stage"):
        _main(project, raw="nowhere")
    assert not (project / "web").exists()
