"""The DVC DAG as data: each stage's command, outputs and upstream stages, read from dvc.yaml by DVC itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    name: str  # DVC's address, e.g. "train_saliency@cas-0.5"
    cmd: str
    outs: tuple[str, ...]
    upstream: frozenset[str]


def read_dag(repo: str | os.PathLike) -> dict[str, Stage]:
    """Every stage of the repository's dvc.yaml, with ``foreach``/``matrix`` expanded by DVC."""
    from dvc.repo import Repo

    with Repo(os.fspath(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges point from a stage to the stages it depends on
        stages = {}
        for stage in graph.nodes:
            if not getattr(stage, "cmd", None):
                continue  # .dvc files: data, not commands
            cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
            upstream = frozenset(dep.addressing for dep in graph.successors(stage) if getattr(dep, "cmd", None))
            stages[stage.addressing] = Stage(stage.addressing, cmd, tuple(str(o.def_path) for o in stage.outs),
                                             upstream)
    return stages


def waves(stages: dict[str, Stage], targets: list[str] | None = None) -> list[list[str]]:
    """Topological layers: every stage comes after all its upstream stages; a layer's stages are independent.

    With ``targets``, only those stages and their upstream closure.
    """
    wanted = set(stages)
    if targets:
        unknown = sorted(set(targets) - set(stages))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(stages)}")
        wanted, todo = set(), list(targets)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo.extend(stages[name].upstream)
    done: set[str] = set()
    layers = []
    while len(done) < len(wanted):
        layer = sorted(n for n in wanted - done if stages[n].upstream & wanted <= done)
        if not layer:
            raise ValueError(f"dependency cycle among {sorted(wanted - done)}")
        layers.append(layer)
        done.update(layer)
    return layers


def dvc_command(repo: str | os.PathLike, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    dvc = Path(sys.executable).with_name("dvc")
    proc = subprocess.run([str(dvc) if dvc.exists() else "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {repo}:\n{proc.stderr[-3000:]}")
    return proc


def stale(repo: str | os.PathLike, names: list[str]) -> list[str]:
    """The stages among ``names`` that DVC would run: anything changed in their deps, params, outs or cmd."""
    if not names:
        return []
    report = json.loads(dvc_command(repo, "status", "--json", *names).stdout or "{}")
    return sorted(n for n in names if n in report)
