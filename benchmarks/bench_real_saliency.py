"""Salient objects under label noise (CAS paper Sec. 4.2, Table 3) on real photographs: DAVIS-2016 frames.

One command, the way a user runs it: the repository's params.yaml plus the overrides a user writes for a local
SOD set (``source: local``, ``layout: sod``, ``split_files``), the noise rates 0 / 0.25 / 0.5 and this command's
size / epoch / ``--set`` overrides, written to a params file in a work folder per seed, and every stage's
``main`` run there on dvc.yaml's paths: download -> noise@<rate> (region labels of the train split flipped per
image with probability rate) -> train_saliency@{ce,cace,cas}x<rate> -> evaluate_saliency on the clean test
split (F-beta at T = 2 mean(S), MAE, S-measure: the stage's own ``metrics/saliency.json``), averaged over seeds.

Writes ``benchmarks/results/bench_real_saliency.md`` (or ``--out``). MLflow tracking is off.

    nice -n 10 .venv/bin/python -m benchmarks.bench_real_saliency --data ../shared/data/davis2016 \\
        --size 64 --epochs-scale 0.25 --seeds 0 --keep /tmp/realsal
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.bench_real_weak import Timer, add_run_options, deep_merge
from benchmarks.bench_semantic_levers import set_dotted
from lofiseg.atomic import atomic_write_text
from lofiseg.config import parse_params, rate_key
from lofiseg.data.format import Dataset
from lofiseg.evaluate.scored_split import records_to_score
from lofiseg.infer.predict import predict_native
from lofiseg.metrics.saliency import SaliencyMeter
from lofiseg.models.bundle import load_bundle
from lofiseg.viz.figures import markdown_table
from stages import download, evaluate_saliency, noise, train_saliency

PROJECT = Path(__file__).resolve().parent.parent
RESULT = PROJECT / "benchmarks" / "results" / "bench_real_saliency.md"
SET = "davis2016"
RATES = [0.0, 0.25, 0.5]
KEYS = ("fbeta_adaptive", "mae", "s_measure")


def davis_overrides(data: Path) -> dict:
    """What a user adds to params.yaml for a local salient-object set with its own split lists."""
    return {
        "download": {"datasets": {SET: {
            "source": "local", "files": [{"uri": str(data)}], "layout": "sod",
            "images": "images/*.jpg", "masks": "masks/{stem}.png",
            "split_files": {s: f"splits/{s}.txt" for s in ("train", "val", "test")},
            "description": "DAVIS-2016 val frames (Perazzi et al., CVPR 2016), split by sequence"}}},
        "noise": {"dataset": SET, "rates": RATES},
        "evaluate": {"saliency_sets": [SET]},
        "tracking": {"enabled": False},
    }


def bench_params(args: argparse.Namespace, seed: int) -> dict:
    raw = deep_merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), davis_overrides(args.data.resolve()))
    raw["seed"] = seed
    raw["train_saliency"]["image_size"] = args.size
    raw["train_saliency"]["epochs"] = max(1, round(raw["train_saliency"]["epochs"] * args.epochs_scale))
    for pair in args.set:
        key, _, value = pair.partition("=")
        set_dotted(raw, key, yaml.safe_load(value), "--set")
    parse_params(raw, "bench_real_saliency params")
    return raw


def run_chain(work: Path, raw: dict) -> Timer:
    """download -> noise@rate -> train_saliency@loss x rate -> evaluate_saliency in ``work`` (dvc.yaml's paths)."""
    p = ["--params", str(work / "params.yaml")]
    timer = Timer(work)
    timer.step("download", Path(f"data/raw/{SET}/manifest.csv"), lambda: download.main(
        [*p, "--out", "data/raw", "--cache", "data/downloads", "--report", "reports/data"]))
    for rate in map(rate_key, raw["noise"]["rates"]):
        timer.step(f"noise@{rate}", Path(f"data/noisy/{rate}/manifest.csv"), lambda r=rate: noise.main(
            [*p, "--rate", r, "--raw", "data/raw", "--out", f"data/noisy/{r}"]))
        for loss in raw["train_saliency"]["losses"]:
            timer.step(f"train_saliency@{loss}/{rate}", Path(f"models/saliency/{loss}/{rate}/model.pt"),
                       lambda r=rate, loss=loss: train_saliency.main(
                           [*p, "--loss", loss, "--rate", r, "--data", f"data/noisy/{r}",
                            "--out", f"models/saliency/{loss}/{r}",
                            "--checkpoints", f".checkpoints/train_saliency/{loss}/{r}"]))
    timer.step("evaluate_saliency", Path("metrics/saliency.json"), lambda: evaluate_saliency.main(p))
    return timer


def add_s_measure(metrics: dict, split: str = "test") -> dict:
    """evaluate_saliency's metrics with each model's S-measure on ``split`` added (the stage does not report it;
    scored as :func:`lofiseg.evaluate.saliency.score_saliency` scores the rest)."""
    dataset = Dataset(Path("data/raw") / SET)
    records = records_to_score(dataset, split, SET)
    for loss, by_rate in metrics.items():
        for rate, by_set in by_rate.items():
            model, info = load_bundle(Path(f"models/saliency/{loss}/{rate}/model.pt"))
            meter = SaliencyMeter()
            for record, probs in predict_native(model, dataset, records, info["image_size"], 32, desc="S-measure"):
                gt = dataset.mask(record)
                meter.update(probs[info["channel"]].clamp(0, 1).numpy(),
                             np.where(gt == 255, 255, gt > 0).astype(np.uint8))
            by_set[SET]["s_measure"] = float(meter.compute()["s_measure"])
    return metrics


def report(args: argparse.Namespace, raw: dict, runs: dict[int, dict], seconds: dict[int, dict]) -> str:
    losses, rates = raw["train_saliency"]["losses"], [rate_key(r) for r in raw["noise"]["rates"]]

    def mean(loss: str, rate: str, key: str) -> tuple[float, float]:
        values = [runs[s][loss][rate][SET][key] for s in runs]
        return float(np.mean(values)), float(np.std(values))

    rows = [[rate, *(" / ".join(f"{mean(loss, rate, k)[0]:.3f}" for k in KEYS) for loss in losses)]
            for rate in rates]
    spread = [[rate, *(f"{mean(loss, rate, 'fbeta_adaptive')[1]:.3f}" for loss in losses)] for rate in rates]
    model_secs = [v for s in seconds.values() for k, v in s.items() if k.startswith("train_saliency@")]
    ts = raw["train_saliency"]
    command = (f"nice -n 10 .venv/bin/python -m benchmarks.bench_real_saliency --data {args.data} --size "
               f"{args.size} --epochs-scale {args.epochs_scale} --seeds {' '.join(map(str, args.seeds))}"
               + "".join(f" --set {s}" for s in args.set))
    f = {loss: {rate: mean(loss, rate, "fbeta_adaptive")[0] for rate in rates} for loss in losses}
    aims = []
    if {"cas", "ce"} <= set(losses) and {"0.0", "0.5"} <= set(rates):
        aims = [f"CAS at 0.5 minus CAS at 0: {f['cas']['0.5'] - f['cas']['0.0']:+.3f} F-beta (aim: within 0.03); "
                f"CAS at 0 minus CE at 0: {f['cas']['0.0'] - f['ce']['0.0']:+.3f} (aim: >= -0.02); CE at 0.5 "
                f"minus CE at 0: {f['ce']['0.5'] - f['ce']['0.0']:+.3f} (the paper: a collapse).", ""]
    return "\n".join([
        f"# Saliency under label noise on real photographs (DAVIS-2016){' - ' + args.title if args.title else ''}",
        "",
        f"`{command}`: params.yaml + the local SOD overrides of `davis_overrides` (source local, layout sod, "
        f"split_files; noise.rates {raw['noise']['rates']}), every stage run in-process in a work folder per seed. "
        f"train_saliency: {ts['image_size']} px, {ts['epochs']} epochs, batch {ts['batch_size']}, lr {ts['lr']}, "
        f"alpha {ts['alpha']}, {ts['model']['arch']} + {ts['model']['encoder']} (frozen: "
        f"{ts['model']['freeze_encoder']}); {', '.join(args.set) or 'no --set'}. Trained on the train split "
        f"(flipped per image with probability rate), scored on the clean test split by evaluate_saliency.",
        "",
        f"Cells: F-beta at T = 2 mean(S) / MAE / S-measure, mean of seeds {args.seeds}.",
        "",
        markdown_table(["noise rate", *(f"{loss} F-beta / MAE / S" for loss in losses)], rows),
        *aims,
        "F-beta std over seeds:",
        "",
        markdown_table(["noise rate", *losses], spread),
        f"Wall time per model: mean {np.mean(model_secs):.0f} s, max {np.max(model_secs):.0f} s over "
        f"{len(model_secs)} models trained in this run. Machine: {platform.machine()}, {os.cpu_count()} cores "
        f"shared with other jobs (load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the DAVIS-2016 folder (images/, masks/, splits/)")
    parser.add_argument("--size", type=int, default=96, help="train_saliency.image_size, px")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="train_saliency.epochs times this")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    add_run_options(parser, "train_saliency.alpha=0.2", RESULT)
    args = parser.parse_args()
    if not (args.data / "splits" / "test.txt").is_file():
        parser.error(f"--data {args.data}: no splits/test.txt (expected the DAVIS-2016 folder of ../shared/data)")
    raws = {seed: bench_params(args, seed) for seed in args.seeds}
    out = args.out.resolve()
    notes = args.notes.read_text() if args.notes else ""
    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="realsal-") as tmp:
        root = (args.keep or Path(tmp)).resolve()
        for seed, raw in raws.items():
            work = root / f"seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            params_file = work / "params.yaml"
            if params_file.is_file() and yaml.safe_load(params_file.read_text()) != raw:
                raise SystemExit(f"--keep {root}: holds a run with other params; use another folder")
            atomic_write_text(params_file, yaml.safe_dump(raw, sort_keys=False))
            os.chdir(work)
            seconds[seed] = run_chain(work, raw).seconds
            runs[seed] = add_s_measure(json.loads(Path("metrics/saliency.json").read_text()))
        text = report(args, raws[args.seeds[0]], runs, seconds) + notes
    atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
