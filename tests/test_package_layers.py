"""The library's packages import each other in one direction, the order of ``LAYERS`` (design.md, "Layers"):
a package may import only packages listed before it, so there is no import cycle between packages and the
tree reads bottom-up. ``lofiseg.config`` (the params schema) sits above the library: it converts params into
the library's settings objects, and no library package imports it. Stages, flows and commands sit above all of
``lofiseg``; stages import only ``lofiseg`` and ``stages.cli``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
LAYERS = (
    "atomic",      # atomic writes
    "provenance",  # git and DVC identity of inputs
    "data",        # dataset format, readers, sources, layouts, noise, loading and augmentation
    "viz",         # pictures and figures
    "losses",      # one name -> loss
    "metrics",     # saliency, semantic, region metrics
    "models",      # factory, encoder weights, channel choice, descriptor heads, bundles
    "infer",       # batched / multi-scale inference, pseudo labels, CRF, clustering, mean-shift, regions
    "evaluate",    # scoring trained models on held-out sets
    "dvc_cli",     # running a dvc command from Python (flows, commands)
    "track",       # MLflow: store, tracker, logged models, run queries, registry, comparison
    "train",       # the tracked, resumable training run; distributed; the regularized plan
    "config",      # the params schema: validates params.yaml, converts to the library's settings
    "cli",         # running a stage or command: user errors as messages
)


# What a module may leave out of sys.modules after its import (start-up cost: torch ~2 s, mlflow ~1.5 s). Stages
# import mlflow (lofiseg.track) only where they track, prefect and dvc never.
LIGHT_IMPORTS = {
    "lofiseg.config": ("torch", "numpy", "mlflow", "prefect", "dvc"),  # the schema: settings are stdlib only
    "stages.download": ("torch", "mlflow", "prefect", "dvc"),
    "stages.noise": ("torch", "mlflow", "prefect", "dvc"),
    "stages.web": ("torch", "mlflow", "prefect", "dvc"),
    "stages.pseudo_gt": ("torch", "mlflow", "prefect", "dvc"),
    "stages.register": ("torch", "mlflow", "prefect", "dvc"),
    "stages.train_saliency": ("mlflow", "prefect", "dvc"),
}


def package_of(path: Path) -> str:
    parts = path.relative_to(PROJECT / "lofiseg").with_suffix("").parts
    return parts[0]


def lofiseg_imports(path: Path) -> set[str]:
    """The lofiseg packages (first name below lofiseg) a file imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the file's own package
                package = path.relative_to(PROJECT).with_suffix("").parts[:-node.level]
                module = ".".join([*package, *([module] if module else [])])
            names = [module] + ([f"{module}.{a.name}" for a in node.names] if module == "lofiseg" else [])
        out |= {name.split(".")[1] for name in names if name.startswith("lofiseg.")}
    return out


def library_files() -> list[Path]:
    return sorted(p for p in (PROJECT / "lofiseg").rglob("*.py") if p.name != "__init__.py" or p.stat().st_size)


def test_every_library_package_has_a_layer():
    packages = {package_of(p) for p in library_files()} - {"__init__"}
    assert packages <= set(LAYERS), f"add {sorted(packages - set(LAYERS))} to LAYERS in the right place"


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.relative_to(PROJECT).as_posix())
def test_a_package_imports_only_the_layers_below_it(path):
    own = package_of(path)
    if own == "__init__":
        return
    upward = sorted(p for p in lofiseg_imports(path) - {own} if LAYERS.index(p) > LAYERS.index(own))
    assert not upward, (f"{path.relative_to(PROJECT)} (layer {own!r}) imports {upward}, which sit above it in "
                        f"LAYERS: move the code, or pass plain arguments")


@pytest.mark.parametrize("path", sorted((PROJECT / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stages_import_only_the_library_and_the_stage_runner(path):
    tree = ast.parse(path.read_text(), str(path))
    project = {"stages", "flows", "commands", "benchmarks", "tests"}
    bad = set()
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        bad |= {n for n in names if n.split(".")[0] in project and n not in ("stages.cli", "stages")}
    assert not bad, f"stages/{path.name} imports {sorted(bad)}: only lofiseg and stages.cli"


def test_the_layer_walk_sees_an_upward_import(tmp_path):
    """The check itself: absolute, lazy (inside a function) and relative imports are all seen."""
    fake = PROJECT / "lofiseg" / "data" / "format.py"
    assert "config" not in lofiseg_imports(fake)
    probe = tmp_path / "probe.py"
    probe.write_text("from lofiseg.config import Params\nimport lofiseg.track.tracker\n"
                     "def lazy():\n    from lofiseg import evaluate\n")
    assert lofiseg_imports(probe) == {"config", "track", "evaluate"}
    relative = PROJECT / "lofiseg" / "data" / "probe_relative.py"
    try:
        relative.write_text("from ..config import Params\nfrom . import format\n")
        assert lofiseg_imports(relative) == {"config", "data"}
    finally:
        relative.unlink()


@pytest.mark.parametrize("module", sorted(LIGHT_IMPORTS))
def test_importing_a_stage_leaves_out_what_it_does_not_use(module):
    """Start-up cost: a fresh interpreter imports ``module`` and lists the heavy packages it pulled in."""
    code = (f"import sys, {module}; heavy = {LIGHT_IMPORTS[module]!r}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROJECT,
                          timeout=120)
    assert done.stdout.strip() == "[]", f"import {module} loads {done.stdout.strip()}: import them where used"
