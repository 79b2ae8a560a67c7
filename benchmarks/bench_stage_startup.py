"""Stage start-up: wall time of ``python -m stages.<name> --help`` and the heavy packages each stage imports.

Run: ``.venv/bin/python -m benchmarks.bench_stage_startup [--baseline REF] [--repeats N] [--stages a b]``;
writes benchmarks/results/bench_stage_startup.md. Every stage is timed in fresh processes (the best of
``--repeats``); ``python -X importtime -c 'import stages.<name>'`` gives the import time of the stage module and
which of torch, mlflow, prefect, dvc it loads. ``--baseline REF`` measures the same stages in a ``git archive``
of REF too, alternating stage by stage (before/after in one table, same machine and load).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lofiseg.atomic import atomic_write_text

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "benchmarks" / "results" / "bench_stage_startup.md"
HEAVY = ("torch", "mlflow", "prefect", "dvc")
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def stage_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "stages").glob("*.py") if p.stem not in ("__init__", "cli"))


def help_seconds(root: Path, stage: str, repeats: int) -> float:
    """Best wall time of ``python -m stages.<stage> --help`` run from ``root``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=root, check=True,
                       stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def import_profile(root: Path, stage: str) -> tuple[float, list[str]]:
    """Seconds ``import stages.<stage>`` takes (its own -X importtime line) and the heavy packages it loads."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import stages.{stage}"], cwd=root,
                         check=True, capture_output=True, text=True).stderr
    loaded = {m.group(4) for m in IMPORT_LINE.finditer(err)}
    own = [int(m.group(2)) for m in IMPORT_LINE.finditer(err) if m.group(4) == f"stages.{stage}"]
    return own[0] / 1e6 if own else float("nan"), [name for name in HEAVY if name in loaded]


def measure(roots: Sequence[Path], stages: Sequence[str], repeats: int) -> list[dict[str, tuple]]:
    """Per root, stage -> (``--help`` seconds, import seconds, heavy packages); the roots alternate stage by
    stage, so that a change in the machine's load falls on before and after alike."""
    out: list[dict[str, tuple]] = [{} for _ in roots]
    for stage in stages:
        for root, results in zip(roots, out, strict=True):
            seconds, heavy = import_profile(root, stage)
            results[stage] = (help_seconds(root, stage, repeats), seconds, heavy)
            print(f"{root}: {stage} {results[stage]}", flush=True)
    return out


def export(ref: str, into: Path) -> Path:
    """The tree of ``ref`` (git archive) in ``into``."""
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", ref], cwd=PROJECT, check=True, stdout=f)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def table(after: dict, before: dict | None) -> list[str]:
    if before is None:
        lines = ["| stage | `--help` s | import s | heavy packages imported |", "|---|---:|---:|---|"]
        lines += [f"| {s} | {h:.2f} | {i:.2f} | {', '.join(p) or '-'} |" for s, (h, i, p) in after.items()]
        return lines
    lines = ["| stage | `--help` s before | after | import s before | after | heavy before | heavy after |",
             "|---|---:|---:|---:|---:|---|---|"]
    for stage, (h, i, p) in after.items():
        hb, ib, pb = before.get(stage, (float("nan"), float("nan"), []))
        lines.append(f"| {stage} | {hb:.2f} | {h:.2f} | {ib:.2f} | {i:.2f} | {', '.join(pb) or '-'} | "
                     f"{', '.join(p) or '-'} |")
    total_b = sum(v[0] for v in before.values() if v)
    total_a = sum(v[0] for v in after.values())
    lines.append(f"| **sum** | {total_b:.2f} | {total_a:.2f} | | | | |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git ref to measure as 'before' (e.g. main, HEAD~3)")
    parser.add_argument("--repeats", type=int, default=3, help="--help runs per stage; the best is kept")
    parser.add_argument("--stages", nargs="+", help="stages to time (default: every stages/<name>.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stages = args.stages or stage_names(PROJECT)
    with tempfile.TemporaryDirectory() as tmp:
        roots = [PROJECT, *([export(args.baseline, Path(tmp))] if args.baseline else [])]
        after, *rest = measure(roots, stages, args.repeats)
    before = rest[0] if rest else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True,
                            text=True).stdout.strip()
    text = "\n".join([
        "# Stage start-up", "",
        f"`python -m benchmarks.bench_stage_startup{' --baseline ' + args.baseline if args.baseline else ''}` "
        f"at {commit} (working tree), {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average at the end {os.getloadavg()[0]:.1f}; best of {args.repeats} runs of `python -m stages.<name> --help` "
        "(interpreter start, imports, argument parsing); import s: `-X importtime` of `import stages.<name>`.",
        "", *table(after, before), ""])
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
