"""Run the benchmarks one after another, each with its defaults, each writing its own benchmarks/results file.

    .venv/bin/python -m benchmarks.run_all              # the self-contained benchmarks (make bench)
    .venv/bin/python -m benchmarks.run_all --list       # every benchmark, and why a study is left out
    .venv/bin/python -m benchmarks.run_all --only crf bench_models   # these, studies included

Every module of benchmarks/ is a benchmark. The self-contained ones make their own inputs (synthetic tensors,
or data generated into a temporary folder) and take minutes. The studies (:data:`STUDIES`) are left out of the
default run: they train many models, some read ``dvc repro`` outputs (data/, models/), and most results
files end with findings written by hand that a run with the defaults would drop; run them by name, with the
arguments their docstring gives. Each benchmark runs in its own process from the project root; a failure
is reported and the next one runs; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent

# Left out of the default run (name -> why); still run by --only.
STUDIES = {
    "bench_semantic_levers": "trains the weakly supervised chain per variant; upper bound from models/deeplab/gt "
                             "(dvc repro); results end with hand-written findings",
    "bench_decode_cache": "reads data/ (dvc repro) and, with --photos, a folder of photographs",
    "bench_pipeline_wall": "runs the whole default pipeline from a fresh clone (many minutes; idle machine)",
    "bench_single_class": "trains the single-class models per variant (7-14 min measured); results end with "
                          "hand-written notes",
    "bench_single_seeds": "trains every web class per seed and variant; results end with hand-written findings",
    "bench_stage_startup": "its results hold the before/after table of --baseline REF, which a run with the "
                           "defaults would drop",
    "bench_real_regions": "needs --data (BSDS500, e.g. ../shared/data/bsds500); trains the four region methods",
    "bench_test_time": "reads models/deeplab and data/ (dvc repro), trains DeepLabs for more seeds; results end "
                       "with hand-written findings",
    "bench_real_saliency": "needs --data (DAVIS-2016 of ../shared/data); 9 saliency models per seed, ~10 min "
                           "each at full scale",
    "bench_real_weak": "needs --data (MSRC-v2 of ../shared/data); the weak chain on real photos, ~10 min per "
                       "model at full scale",
    "saliency_cas_investigation": "18 training runs on data/noisy/0.5 (dvc repro), about 20 min",
}


def benchmark_names() -> list[str]:
    """Every benchmark module of benchmarks/ (all but this runner and the package file), sorted."""
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("__init__", Path(__file__).stem))


def summary(name: str) -> str:
    """First line of the benchmark's docstring, read without importing it (imports take seconds)."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text())) or ""
    return doc.splitlines()[0] if doc else ""


def resolve(names: Sequence[str]) -> list[str]:
    """``--only`` names (``crf`` or ``bench_crf``) as module names, in the order given; ValueError if unknown."""
    known = benchmark_names()
    out = []
    for name in names:
        module = name if name in known else f"bench_{name}"
        if module not in known:
            raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(known)}")
        out.append(module)
    return out


def default_selection() -> list[str]:
    return [name for name in benchmark_names() if name not in STUDIES]


def listing() -> str:
    lines = []
    for name in benchmark_names():
        kind = f"study, --only: {STUDIES[name]}" if name in STUDIES else "default"
        lines.append(f"{name:28s} [{kind}]\n    {summary(name)}")
    return "\n".join(lines)


def run(names: Sequence[str]) -> int:
    """Run each benchmark as ``python -m benchmarks.NAME`` from the project root; 1 if any failed."""
    failed = []
    for index, name in enumerate(names, start=1):
        print(f"=== [{index}/{len(names)}] benchmarks.{name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=PROJECT)
        print(f"=== benchmarks.{name}: {'ok' if code == 0 else f'FAILED (exit {code})'} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these (e.g. crf or bench_crf), studies too")
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    try:
        names = resolve(args.only) if args.only else default_selection()
    except ValueError as err:
        parser.error(str(err))
    return run(names)


if __name__ == "__main__":
    sys.exit(main())
