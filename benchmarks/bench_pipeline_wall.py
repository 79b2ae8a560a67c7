"""Pipeline wall time from nothing: every DVC stage of a fresh clone, one by one, with an empty DVC cache and
MLflow store; optionally the Prefect flow on another fresh clone; then a no-op ``dvc repro``.

Run (on an idle machine: the whole default pipeline takes many minutes):

    .venv/bin/python -m benchmarks.bench_pipeline_wall [--commit HEAD] [--stages download noise] [--flow]

writes benchmarks/results/bench_pipeline_wall.md. The clone (``git clone`` of this repository at ``--commit``,
in a temporary folder) borrows this project's .venv by a symlink (no install is timed). Stage instances run in
the topological order of ``dvc dag`` (ties in dvc.yaml's order), each as ``dvc repro -s <instance>``;
``--stages`` keeps the instances of the named stages (``noise`` or ``noise@0.5``) and runs them alone, so
their upstream stages must be listed too. Start-up is ``python -m stages.<module> --help`` of the stage's
command (interpreter, imports, params-free argument parsing), timed once per module in the clone: the part of
each stage's seconds that is not its work. ``--flow`` times ``python -m flows.pipeline --max-parallel 2`` on a
second fresh clone (with ``--stages``: ``--target`` each of their instances).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lofiseg.atomic import atomic_write_text

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "benchmarks" / "results" / "bench_pipeline_wall.md"
EDGE = re.compile(r'^"(?P<up>[^"]+)" -> "(?P<down>[^"]+)";$')
CLEARED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT", "MLFLOW_REGISTRY_URI", "LOFISEG_DECODE_CACHE",
               "PREFECT_API_URL", "PREFECT_HOME")


def clone(commit: str, into: Path, venv: Path) -> Path:
    """A fresh clone of this repository at ``commit`` (no DVC cache, no MLflow store), with ``venv`` linked."""
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(PROJECT), str(into)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=into, check=True)
    (into / ".venv").symlink_to(venv)
    return into


def clone_env(repo: Path) -> dict[str, str]:
    """The environment stages see: the clone's .venv first on PATH, stores in their defaults (inside the clone)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.update(PATH=f"{repo / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}", DO_NOT_TRACK="1",
               MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1")
    return env


def timed(cmd: Sequence[str], repo: Path, log: Path) -> float:
    """Wall seconds of ``cmd`` run in ``repo`` (output appended to ``log``); a failure stops the benchmark."""
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=repo, env=clone_env(repo), stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({done.returncode}) in {repo}; see {log}")
    return time.perf_counter() - start


def dvc_output(repo: Path, *args: str) -> str:
    return subprocess.run([str(repo / ".venv" / "bin" / "dvc"), *args], cwd=repo, env=clone_env(repo),
                          check=True, capture_output=True, text=True).stdout


def stage_order(repo: Path) -> list[str]:
    """Every stage instance in a topological order of ``dvc dag``; ties in ``dvc stage list`` order."""
    names = dvc_output(repo, "stage", "list", "--name-only").split()
    edges = [m.group("up", "down") for line in dvc_output(repo, "dag", "--dot").splitlines()
             if (m := EDGE.match(line.strip()))]
    upstream = {name: {up for up, down in edges if down == name} for name in names}
    order: list[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and upstream[n] <= set(order)]
        if not ready:
            raise SystemExit(f"error: dvc dag has a cycle among {sorted(set(names) - set(order))}")
        order.append(ready[0])
    return order


def select(order: Sequence[str], stages: Sequence[str] | None) -> list[str]:
    """The instances of ``stages`` (a stage name covers all its ``name@item`` instances), in ``order``."""
    if not stages:
        return list(order)
    picked = [n for n in order if n in stages or n.split("@")[0] in stages]
    unknown = [s for s in stages if not any(n == s or n.split("@")[0] == s for n in order)]
    if unknown:
        raise SystemExit(f"error: --stages {unknown} not in dvc.yaml; known: {sorted({n.split('@')[0] for n in order})}")
    return picked


def stage_modules(repo: Path) -> dict[str, str]:
    """Stage name (before ``@``) -> the ``stages.<module>`` its dvc.yaml command runs."""
    import yaml

    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    modules = {}
    for name, body in spec.items():
        cmd = body.get("do", body)["cmd"]
        match = re.search(r"python -m (stages\.\w+)", cmd)
        if match:
            modules[name] = match.group(1)
    return modules


def startup_seconds(repo: Path, module: str, log: Path) -> float:
    return timed([str(repo / ".venv" / "bin" / "python"), "-m", module, "--help"], repo, log)


def run_stages(repo: Path, instances: Sequence[str], log: Path) -> list[tuple[str, float, float]]:
    modules = stage_modules(repo)
    startup: dict[str, float] = {}
    rows = []
    for name in instances:
        seconds = timed([str(repo / ".venv" / "bin" / "dvc"), "repro", "-s", name], repo, log)
        module = modules.get(name.split("@")[0])
        if module and module not in startup:
            startup[module] = startup_seconds(repo, module, log)
        rows.append((name, seconds, startup.get(module, float("nan"))))
        print(f"{name}: {seconds:.1f} s (start-up {rows[-1][2]:.1f} s)", file=sys.stderr, flush=True)
    return rows


def report(commit: str, rows: Sequence[tuple[str, float, float]], noop: float, flow: float | None,
           subset: bool, load: str) -> str:
    total = sum(seconds for _, seconds, _ in rows)
    startup = sum(s for _, _, s in rows if s == s)
    lines = ["| stage | seconds | share | of which start-up s |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {seconds:.1f} | {seconds / total:.1%} | {s:.1f} |" for name, seconds, s in rows]
    lines.append(f"| **all stages, one by one** | {total:.1f} | 100% | {startup:.1f} |")
    lines.append(f"| no-op `dvc repro{' -s <these>' if subset else ''}` after | {noop:.1f} | | |")
    if flow is not None:
        what = " --target <these>" if subset else ""
        lines.append(f"| `python -m flows.pipeline --max-parallel 2{what}` (fresh clone) | {flow:.1f} | | |")
    return "\n".join([
        "# Pipeline wall time from nothing", "",
        f"`python -m benchmarks.bench_pipeline_wall {' '.join(sys.argv[1:])}` at {commit}; fresh `git clone`, empty "
        f"DVC cache, MLflow store and decode cache; {platform.machine()}, {os.cpu_count()} cores, load average "
        f"at start {load}. Each stage instance is `dvc repro -s <instance>` (its seconds include DVC's own "
        "start-up and hashing); start-up: `python -m stages.<module> --help`, counted for every instance.",
        "", *lines, ""])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="HEAD", help="commit of this repository to clone (default HEAD)")
    parser.add_argument("--stages", nargs="+", help="only these stages (names or name@item), in DAG order")
    parser.add_argument("--flow", action="store_true", help="also time the Prefect flow on a second clone")
    parser.add_argument("--venv", type=Path, default=PROJECT / ".venv", help="the environment to borrow")
    parser.add_argument("--keep", action="store_true", help="keep the clones (their logs are bench.log)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    venv = args.venv.resolve()
    if not (venv / "bin" / "dvc").is_file():
        parser.error(f"--venv {args.venv}: no bin/dvc in it")
    commit = subprocess.run(["git", "rev-parse", "--short", args.commit], cwd=PROJECT, check=True,
                            capture_output=True, text=True).stdout.strip()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="lofiseg-wall-"))
    try:
        repo = clone(commit, tmp / "repro", venv)
        log = repo / "bench.log"
        instances = select(stage_order(repo), args.stages)
        rows = run_stages(repo, instances, log)
        noop = timed([str(repo / ".venv" / "bin" / "dvc"), "repro", *(["-s", *instances] if args.stages else [])],
                     repo, log)
        flow = None
        if args.flow:
            flow_repo = clone(commit, tmp / "flow", venv)
            targets = [arg for name in instances for arg in ("--target", name)] if args.stages else []
            flow = timed([str(flow_repo / ".venv" / "bin" / "python"), "-m", "flows.pipeline", "--max-parallel", "2",
                          *targets], flow_repo, flow_repo / "bench.log")
        text = report(commit, rows, noop, flow, bool(args.stages), load)
    finally:
        if args.keep:
            print(f"clones kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
