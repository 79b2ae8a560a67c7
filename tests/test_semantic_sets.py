"""Real photo sets end to end through params alone (issue 18): a local semantic set with its own class table,
web classes taken from it, the upper bound on the same classes, evaluation on the split a set has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lofiseg.config import DatasetSpec, DownloadParams
from lofiseg.data.format import IGNORE, Dataset
from lofiseg.data.labels import read_class_names
from lofiseg.data.layouts import LayoutError, build_dataset
from tests.real_stand_ins import CLASSES, PHOTOS, msrc_like_entry, photo_mask, write_msrc_like

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
