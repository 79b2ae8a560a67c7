"""Compare runs side by side: the params that differ, the metrics with the best in bold, bars and curves.

    python -m commands.compare --experiment lofiseg-saliency
    python -m commands.compare --runs 1f2e... 9ab0... --log-to-mlflow
    python -m commands.compare --revs HEAD~1 HEAD            # git revisions, DVC experiment names, workspace

MLflow runs come from ``MLFLOW_TRACKING_URI`` (default ``./mlflow.db``); ``--experiment`` takes its FINISHED
runs (``--all-statuses`` for every run). ``--revs`` reads the params and metrics DVC tracks at each revision
(``dvc params diff`` / ``dvc metrics diff``; DVC resolves experiment names, ``workspace`` is the working copy)
and has no curves. Writes ``compare.md``, ``compare.html`` (self-contained) and PNGs to ``--out``;
``--log-to-mlflow`` logs them to a run of experiment ``<tracking.experiment_prefix>-comparison``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lofiseg.cli import run
from lofiseg.config import load_params
from lofiseg.dvc_cli import dvc_command
from lofiseg.provenance import git_commit
from lofiseg.track.comparison import write_report
from lofiseg.track.runs import experiment_runs, runs_by_id
from lofiseg.track.tracker import Tracker

WORKSPACE = "workspace"


def _diff(repo: Path, kind: str, revs: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``dvc <kind> diff A B --all --json`` as {file: {key: {"old", "new"}}} with old = A, new = B."""
    first, second = revs
    if first == WORKSPACE and second == WORKSPACE:
        raise ValueError("revs: compare the workspace with a revision, not with itself")
    args = [first] if second == WORKSPACE else [second] if first == WORKSPACE else [first, second]
    out = json.loads(dvc_command(repo, kind, "diff", *args, "--all", "--json").stdout or "{}")
    if first == WORKSPACE:  # DVC diffs <rev> against the workspace: swap back to the order asked for
        out = {f: {k: {"old": v.get("new"), "new": v.get("old")} for k, v in entries.items()}
               for f, entries in out.items()}
    return out


def _commit(repo: Path, rev: str, experiments: dict[str, str]) -> str:
    if rev == WORKSPACE:
        return WORKSPACE
    if (sha := git_commit_of(repo, rev)) is not None:
        return sha
    return experiments.get(rev, rev)


def git_commit_of(repo: Path, rev: str) -> str | None:
    """The commit ``rev`` names in git, None if git does not know it (e.g. a DVC experiment name)."""
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def experiment_commits(repo: Path) -> dict[str, str]:
    """DVC experiment name -> commit, for the experiments of the checked-out commit (``dvc exp show``)."""
    shown = json.loads(dvc_command(repo, "exp", "show", "--json", "--no-pager").stdout or "[]")
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name"):
                    found[rev["name"]] = rev["rev"]
    return found


def revision_runs(repo: str | Path, revs: Sequence[str]) -> list[dict[str, Any]]:
    """Two revisions as run dicts: params from every params file DVC tracks (keys of params.yaml bare,
    others as ``file:key``), metrics from every metrics file (keys prefixed ``file:`` when there are several)."""
    if len(revs) != 2:
        raise ValueError(f"revs: expected two revisions, got {list(revs)}")
    repo = Path(repo)
    params = _diff(repo, "params", revs)
    metrics = _diff(repo, "metrics", revs)
    experiments = {} if all(git_commit_of(repo, r) or r == WORKSPACE for r in revs) else experiment_commits(repo)
    runs: list[dict[str, Any]] = [{"run_id": _commit(repo, rev, experiments), "name": rev, "status": "",
                                   "params": {}, "metrics": {}, "curves": {}} for rev in revs]
    for file, entries in params.items():
        for key, values in entries.items():
            name = key if file == "params.yaml" else f"{file}:{key}"
            for run_dict, side in zip(runs, ("old", "new"), strict=True):
                if values.get(side) is not None:
                    value = values[side]
                    run_dict["params"][name] = value if isinstance(value, str) else json.dumps(value)
    for file, entries in metrics.items():
        for key, values in entries.items():
            name = key if len(metrics) == 1 else f"{file}:{key}"
            for run_dict, side in zip(runs, ("old", "new"), strict=True):
                value = values.get(side)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    run_dict["metrics"][name] = float(value)
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--experiment", help="an MLflow experiment name, e.g. lofiseg-saliency")
    what.add_argument("--runs", nargs="+", metavar="ID", help="MLflow run ids")
    what.add_argument("--revs", nargs=2, metavar=("A", "B"),
                      help="two git revisions or DVC experiment names (or `workspace`)")
    parser.add_argument("--out", type=Path, default=Path("reports/compare"))
    parser.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository (for --revs)")
    parser.add_argument("--all-statuses", action="store_true", help="--experiment: unfinished runs too")
    parser.add_argument("--log-to-mlflow", action="store_true",
                        help="log the report to experiment <tracking.experiment_prefix>-comparison")
    parser.add_argument("--params", default="params.yaml", help="for tracking.experiment_prefix")
    args = parser.parse_args(argv)

    try:
        if args.experiment:
            runs = experiment_runs(args.experiment, statuses=None if args.all_statuses else ("FINISHED",))
            title = f"Runs of MLflow experiment {args.experiment}"
        elif args.runs:
            runs = runs_by_id(args.runs)
            title = f"{len(args.runs)} MLflow runs"
        else:
            runs = revision_runs(args.repo, args.revs)
            title = f"{args.revs[0]} vs {args.revs[1]}"
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"error: {err}") from err
    if not runs:
        raise SystemExit(f"error: no runs to compare in experiment {args.experiment!r} (finished runs only; "
                         f"--all-statuses for the others)")

    files = write_report(runs, args.out, title)
    print(f"compared {len(runs)} run(s): {args.out / 'compare.md'}, {args.out / 'compare.html'}")
    if args.log_to_mlflow:
        prefix = load_params(args.params).tracking.experiment_prefix if Path(args.params).exists() else "lofiseg"
        tags = {"lofiseg.compared": ",".join(str(r["run_id"]) for r in runs)[:5000], "lofiseg.command": "compare"}
        if (commit := git_commit(".")) is not None:
            tags["git.commit"] = commit
        with Tracker(f"{prefix}-comparison", title[:250], tags=tags) as tracker:
            for path in files.values():
                tracker.log_artifact(path, "comparison")
        print(f"logged to MLflow run {tracker.run_id} in experiment {prefix}-comparison")


if __name__ == "__main__":
    sys.exit(run(main))
