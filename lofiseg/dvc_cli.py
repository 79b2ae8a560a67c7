"""Running DVC's command line from the project's own interpreter, failing loudly with DVC's message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def dvc_executable() -> str:
    """This interpreter's ``dvc`` (the project's venv), else the one on PATH."""
    dvc = Path(sys.executable).with_name("dvc")
    return str(dvc) if dvc.exists() else "dvc"


def dvc_command(repo: str | os.PathLike, *args: str, timeout: float = 600,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``dvc <args>`` in ``repo``; a RuntimeError with the end of DVC's stderr if it fails."""
    proc = subprocess.run([dvc_executable(), *args], cwd=repo, capture_output=True, text=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {repo}:\n{proc.stderr[-3000:]}")
    return proc


def read_dvc_yaml(path: str | os.PathLike) -> Any:
    """A file DVC wrote (dvc.lock), read as DVC reads it: YAML 1.2, where ``off``, ``no`` or ``on`` are strings.
    PyYAML's YAML 1.1 would turn a param ``amp: off`` into False, and the lock entry would no longer match."""
    from ruamel.yaml import YAML  # DVC's own YAML library

    return YAML(typ="safe", pure=True).load(Path(path).read_text(encoding="utf-8"))
