"""A throw-away copy of the project in a temporary git + DVC repository, for end-to-end `dvc repro` tests."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parent.parent
COPIED = ("lofiseg", "stages", "flows", "commands", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvcignore", "prefect.toml")

# Small enough for seconds on 2 cores; every generator and stage still runs.
TINY = {
    "synthetic": {
        "image_size": 32,
        "classes": ["sun", "leaf"],
        "saliency": {"train": 8, "val": 4, "test": 4},
        "web": {"per_class": 4, "negatives": 2, "confuser_prob": 0.3, "test_per_class": 2},
        "scenes": {"train": 4, "val": 2, "test": 4, "min_objects": 2, "max_objects": 3},
        "regions": {"train": 4, "val": 2, "test": 4, "min_regions": 2, "max_regions": 4},
    },
    "web": {"classes": {"sun": {"kind": "synthetic"}, "leaf": {"kind": "synthetic"}}},
    "train_single": {"batch_size": 4, "gt_epochs": 1,
                     "schedule": {"annealing_epochs": 1, "normal_epochs": 1, "negative_epochs": 1}},
    "pseudo_label": {"crf_iterations": 2},
    "train_deeplab": {"epochs": 1, "batch_size": 4},
    "train_regions": {"epochs": 1, "channels": 6, "embedding_dim": 4, "max_regions": 6},
    "evaluate": {"grid_samples": 2},
}


REPLACED = ("classes",)  # a class set is a whole: web.classes is replaced, never merged


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        merge = isinstance(value, dict) and isinstance(out.get(key), dict) and key not in REPLACED
        out[key] = deep_merge(out[key], value) if merge else copy.deepcopy(value)
    return out


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment stage commands run in: this interpreter's bin first, telemetry off."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run(repo: Path, *cmd: str, timeout: float = 600, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=repo, env=tool_env(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def dvc(repo: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run(repo, str(Path(sys.executable).parent / "dvc"), *args, **kwargs)


def make_repo(root: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the project into ``root``, apply ``params`` over TINY, and commit it in a fresh git+DVC repo."""
    root.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = PROJECT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, root / name)
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    merged = deep_merge(deep_merge(raw, TINY), params or {})
    (root / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return commit_repo(root, "project copy")


def commit_repo(root: Path, message: str) -> Path:
    """Make ``root`` a git + DVC repository on branch ``main`` (registry.promote_from: the champion moves from
    main only) and commit everything in it."""
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "git", "config", "user.email", "test@example.invalid")
    run(root, "git", "config", "user.name", "test")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    dvc(root, "config", "core.check_update", "false")
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", message)
    return root
