"""The DVC DAG as data: each stage's command, outputs and upstream stages, read from dvc.yaml by DVC itself."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lofiseg.dvc_cli import dvc_command
from lofiseg.provenance import ORCHESTRATOR_ENV

TRANSFER_TIMEOUT_S = 6 * 3600  # one dvc pull / push of stage outputs (a stage's own timeout: params orchestration)


@dataclass(frozen=True)
class Stage:
    name: str  # DVC's address, e.g. "train_saliency@cas-0.5"
    cmd: str
    outs: tuple[str, ...]
    upstream: frozenset[str]


def address(stage, root: Path) -> str:
    """DVC's name of a stage as seen from the repository root (``stage.addressing`` is relative to the
    process's working directory): ``train_single@sun``, or ``sub/dvc.yaml:name`` for a nested dvc.yaml."""
    path = Path(stage.path)
    return stage.name if path.parent == root else f"{path.relative_to(root).as_posix()}:{stage.name}"


def read_dag(repo: str | os.PathLike) -> dict[str, Stage]:
    """Every stage of the repository's dvc.yaml, with ``foreach``/``matrix`` expanded by DVC."""
    from dvc.repo import Repo

    root = Path(repo).resolve()
    with Repo(os.fspath(root)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges point from a stage to the stages it depends on
        stages = {}
        for stage in graph.nodes:
            if not getattr(stage, "cmd", None):
                continue  # .dvc files: data, not commands
            cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
            upstream = frozenset(address(dep, root) for dep in graph.successors(stage) if getattr(dep, "cmd", None))
            stages[address(stage, root)] = Stage(address(stage, root), cmd, tuple(str(o.def_path) for o in stage.outs),
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


def stage_env(flow_run_id: str) -> dict[str, str]:
    """The environment of stage commands: this interpreter's bin first on PATH (``python -m stages.X`` must
    find the project's Python without an activated venv), the flow run id for the MLflow tags, and unbuffered
    Python output, so a stage's prints reach the flow's logs as they happen."""
    env = dict(os.environ)
    env[ORCHESTRATOR_ENV] = flow_run_id
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def remote_args(remote: str | None) -> list[str]:
    """``--remote <name>`` for dvc pull / push, nothing for the repository's default remote."""
    return ["--remote", remote] if remote else []


def stale(repo: str | os.PathLike, names: list[str]) -> list[str]:
    """The stages among ``names`` that DVC would run: anything changed in their deps, params, outs or cmd."""
    if not names:
        return []
    report = json.loads(dvc_command(repo, "status", "--json", *names).stdout or "{}")
    return sorted(n for n in names if n in report)
