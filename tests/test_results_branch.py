"""flows.results_branch in a real git + DVC repository: what DVC leaves to git, the results tree, the branch
commit beside an untouched checkout, and pushing it to a bare remote."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import yaml

from flows.results_branch import branch_name, commit_tree, git, git_tracked_outputs, push_branch, results_tree
from tests.pipeline_repo import commit_repo, run


def small_repo(root: Path) -> Path:
    """git + DVC on branch main, one stage with a cached output and two git-versioned ones (cache: false)."""
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": {
        "cmd": "echo x", "outs": ["models/m", {"reports/r.md": {"cache": False}}],
        "metrics": [{"metrics/m.json": {"cache": False}}]}}}))
    commit_repo(root, "start")
    return root


def test_results_are_committed_on_a_branch_beside_an_untouched_checkout(tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "repo")
    origin = tmp_path / "origin.git"
    run(tmp_path, "git", "init", "-q", "--bare", str(origin))
    run(repo, "git", "remote", "add", "origin", str(origin))
    start = results_tree(repo, git_tracked_outputs(repo))
    assert start == git(repo, "rev-parse", "HEAD^{tree}")  # nothing produced yet: HEAD's tree

    (repo / "models").mkdir()
    (repo / "models/m").write_text("weights")  # DVC's (cached): never in the commit
    (repo / "metrics").mkdir()
    (repo / "metrics/m.json").write_text('{"miou": 0.5}')
    (repo / "reports").mkdir()
    (repo / "reports/r.md").write_text("# report")
    (repo / "models/.gitignore").write_text("/m\n")  # as DVC writes it for a cached output
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    (repo / "notes.txt").write_text("not a DVC output")
    paths = git_tracked_outputs(repo)
    assert paths == [".dvc/.gitignore", "dvc.lock", "metrics/m.json", "models/.gitignore", "reports/r.md"]

    tree = results_tree(repo, paths)
    assert tree != start and tree == results_tree(repo, paths)  # the same files: the same tree
    branch = branch_name(datetime(2026, 3, 2, 23, 59, tzinfo=UTC), "crafty gecko/2")
    assert branch == "retrain/2026-03-02-crafty-gecko-2"
    commit = commit_tree(repo, tree, branch, "retrain: results\n")
    assert git(repo, "ls-tree", "-r", "--name-only", commit).splitlines() == [
        ".dvc/.gitignore", ".dvc/config", ".dvcignore", "dvc.lock", "dvc.yaml", "metrics/m.json",
        "models/.gitignore", "reports/r.md"]
    assert git(repo, "rev-parse", f"{commit}^") == git(repo, "rev-parse", "main")
    assert git(repo, "branch", "--show-current") == "main"  # the checkout and its index are as they were
    assert git(repo, "diff", "--cached", "--name-only") == ""
    assert (repo / "dvc.lock").read_text() == "schema: '2.0'\n"

    assert push_branch(repo, "origin", branch)
    assert git(origin, "rev-parse", branch) == commit
    assert not push_branch(repo, "upstream", branch)  # no such remote: nothing pushed
