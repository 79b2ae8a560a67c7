"""The library does not know params.yaml: only lofiseg/config.py imports lofiseg.config, and nothing that
lofiseg/data imports, directly or through other modules, reaches it (data and config once imported each other).

Imports are read from the source (ast), wherever they are: module level, inside functions, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LIBRARY = PROJECT / "lofiseg"
CONFIG = "lofiseg.config"


def module_name(path: Path, root: Path = PROJECT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = PROJECT) -> set[str]:
    """Dotted names ``path`` imports: ``from a.b import c`` gives a.b and a.b.c; relative imports resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module or ""
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def reaches_config(start: str, modules: dict[str, Path]) -> list[str]:
    """The import chain from ``start`` to lofiseg.config, or [] when there is none."""
    todo, parent = [start], {start: ""}
    while todo:
        name = todo.pop()
        if name == CONFIG:
            chain = [name]
            while parent[chain[-1]]:
                chain.append(parent[chain[-1]])
            return chain[::-1]
        for target in imported(modules[name]):
            target = target if target in modules else target.rpartition(".")[0]
            if target in modules and target not in parent:
                parent[target] = name
                todo.append(target)
    return []


def test_only_config_imports_config():
    importers = [name for name, path in library_modules().items()
                 if name != CONFIG and any(n == CONFIG or n.startswith(CONFIG + ".") for n in imported(path))]
    assert not importers, f"library modules import {CONFIG} (convert params in config.py or the stage): {importers}"


def test_data_never_reaches_config():
    modules = library_modules()
    chains = {name: chain for name in modules if name.startswith("lofiseg.data")
              if (chain := reaches_config(name, modules))}
    assert not chains, f"lofiseg/data reaches {CONFIG}: {chains}"


def test_the_walk_sees_relative_and_nested_imports(tmp_path):
    package = tmp_path / "lofiseg" / "data"
    package.mkdir(parents=True)
    module = package / "x.py"
    module.write_text("def f():\n    from ..config import Params\n    import lofiseg.models.factory\n"
                      "from . import web\n")
    assert imported(module, tmp_path) == {"lofiseg.config", "lofiseg.config.Params", "lofiseg.models.factory",
                                          "lofiseg.data", "lofiseg.data.web"}
