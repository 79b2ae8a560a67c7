"""DVC outputs hold nothing volatile: `dvc repro --force` with unchanged inputs gives the same md5s, the MLflow run
that wrote a model is found from the model file, and turning tracking off re-runs no training stage.

A real git + DVC repository (tests/pipeline_repo.py) with a real MLflow sqlite store in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lofiseg.track.runs import bundle_run
from tests.pipeline_repo import dvc, make_repo

STAGES = ("download", "noise@0.5", "train_regions@cas")  # data/raw, data/noisy/0.5, models/regions/cas


def out_md5s(repo: Path) -> dict[str, str]:
    """``{out path: md5}`` of the :data:`STAGES` as dvc.lock records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in STAGES for out in lock[stage]["outs"]}


@pytest.mark.slow
def test_forced_repro_gives_the_same_outputs_and_tracking_is_no_training_param(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"noise": {"rates": [0.5]}, "train_regions": {"methods": ["cas"]}})
    uri = f"sqlite:///{repo}/mlflow.db"
    env = {"MLFLOW_TRACKING_URI": uri, "LOFISEG_DEVICE": "cpu"}
    dvc(repo, "repro", *STAGES, timeout=900, env=env)
    first = out_md5s(repo)
    assert set(first) == {"data/raw", "reports/data", "data/noisy/0.5", "models/regions/cas"}
    first_run = bundle_run(repo / "models/regions/cas/model.pt", uri=uri)
    assert first_run is not None  # the training run is found from the model file it wrote

    dvc(repo, "repro", "--force", *STAGES, timeout=900, env=env)
    assert out_md5s(repo) == first  # every stage ran again and wrote the same bytes
    second_run = bundle_run(repo / "models/regions/cas/model.pt", uri=uri)
    assert second_run not in (None, first_run)  # the latest run that wrote these bytes

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tracking"]["enabled"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(repo, "status", "train_regions@cas", env=env).stdout
    assert "up to date" in status, status  # tracking off: nothing to retrain
