"""Single-class models on the default synthetic web data (Veksler Sec. 4.1, Tables 2-3): regularized loss with
annealing vs regularized loss from transferred weights (no annealing) vs CE on ground truth (the "gap").

Runs the real stages in-process with the repository's params.yaml (only ``train_single.init_from`` changes),
then scores every model on its class's test split: adaptive F-beta (beta^2 = 0.3), max F-beta and MAE of the
foreground probability (channel 1) against ground truth (object of the class = 1; confusers = 0). Writes
``benchmarks/results/bench_single_class.md``. MLflow goes to ``<workdir>/mlflow.db``, never the repository.

    .venv/bin/python -m benchmarks.bench_single_class --workdir /tmp/h1 --classes sun leaf --init-from saliency brick
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from lofiseg.atomic import atomic_write_text
from lofiseg.data.format import Dataset
from lofiseg.data.labels import class_records
from lofiseg.data.loading import load_split
from lofiseg.infer.predict import predict_probs
from lofiseg.metrics.saliency import SaliencyMeter
from lofiseg.models.bundle import load_bundle
from lofiseg.train.regularized_plan import gt_labels
from lofiseg.viz.figures import markdown_table
from stages import download, train_single, web

PROJECT = Path(__file__).resolve().parent.parent
RESULT = PROJECT / "benchmarks" / "results" / "bench_single_class.md"


def test_scores(model_dir: Path, data: Dataset) -> dict[str, float]:
    """F-beta (adaptive, max) and MAE of a class model on its class's test split, at the model's image size."""
    model, info = load_bundle(model_dir / "model.pt")
    split = load_split(data, class_records(data, info["class"], "test"), info["image_size"], desc="test")
    probs = predict_probs(model, split)[:, info["channel"]]
    meter = SaliencyMeter()
    for pred, gt in zip(probs.numpy(), gt_labels(split.masks).numpy(), strict=True):
        meter.update(pred, gt)
    scores = meter.compute()
    scores["fg_fraction"] = float((probs > 0.5).float().mean())
    scores["gt_fraction"] = float((gt_labels(split.masks) == 1).float().mean())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/h1"))
    parser.add_argument("--classes", nargs="+", default=["sun", "leaf"])
    parser.add_argument("--init-from", nargs="+", default=["saliency", "brick"],
                        help="init_from of the transfer runs: data sets or classes not in --classes")
    parser.add_argument("--reuse", action="store_true", help="keep models (and their times) of an earlier run")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if set(args.init_from) & set(args.classes):
        parser.error(f"--init-from {args.init_from} must not name an evaluated class {args.classes}")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlflow.db")
    os.environ.setdefault("MLFLOW_ARTIFACT_ROOT", str(work / "artifacts"))
    if "/work/main" in os.environ["MLFLOW_TRACKING_URI"]:
        raise SystemExit("MLFLOW_TRACKING_URI must not point into the repository")
    base = yaml.safe_load((PROJECT / "params.yaml").read_text())
    os.chdir(work)  # checkpoints and provenance relative to the work folder, not the repository

    params = {}
    for source in (None, *args.init_from):
        changed = copy.deepcopy(base)
        changed["train_single"]["init_from"] = source
        params[source] = work / f"params-{source or 'anneal'}.yaml"
        params[source].write_text(yaml.safe_dump(changed, sort_keys=False))
    common = ["--checkpoints", str(work / "ckpt"), "--data", str(work / "web")]
    if not (work / "web" / "manifest.csv").is_file():
        download.main(["--params", str(params[None]), "--out", str(work / "raw"), "--report", str(work / "rep")])
        web.main(["--params", str(params[None]), "--raw", str(work / "raw"), "--out", str(work / "web"),
                  "--cache", str(work / "cache"), "--report", str(work / "webrep")])
    models, times_file = work / "models", work / "times.json"
    seconds: dict[str, float] = json.loads(times_file.read_text()) if args.reuse and times_file.is_file() else {}

    def timed(key: str, out: Path, argv: list[str]) -> None:
        if args.reuse and key in seconds and (out / "info.json").is_file():
            return
        started = time.perf_counter()
        train_single.main([*argv, "--out", str(out), *common])
        seconds[key] = time.perf_counter() - started
        atomic_write_text(times_file, json.dumps(seconds, indent=2))

    methods = {"reg (annealing)": (None, models / "anneal")}
    methods.update({f"reg (transfer from {s})": (s, models / f"transfer_{s}") for s in args.init_from})
    methods["gt (CE)"] = (None, models / "gt")
    load_before = os.getloadavg()
    timed("init:none", models / "init_none", ["--params", str(params[None]), "--init"])
    for source in args.init_from:
        timed(f"init:{source}", models / f"init_{source}",
              ["--params", str(params[source]), "--init", "--raw", str(work / "raw")])
    for cls in args.classes:
        for method, (source, folder) in methods.items():
            extra = ["--gt"] if method.startswith("gt") else ["--init-model", str(models / f"init_{source or 'none'}")]
            timed(f"{cls}/{method}", folder / cls, ["--params", str(params[source]), "--class", cls, *extra])
    load_after = os.getloadavg()

    data = Dataset(work / "web")
    rows, results = [], {}
    for cls in args.classes:
        for method, (_, folder) in methods.items():
            scores = test_scores(folder / cls, data)
            results[f"{cls}/{method}"] = {**scores, "seconds": seconds[f"{cls}/{method}"]}
            rows.append([cls, method, f"{scores['fbeta_adaptive']:.3f}", f"{scores['fbeta_max']:.3f}",
                         f"{scores['mae']:.3f}", f"{scores['fg_fraction']:.3f} / {scores['gt_fraction']:.3f}",
                         f"{seconds[f'{cls}/{method}']:.0f}"])

    def gap(cls: str, method: str) -> str:
        return f"{results[f'{cls}/gt (CE)']['fbeta_adaptive'] - results[f'{cls}/{method}']['fbeta_adaptive']:+.3f}"

    reg_methods = [m for m in methods if m.startswith("reg")]
    gaps = [[cls, *(gap(cls, m) for m in reg_methods)] for cls in args.classes]
    cfg = base["train_single"]
    text = [
        "# Single-class models: regularized (annealing / transfer) vs CE on ground truth",
        "",
        f"`.venv/bin/python -m benchmarks.bench_single_class --workdir {args.workdir} --classes "
        f"{' '.join(args.classes)} --init-from {' '.join(args.init_from)}`, repository params.yaml defaults: "
        f"{cfg['model']['arch']} + {cfg['model']['encoder']} ({cfg['model']['encoder_weights']}, frozen="
        f"{cfg['model']['freeze_encoder']}), {cfg['image_size']} px, batch {cfg['batch_size']}, Adam "
        f"{cfg['lr']}; schedule {json.dumps(cfg['schedule'])}; negatives {cfg['negatives']}; "
        f"finetune {json.dumps(cfg['finetune'])}; gt_epochs {cfg['gt_epochs'] or 'null (the regularized budget)'}.",
        f"Data: the default synthetic web set, {len(class_records(data, args.classes[0]))} train / "
        f"{len(class_records(data, args.classes[0], 'test'))} test images per class. Each transfer run starts "
        f"from `train_single_init` with `init_from: <source>` (annealing + normal stage, no negatives, on the "
        f"source's train images: " + ", ".join(f"{s} {seconds[f'init:{s}']:.0f} s" for s in args.init_from)
        + "), then skips annealing.",
        "",
        "F-beta (beta^2 = 0.3) and MAE of the foreground probability on the class's test images (ground truth: "
        "the class's object = 1; confuser objects of other classes = 0). fg / gt: fraction of test pixels "
        "predicted foreground (p > 0.5) / truly foreground. Time: wall seconds of the stage (training + MLflow).",
        "",
        markdown_table(["class", "model", "F-beta adaptive", "F-beta max", "MAE", "fg / gt", "seconds"], rows),
        "Gap to the gt model (adaptive F-beta, Table 2's 'gap'; positive = gt better):",
        "",
        markdown_table(["class", *(f"gap {m[4:]}" for m in reg_methods)], gaps),
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; load average (1, 5, 15 min) "
        f"before {tuple(round(x, 1) for x in load_before)}, after {tuple(round(x, 1) for x in load_after)}. "
        "Wall times are only indicative on a shared machine.",
        "",
    ]
    atomic_write_text(args.out, "\n".join(text))
    atomic_write_text(work / "bench_single_class.json", json.dumps(results, indent=2))
    print("\n".join(text))


if __name__ == "__main__":
    main()
