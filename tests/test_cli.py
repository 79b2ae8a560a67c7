"""lofiseg.cli.run (user errors exit 2 with their message) and who may import whom among the top-level packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lofiseg.cli import run
from lofiseg.data.sources import SourceError

PROJECT = Path(__file__).resolve().parent.parent


def test_run_reports_a_user_error_in_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    def fails(argv: object) -> None:
        raise SourceError("s3://bucket/a.zip: S3 error NoSuchKey (HTTP 404)")

    assert run(fails, []) == 2
    assert capsys.readouterr().err == "error: s3://bucket/a.zip: S3 error NoSuchKey (HTTP 404)\n"
    seen: list[object] = []
    assert run(seen.append, ["--x"]) == 0 and seen == [["--x"]]
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run(lambda argv: 1 / 0, None)


def top_level_imports(folder: str) -> dict[str, set[str]]:
    """For each module of ``folder``: the top-level packages it imports (lazy imports included)."""
    found = {}
    for path in sorted((PROJECT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        found[path.relative_to(PROJECT).as_posix()] = names
    return found


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("lofiseg", {"stages", "flows", "commands"}),  # the library stands alone
    ("commands", {"stages", "flows"}),  # commands use the library, not the pipeline's scripts
])
def test_layering(folder: str, forbidden: set[str]) -> None:
    offenders = {path: sorted(names & forbidden) for path, names in top_level_imports(folder).items()
                 if names & forbidden}
    assert offenders == {}


def test_dvc_lock_is_read_as_yaml_1_2_like_dvc(tmp_path):
    from lofiseg.dvc_cli import read_dvc_yaml

    lock = tmp_path / "dvc.lock"
    lock.write_text("stages:\n  s:\n    params:\n      params.yaml:\n        amp: off\n        flip: true\n")
    assert read_dvc_yaml(lock)["stages"]["s"]["params"]["params.yaml"] == {"amp": "off", "flip": True}
