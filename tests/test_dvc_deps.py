"""dvc.yaml lists, for every stage, the project modules that compute its outputs: `dvc repro` re-runs a stage
when one of them changes, and only then.

Each stage's deps are listed by hand (a dep on the whole package would re-run the 17-minute pipeline for any
edit). This test follows the imports of the stage's script through the project's modules and fails on any
module missing from the stage's deps, so a new import cannot leave a stale stage behind. Modules that move
files, validate params, log, plot or write tables (``PLUMBING``) are not followed: a change there cannot change
a stage's numbers, and re-running training for it would cost more than it protects.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
PLUMBING = frozenset({  # files, and folders (ending in "/") whose every module is plumbing
    "lofiseg/__init__.py", "lofiseg/atomic.py", "lofiseg/models/bundle.py", "lofiseg/config.py",
    "lofiseg/cli.py", "lofiseg/provenance.py", "lofiseg/track/", "lofiseg/viz/figures.py", "lofiseg/viz/images.py",
    "stages/__init__.py", "stages/cli.py",
})
PACKAGES = ("lofiseg", "stages")


def is_plumbing(path: str) -> bool:
    return any(path == entry or (entry.endswith("/") and path.startswith(entry)) for entry in PLUMBING)


def module_file(module: str) -> str | None:
    """Project-relative path of a dotted module name, or None (not a project module, or a name inside one)."""
    path = PROJECT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(PROJECT).as_posix()
    return None


def imported_modules(path: str) -> set[str]:
    """Dotted names a file imports (``from a.b import c`` gives a.b and a.b.c), project packages only."""
    tree = ast.parse((PROJECT / path).read_text(), path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] in PACKAGES}


def computing_modules(entry: str) -> set[str]:
    """The project files ``python -m <entry>`` imports, transitively, not following ``PLUMBING``."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        if not is_plumbing(path):
            todo.extend(imported_modules(path))
    return {path for path in seen if not is_plumbing(path)}


def stage_bodies() -> dict[str, dict]:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(stage_bodies()))
def test_stage_deps_list_every_module_that_computes_its_outputs(name):
    body = stage_bodies()[name]
    entry = re.search(r"python -m (\S+)", body["cmd"])
    assert entry, f"dvc.yaml stage {name}: cmd does not run a project module: {body['cmd']!r}"
    deps = [str(dep) for dep in body.get("deps", [])]
    missing = sorted(path for path in computing_modules(entry.group(1)) if not covered(path, deps))
    assert not missing, f"dvc.yaml stage {name}: add to deps {missing} (imported by {entry.group(1)})"


def test_the_import_walk_sees_through_packages_and_stops_at_plumbing():
    """The walk itself: a stage's own script, a module reached only through another, none of the plumbing."""
    modules = computing_modules("stages.train_deeplab")
    assert {"stages/train_deeplab.py", "lofiseg/models/factory.py", "lofiseg/losses/ce.py"} <= modules
    assert "lofiseg/data/format.py" in modules  # imported by train_deeplab and by loading.py
    assert not any(is_plumbing(path) for path in modules)
    assert is_plumbing("lofiseg/track/tracker.py") and not is_plumbing("lofiseg/trackers.py")
    assert module_file("lofiseg.losses.ce.cross_entropy_loss") is None  # a name inside a module, not a file
