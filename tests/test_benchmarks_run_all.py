"""benchmarks.run_all: which benchmarks `make bench` runs and how to pick them (nothing is run here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import run_all

BENCHMARKS = Path(run_all.__file__).parent


def test_list_names_every_benchmark_module_and_marks_the_studies():
    out = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--list"], cwd=BENCHMARKS.parent,
                         capture_output=True, text=True, check=True, timeout=60).stdout
    modules = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in ("__init__", "run_all"))
    assert {p.stem for p in BENCHMARKS.glob("bench_*.py")} <= set(modules)
    listed = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == modules
    assert "bench_crf                    [default]" in out
    assert "bench_test_time              [study, --only: reads models/deeplab" in out
    assert "    Dense-CRF speed and memory at 256x256" in out  # each one's docstring summary


def test_default_run_leaves_out_the_studies_and_only_picks_by_name():
    assert set(run_all.STUDIES) <= set(run_all.benchmark_names())  # no stale study name
    default = run_all.default_selection()
    assert "bench_cas" in default and "bench_regions" in default
    assert not set(default) & set(run_all.STUDIES)
    assert run_all.resolve(["crf", "bench_test_time"]) == ["bench_crf", "bench_test_time"]
    with pytest.raises(ValueError, match="unknown benchmark 'nope'; known: bench_audit, bench_cas"):
        run_all.resolve(["nope"])
