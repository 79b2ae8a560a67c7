"""A run's results on a git branch: ``dvc.lock`` and what DVC leaves to git, committed beside the checkout.

What DVC tracks in git is read from DVC itself: ``dvc.lock``, the outputs declared ``cache: false`` (metrics,
reports, the registry decisions) and the ``.gitignore`` files DVC writes. The commit is built in a temporary
index from ``HEAD`` plus those files as they are in the working tree, so the checkout (its branch, index and
files) is left as it was: the next run on the same checkout still starts on its branch (``registry.promote_from``
for the retrain deployment) and from the new ``dvc.lock``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from lofiseg.provenance import git_remote_url

GIT_TIMEOUT_S = 600
FALLBACK_IDENTITY = {"GIT_AUTHOR_NAME": "lofiseg retrain", "GIT_AUTHOR_EMAIL": "retrain@lofiseg.invalid",
                     "GIT_COMMITTER_NAME": "lofiseg retrain", "GIT_COMMITTER_EMAIL": "retrain@lofiseg.invalid"}


def git(repo: str | os.PathLike, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    """``git <args>`` in ``repo``: its stdout, stripped; a RuntimeError with git's stderr if it fails."""
    proc = subprocess.run(["git", "-C", os.fspath(repo), *args], capture_output=True, text=True, input=stdin,
                          env={**os.environ, **(env or {})}, timeout=GIT_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip()


def git_tracked_outputs(repo: str | os.PathLike) -> list[str]:
    """``dvc.lock``, every stage output DVC does not cache (git's to version) and the ``.gitignore`` files, as
    paths relative to ``repo``: those that exist or that git tracks (a deletion is a change too)."""
    from dvc.repo import Repo

    root = Path(repo).resolve()
    with Repo(os.fspath(root)) as dvc_repo:
        uncached = {Path(out.fs_path).resolve().relative_to(root).as_posix()
                    for out in dvc_repo.index.outs if not out.use_cache}
    ignores = git(root, "ls-files", "--cached", "--others", "--exclude-standard", "--", ":(glob)**/.gitignore")
    candidates = sorted({"dvc.lock", *uncached, *ignores.splitlines()})
    tracked = git(root, "ls-files", "--", *candidates).splitlines()
    return [p for p in candidates
            if (root / p).exists() or any(t == p or t.startswith(f"{p}/") for t in tracked)]


def results_tree(repo: str | os.PathLike, paths: Sequence[str]) -> str:
    """The git tree of ``HEAD`` with ``paths`` as they are in the working tree (the real index is untouched)."""
    with tempfile.TemporaryDirectory() as tmp:
        index = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
        git(repo, "read-tree", "HEAD", env=index)
        if paths:
            git(repo, "add", "--all", "--", *paths, env=index)
        return git(repo, "write-tree", env=index)


def branch_name(when: datetime, run_name: str) -> str:
    """``retrain/<date>-<run name>``, the run name reduced to what a git ref may hold."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", run_name).strip("-") or "run"
    return f"retrain/{when:%Y-%m-%d}-{safe}"


def commit_tree(repo: str | os.PathLike, tree: str, branch: str, message: str) -> str:
    """Commit ``tree`` on top of ``HEAD`` as (local) branch ``branch``; the checkout stays where it is.

    A checkout with no git identity (a fresh clone on a worker) commits as ``lofiseg retrain``.
    """
    identity = {} if _configured(repo, "user.email") else FALLBACK_IDENTITY
    commit = git(repo, "commit-tree", tree, "-p", "HEAD", "-F", "-", env=identity, stdin=message)
    git(repo, "branch", "--force", branch, commit)
    return commit


def push_branch(repo: str | os.PathLike, remote: str, branch: str) -> bool:
    """Push ``branch`` to git remote ``remote``; False (nothing pushed) if the checkout has no such remote."""
    if git_remote_url(repo, remote) is None:
        return False
    git(repo, "push", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}")
    return True


def _configured(repo: str | os.PathLike, key: str) -> bool:
    try:
        return bool(git(repo, "config", "--get", key))
    except RuntimeError:  # exit status 1: not set
        return False
