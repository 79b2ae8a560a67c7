"""lofiseg.provenance: git commit and dirty flag, DVC hashes from dvc.lock and .dvc files, the standard tags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lofiseg import provenance

DVC_LOCK = """\
schema: '2.0'
stages:
  download:
    cmd: python -m stages.download --out data/raw
    deps:
    - path: lofiseg/data
      hash: md5
      md5: 11111111111111111111111111111111.dir
    outs:
    - path: data/raw
      hash: md5
      md5: 22222222222222222222222222222222.dir
      size: 1234
      nfiles: 10
  noise@0.5:
    cmd: python -m stages.noise --rate 0.5
    deps:
    - path: data/raw
      hash: md5
      md5: 22222222222222222222222222222222.dir
    outs:
    - path: data/noisy/0.5
      hash: md5
      md5: 33333333333333333333333333333333.dir
"""


def test_dvc_hashes_read_dvc_lock_and_dot_dvc_files(tmp_path: Path) -> None:
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "web.dvc").write_text("outs:\n- md5: 44444444444444444444444444444444.dir\n"
                                                "  path: web\n")
    hashes = provenance.dvc_hashes(["data/raw", "./data/noisy/0.5/", tmp_path / "extra/web", "data/missing"],
                                 tmp_path)
    assert hashes == {"data/raw": "22222222222222222222222222222222.dir",
                      "data/noisy/0.5": "33333333333333333333333333333333.dir",
                      "extra/web": "44444444444444444444444444444444.dir"}
    assert provenance.dvc_hashes(["data/raw"], tmp_path / "extra") == {}  # no dvc.lock there
    with pytest.raises(TypeError, match="paths: expected a list of paths"):
        provenance.dvc_hashes("data/raw", tmp_path)  # type: ignore[arg-type]


def test_git_commit_dirty_flag_and_standard_tags(tmp_path: Path) -> None:
    assert provenance.git_commit(tmp_path) is None and provenance.git_dirty(tmp_path) is None

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                               *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    assert provenance.git_commit(tmp_path) is None  # a repo without commits has no HEAD yet
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text(DVC_LOCK)
    git("add", "code.py", "dvc.lock")
    git("commit", "-q", "-m", "first")
    sha = git("rev-parse", "HEAD")
    assert len(sha) == 40 and provenance.git_commit(tmp_path) == sha
    assert provenance.git_dirty(tmp_path) is False
    (tmp_path / "dvc.lock").write_text(DVC_LOCK + "# rewritten by dvc repro\n")
    assert provenance.git_dirty(tmp_path) is False  # dvc.lock changes are DVC's, recorded as dvc.* tags
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_dirty(tmp_path) is True
    assert provenance.standard_tags(tmp_path, ["data/raw", "data/missing"]) == {
        "git.commit": sha, "git.dirty": "true", "dvc.data/raw": "22222222222222222222222222222222.dir"}
