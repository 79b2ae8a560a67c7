"""BSDS500 through the ``bsds`` layout (a local folder of .mat files with several human segmentations), its val
split segmented at a sweep of region counts and scored at ODS / OIS the way the BSDS benchmark does (CAS
Table 4), against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lofiseg.config import DatasetSpec, DownloadParams
from lofiseg.data.format import Dataset
from lofiseg.data.layouts import build_dataset
from lofiseg.evaluate.regions import score_regions
from lofiseg.infer.regions import RegionSettings, largest_regions_argmax, region_counts
from tests.real_stand_ins import bsds_mat

OPTIONS = DownloadParams(retries=1, backoff_seconds=0.0, timeout_seconds=5.0,
                         datasets={"x": {"source": "synthetic", "generator": "saliency"}})
LEFT_RIGHT = np.repeat(np.repeat(np.array([[1, 2]]), 8, axis=0), 4, axis=1)  # 8 x 8: left / right halves
TOP_BOTTOM = LEFT_RIGHT.T
WHOLE = np.ones((8, 8), dtype=int)


def bsds_folder(root: Path) -> Path:
    """BSDS500's own tree: one train image, two val images (black left half, red right half) whose human
    segmentations are [left/right, top/bottom] and [whole, whole]."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:, 0] = 255
    for split, name, segmentations in (("train", "100", [LEFT_RIGHT]), ("val", "200", [LEFT_RIGHT, TOP_BOTTOM]),
                                       ("val", "201", [WHOLE, WHOLE])):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "groundTruth" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / split / f"{name}.jpg", quality=100)
        (root / "groundTruth" / split / f"{name}.mat").write_bytes(bsds_mat(segmentations))
    return root


class RedRegions(nn.Module):
    """Three channels of logits; channel 1 wins on red pixels, channel 0 elsewhere, channel 2 never."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, :1] - 0.5
        return torch.cat([-red, red, torch.full_like(red, -5.0)], dim=1) * 10


def test_largest_regions_argmax_keeps_the_k_largest_channels() -> None:
    probs = torch.tensor([[[0.6, 0.6, 0.1]], [[0.3, 0.1, 0.5]], [[0.1, 0.3, 0.4]]])  # (3, 1, 3): argmax 0, 0, 1
    assert largest_regions_argmax(probs, 3).tolist() == [[0, 0, 1]]
    assert largest_regions_argmax(probs, 1).tolist() == [[0, 0, 0]]  # region 1 (1 px) goes to channel 0
    assert region_counts(RegionSettings(max_regions=20), [2, 20, 1, 2]) == [20, 2, 1]
    with pytest.raises(ValueError, match="region counts"):
        region_counts(RegionSettings(), [0])


def test_val_split_scored_at_ods_and_ois_against_every_human_segmentation(tmp_path: Path) -> None:
    spec = DatasetSpec.model_validate({"source": "local", "files": [{"uri": str(bsds_folder(tmp_path / "BSR"))}],
                                       "layout": "bsds"})
    data = Dataset(build_dataset("bsds500", spec, tmp_path / "raw", tmp_path / "cache", OPTIONS, progress=False))
    assert [r.id for r in data.split("val")] == ["200", "201"] and [r.id for r in data.split("train")] == ["100"]
    settings = RegionSettings(max_regions=2, min_area_fraction=0.0)
    scores, labels = score_regions(RedRegions(), 8, "cas", data, "bsds500", settings, 4, split="val", sweep=[1])
    np.testing.assert_array_equal(labels[0], LEFT_RIGHT - 1)  # the model's own setting: 2 regions
    # Candidates k = 2 (left / right) and k = 1 (whole image); N = 64 px, C(64, 2) = 2016 pairs.
    # Image 200 vs [LR, TB]: k=2: covering (64 + 2 * 32 * 16/48) / 128 = 2/3, RI (1 + 31/63) / 2 = 47/63 (LR vs TB
    #   disagrees on 1024 pairs: RI 1 - 1024/2016 = 31/63), VI (0 + 2) / 2 = 1; k=1: covering 64/128, RI 31/63, VI 1.
    # Image 201 vs [whole, whole]: k=2: covering 32/64, RI 31/63, VI 1; k=1: covering 1, RI 1, VI 0.
    # ODS (k = 1 best for the set): covering (64 + 128) / 256 = 0.75, PRI (31/63 + 1) / 2 = 47/63, VI 0.5.
    # OIS (k = 2 for 200, k = 1 for 201): covering (85.33 + 128) / 256 = 5/6, PRI (47/63 + 1) / 2 = 55/63,
    #   VI (1 + 0) / 2 = 0.5.
    expected = {"covering": 0.75, "covering_ois": 5 / 6, "rand_index": 47 / 63, "rand_index_ois": 55 / 63,
                "vi": 0.5, "vi_ois": 0.5}
    assert {k: scores[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    one, _ = score_regions(RedRegions(), 8, "cas", data, "bsds500", settings, 4, split="val")
    assert "covering_ois" not in one and one["covering"] == pytest.approx((64 + 64 / 3 + 64) / 256)  # k=2 only
    with pytest.raises(ValueError, match="no .test. split"):
        score_regions(RedRegions(), 8, "cas", data, "bsds500", settings, 4)
