"""Team comparison: runs read back from a real sqlite MLflow store, tables checked cell by cell, the report
files, and the --revs path on a temporary git + DVC repository."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from commands import compare
from lofiseg.track import comparison
from lofiseg.track.comparison import best_values, is_setting, lower_is_better
from lofiseg.track.runs import experiment_runs, runs_by_id
from lofiseg.track.tracker import Tracker
from tests.pipeline_repo import make_repo, run

# Three runs. Latest metric values (the last step):
#            mae (1 step)   train_loss (steps)   val_fbeta (steps)
#   a        0.2            0.9 -> 0.5           0.4 -> 0.6
#   b        0.25           0.8 -> 0.3           0.5 -> 0.7
#   c        0.15           1.0 -> 0.7 -> 0.4    0.3 -> 0.5 -> 0.7
# Best: mae lowest -> c; train_loss lowest -> b; val_fbeta highest -> b and c (a tie: both bold).
RUNS = {
    "a": ({"lr": 0.1, "epochs": 2, "loss": "cas", "seed": 0},
          {"train_loss": [0.9, 0.5], "val_fbeta": [0.4, 0.6]}, 0.2),
    "b": ({"lr": 0.01, "epochs": 2, "loss": "ce", "seed": 0},
          {"train_loss": [0.8, 0.3], "val_fbeta": [0.5, 0.7]}, 0.25),
    "c": ({"lr": 0.1, "epochs": 3, "loss": "cas", "seed": 0},
          {"train_loss": [1.0, 0.7, 0.4], "val_fbeta": [0.3, 0.5, 0.7]}, 0.15),
}

PARAMS_MD = """\
| run | epochs | loss | lr |
|---|---|---|---|
| a | 2 | cas | 0.1 |
| b | 2 | ce | 0.01 |
| c | 3 | cas | 0.1 |
"""

METRICS_MD = """\
| run | mae ↓ | train_loss ↓ | val_fbeta ↑ |
|---|---|---|---|
| a | 0.2 | 0.5 | 0.6 |
| b | 0.25 | **0.3** | **0.7** |
| c | **0.15** | 0.4 | **0.7** |
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A sqlite store with the three runs of RUNS in experiment `cmp`, logged through Tracker."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    ids = {}
    for name, (params, curves, mae) in RUNS.items():
        with Tracker("cmp", name, uri=uri, artifact_root=(root / "artifacts").as_uri()) as tracker:
            tracker.log_params(params)
            for step in range(len(curves["train_loss"])):
                tracker.log_metrics({key: values[step] for key, values in curves.items()}, step=step)
            tracker.log_metrics({"mae": mae}, step=0)
            ids[name] = tracker.run_id
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield {"uri": uri, "ids": ids, "root": root}


def test_direction_of_metrics() -> None:
    lower = ["train_loss", "val.loss", "lossCE", "saliency.cas.0.5.mae", "regions.vi", "VI", "mae"]
    higher = ["val_fbeta", "miou", "fbeta_adaptive", "device_count", "video_acc", "maes_score", "vis"]
    assert [lower_is_better(m) for m in lower] == [True] * len(lower)
    assert [lower_is_better(m) for m in higher] == [False] * len(higher)
    settings = ["sigma", "lambda_reg", "image_size", "lr", "epoch"]
    assert [is_setting(m) for m in settings] == [True] * len(settings)
    assert not any(is_setting(m) for m in lower + higher + ["images_per_s", "resize_ms"])
    runs = [{"run_id": str(i), "name": str(i), "params": {}, "metrics": {"sigma": s, "miou": m}, "curves": {}}
            for i, (s, m) in enumerate([(0.05, 0.4), (0.15, 0.6)])]
    assert best_values(runs) == {"miou": 0.6}  # sigma is shown, never ranked


def test_runs_read_back_with_params_metrics_and_curves(store) -> None:
    runs = experiment_runs("cmp", uri=store["uri"])
    assert [r["name"] for r in runs] == ["a", "b", "c"]  # oldest first
    c = runs[2]
    assert c["run_id"] == store["ids"]["c"] and c["status"] == "FINISHED"
    assert c["params"] == {"lr": "0.1", "epochs": "3", "loss": "cas", "seed": "0"}
    assert c["metrics"] == {"mae": 0.15, "train_loss": 0.4, "val_fbeta": 0.7}
    assert c["curves"] == {"train_loss": [(0, 1.0), (1, 0.7), (2, 0.4)],
                           "val_fbeta": [(0, 0.3), (1, 0.5), (2, 0.7)]}  # mae has one step: no curve

    by_id = runs_by_id([store["ids"]["c"], store["ids"]["a"]], uri=store["uri"], curves=False)
    assert [r["name"] for r in by_id] == ["c", "a"] and by_id[0]["curves"] == {}
    with pytest.raises(ValueError, match=r"run_ids: no MLflow run 'nope'"):
        runs_by_id(["nope"], uri=store["uri"])
    with pytest.raises(ValueError, match=r"experiment: no MLflow experiment 'absent'.*\['Default', 'cmp'\]"):
        experiment_runs("absent", uri=store["uri"])


def test_tables_show_the_differing_params_and_bold_the_best(store) -> None:
    runs = experiment_runs("cmp", uri=store["uri"])
    assert comparison.differing_params(runs) == ["epochs", "loss", "lr"]  # seed is the same everywhere
    assert comparison.params_table(runs).markdown() == PARAMS_MD
    table = comparison.metrics_table(runs)
    assert table.markdown() == METRICS_MD
    assert table.bold == {(2, 1), (1, 2), (1, 3), (2, 3)}
    assert "<td><b>0.15</b></td>" in table.html() and "<td>0.2</td>" in table.html()


def test_table_edge_cases() -> None:
    runs = [{"run_id": "1111aaaa9", "name": "x", "params": {"a": "1"}, "metrics": {"loss": 0.5, "only": 3.0}},
            {"run_id": "2222bbbb9", "name": "x", "params": {"a": "1", "b": "2"}, "metrics": {"loss": 0.5}}]
    # same name: the id tells them apart; a param one run lacks differs; tied losses are both bold; a metric
    # only one run has is not "best" of anything
    assert comparison.params_table(runs).markdown() == (
        "| run | b |\n|---|---|\n| x (1111aaaa) | — |\n| x (2222bbbb) | 2 |\n")
    assert comparison.metrics_table(runs).markdown() == (
        "| run | loss ↓ | only ↑ |\n|---|---|---|\n| x (1111aaaa) | **0.5** | 3 |\n| x (2222bbbb) | **0.5** | — |\n")
    with pytest.raises(ValueError, match=r"runs\[1\]: missing key\(s\) \['metrics'\]"):
        comparison.metrics_table([runs[0], {"run_id": "z", "name": "z", "params": {}}])
    with pytest.raises(TypeError, match=r"runs\[0\]\['metrics'\]\['loss'\]: expected a number, got 'low'"):
        comparison.metrics_table([{"run_id": "z", "name": "z", "params": {}, "metrics": {"loss": "low"}}])


def test_compare_command_writes_the_report_and_logs_it(store, tmp_path: Path, monkeypatch, capsys) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # no params.yaml here: the prefix is the default, lofiseg
    out = tmp_path / "reports/compare"
    (out / "stale.png").parent.mkdir(parents=True)
    (out / "stale.png").write_bytes(b"old")
    compare.main(["--experiment", "cmp", "--out", str(out), "--log-to-mlflow"])

    names = sorted(p.name for p in out.iterdir())
    assert names == ["compare.html", "compare.md", "curve_train_loss.png", "curve_val_fbeta.png", "metrics.png"]
    markdown = (out / "compare.md").read_text()
    assert PARAMS_MD in markdown and METRICS_MD in markdown and "![metrics](metrics.png)" in markdown
    page = (out / "compare.html").read_text()
    images = re.findall(r'src="([^"]*)"', page)
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,iVBORw0KGgo") for src in images)
    assert "<td><b>0.15</b></td>" in page and "<th>lr</th>" in page and "<th>seed</th>" not in page

    client = MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name("lofiseg-comparison")
    logged = client.search_runs([experiment.experiment_id])
    assert len(logged) == 1 and logged[0].info.status == "FINISHED"
    run_id = logged[0].info.run_id
    assert {a.path for a in client.list_artifacts(run_id, "comparison")} == {
        f"comparison/{n}" for n in names}
    assert logged[0].data.tags["lofiseg.compared"] == ",".join(store["ids"][n] for n in "abc")
    assert run_id in capsys.readouterr().out


def test_compare_command_errors_name_the_input(store, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="error: experiment: no MLflow experiment 'nope'"):
        compare.main(["--experiment", "nope", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="error: run_ids: no MLflow run 'deadbeef'"):
        compare.main(["--runs", store["ids"]["a"], "deadbeef", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


# --- two revisions of a DVC repository ----------------------------------------------------------------------

def write_revision(repo: Path, epochs: int, mae: float, fbeta: float) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train_saliency"]["epochs"] = epochs
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    metrics = {"cas": {"0.0": {"saliency": {"mae": mae, "fbeta_adaptive": fbeta}}}}
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/saliency.json").write_text(json.dumps(metrics))


@pytest.mark.slow
def test_compare_two_git_revisions_and_the_workspace(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"noise": {"rates": [0.0]}})
    write_revision(repo, epochs=1, mae=0.3, fbeta=0.5)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "first results")
    write_revision(repo, epochs=3, mae=0.2, fbeta=0.4)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "more epochs")

    runs = compare.revision_runs(repo, ["HEAD~1", "HEAD"])
    assert [r["name"] for r in runs] == ["HEAD~1", "HEAD"]
    assert runs[1]["run_id"] == run(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert comparison.params_table(runs).markdown() == (
        "| run | train_saliency.epochs |\n|---|---|\n| HEAD~1 | 1 |\n| HEAD | 3 |\n")
    # mae: lower is better -> HEAD; fbeta: higher is better -> HEAD~1
    assert comparison.metrics_table(runs).markdown() == (
        "| run | cas.0.0.saliency.fbeta_adaptive ↑ | cas.0.0.saliency.mae ↓ |\n|---|---|---|\n"
        "| HEAD~1 | **0.5** | 0.3 |\n| HEAD | 0.4 | **0.2** |\n")

    # uncommitted changes: the workspace against HEAD, through the command (DVC experiment names are
    # compared in tests/test_flows.py, on an experiment the pipeline flow ran)
    write_revision(repo, epochs=5, mae=0.1, fbeta=0.45)
    out = tmp_path / "cmp"
    compare.main(["--revs", "HEAD", "workspace", "--repo", str(repo), "--out", str(out)])
    markdown = (out / "compare.md").read_text()
    assert "| HEAD | 3 |\n| workspace | 5 |" in markdown
    assert "| HEAD | 0.4 | 0.2 |\n| workspace | **0.45** | **0.1** |" in markdown
    swapped = compare.revision_runs(repo, ["workspace", "HEAD~1"])
    assert [r["params"]["train_saliency.epochs"] for r in swapped] == ["5", "1"]
    assert swapped[0]["run_id"] == "workspace" and len(swapped[1]["run_id"]) == 40
