"""The weakly supervised chain (Veksler Sec. 4.3) on real photographs: MSRC-v2's object groups as web classes.

One command, the way a user runs it: the repository's params.yaml merged with
``benchmarks/params/msrc_v2.yaml`` (``uri`` pointed at ``--data``) and this command's size / epoch / ``--set``
overrides, written to a params file in a work folder, and every stage's ``main`` run there on dvc.yaml's paths:
download (semantic layout) -> web (kind: dataset) -> train_single_init -> train_single@<class> (regularized,
no masks) and train_single_gt@<class> (CE on ground truth, the same budget) -> pseudo_label@<class> ->
pseudo_gt -> train_deeplab@{pseudo,gt,web_gt} -> evaluate_semantic. The numbers are the stage's own
``metrics/semantic.json``: per class reg vs gt F-beta on the class's test photos (Table 2's gap), pseudo-label
mIoU on the training photos, DeepLab on pseudo vs on ground truth on the msrc_v2 test split (mIoU, ratio).
It adds, as a diagnosis of the gap, each class model's predicted vs true object fraction on its test photos
(p > 0.5) and on its *training* photos with no mask read (the model's own estimate of object size).

Writes ``benchmarks/results/bench_real_weak.md`` (or ``--out``). MLflow tracking is off (it changes no number).

    nice -n 10 .venv/bin/python -m benchmarks.bench_real_weak --data ../shared/data/msrc_v2 \\
        --classes cow aeroplane --size 64 --epochs-scale 0.2 --keep /tmp/realweak
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.bench_semantic_levers import fraction_stats, set_dotted
from benchmarks.bench_single_class import test_scores
from benchmarks.bench_single_seeds import train_masks
from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, parse_params
from lofiseg.data.format import Dataset
from lofiseg.viz.figures import markdown_table
from stages import download, evaluate_semantic, pseudo_gt, pseudo_label, train_deeplab, train_single, web

PROJECT = Path(__file__).resolve().parent.parent
OVERRIDES = PROJECT / "benchmarks" / "params" / "msrc_v2.yaml"
RESULT = PROJECT / "benchmarks" / "results" / "bench_real_weak.md"
REPLACED = ("classes",)  # a class set is a whole: web.classes is replaced, never merged


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged into it section by section (a ``classes`` mapping replaces the whole)."""
    out = dict(base)
    for key, value in changes.items():
        merge = isinstance(value, dict) and isinstance(out.get(key), dict) and key not in REPLACED
        out[key] = deep_merge(out[key], value) if merge else value
    return out


def scale_epochs(raw: dict, factor: float) -> None:
    """Every epoch count of the chain's training stages times ``factor`` (at least 1 where it was > 0)."""
    def scaled(n: int) -> int:
        return max(1, round(n * factor)) if n > 0 else 0

    schedule = raw["train_single"]["schedule"]
    for key in ("annealing_epochs", "normal_epochs", "negative_epochs"):
        schedule[key] = scaled(schedule[key])
    raw["train_single"]["finetune"]["epochs"] = scaled(raw["train_single"]["finetune"]["epochs"])
    if raw["train_single"].get("gt_epochs"):
        raw["train_single"]["gt_epochs"] = scaled(raw["train_single"]["gt_epochs"])
    raw["train_deeplab"]["epochs"] = scaled(raw["train_deeplab"]["epochs"])


def bench_params(args: argparse.Namespace) -> dict:
    """params.yaml + msrc_v2.yaml + this command's overrides, validated (an unknown key names itself)."""
    raw = deep_merge(yaml.safe_load((PROJECT / "params.yaml").read_text()), yaml.safe_load(OVERRIDES.read_text()))
    raw["seed"] = args.seed
    raw["download"]["datasets"]["msrc_v2"]["files"] = [{"uri": str(args.data.resolve())}]
    if args.classes:  # another object class of the set (book, chair, face, sign: validation classes) as its peers
        known = raw["web"]["classes"]
        raw["web"]["classes"] = {c: known.get(c, {"kind": "dataset", "name": "msrc_v2", "tag": c}) for c in args.classes}
    for section in ("train_single", "train_deeplab"):
        raw[section]["image_size"] = args.size
    scale_epochs(raw, args.epochs_scale)
    raw["tracking"]["enabled"] = False
    for pair in args.set:
        key, _, value = pair.partition("=")
        set_dotted(raw, key, yaml.safe_load(value), "--set")
    parse_params(raw, "bench_real_weak params")
    return raw


class Timer:
    """Wall seconds per step, kept in ``times.json`` so a --keep re-run reuses finished steps."""

    def __init__(self, work: Path):
        self.file = work / "times.json"
        self.seconds: dict[str, float] = json.loads(self.file.read_text()) if self.file.is_file() else {}

    def step(self, key: str, done: Path, fn: Callable[[], None]) -> None:
        if key in self.seconds and done.exists():
            return
        print(f"== {key}", flush=True)
        started = time.perf_counter()
        fn()
        self.seconds[key] = time.perf_counter() - started
        atomic_write_json(self.file, self.seconds)


def run_chain(work: Path, classes: list[str]) -> Timer:
    """Every stage of the weak chain in ``work`` with dvc.yaml's commands and paths."""
    p = ["--params", str(work / "params.yaml")]
    timer = Timer(work)
    timer.step("download", Path("data/raw/msrc_v2/manifest.csv"), lambda: download.main(
        [*p, "--out", "data/raw", "--cache", "data/downloads", "--report", "reports/data"]))
    timer.step("web", Path("data/web/manifest.csv"), lambda: web.main(
        [*p, "--raw", "data/raw", "--out", "data/web", "--cache", "data/downloads/web", "--report", "reports/web"]))
    single = ["--data", "data/web", "--checkpoints", ".checkpoints/train_single"]
    timer.step("train_single_init", Path("models/single/init"), lambda: train_single.main(
        [*p, "--init", *single, "--raw", "data/raw", "--out", "models/single/init"]))
    for cls in classes:
        timer.step(f"train_single@{cls}", Path(f"models/single/{cls}/reg/model.pt"), lambda cls=cls: train_single.main(
            [*p, "--class", cls, *single, "--init-model", "models/single/init", "--out", f"models/single/{cls}/reg"]))
        timer.step(f"train_single_gt@{cls}", Path(f"models/single/{cls}/gt/model.pt"), lambda cls=cls: train_single.main(
            [*p, "--class", cls, "--gt", *single, "--out", f"models/single/{cls}/gt"]))
        timer.step(f"pseudo_label@{cls}", Path(f"data/pseudo/{cls}/manifest.csv"), lambda cls=cls: pseudo_label.main(
            [*p, "--class", cls, "--data", "data/web", "--model", f"models/single/{cls}/reg",
             "--out", f"data/pseudo/{cls}"]))
    timer.step("pseudo_gt", Path("data/pseudo_gt/manifest.csv"), lambda: pseudo_gt.main(
        [*p, "--parts", "data/pseudo", "--out", "data/pseudo_gt"]))
    for supervision, data in (("pseudo", "data/pseudo_gt"), ("gt", "data/raw"), ("web_gt", "data/web")):
        timer.step(f"train_deeplab@{supervision}", Path(f"models/deeplab/{supervision}/model.pt"),
                   lambda s=supervision, d=data: train_deeplab.main(
                       [*p, "--supervision", s, "--data", d, "--out", f"models/deeplab/{s}",
                        "--checkpoints", f".checkpoints/train_deeplab/{s}"]))
    timer.step("evaluate_semantic", Path("metrics/semantic.json"), lambda: evaluate_semantic.main(p))
    return timer


def object_sizes(params: Params, classes: list[str]) -> dict[str, dict[str, float]]:
    """Per class: the reg and gt models' object fraction (p > 0.5) on the test photos vs the truth; and, with no
    mask read (what a user sees without ground truth), the reg model's on its own training photos and its
    CRF-refined pseudo labels' (pseudo_label's output), against the truth of those photos."""
    data = Dataset(Path("data/web"))
    pseudo = fraction_stats(params, data, Dataset(Path("data/pseudo_gt")))
    out = {}
    for cls in classes:
        reg = test_scores(Path(f"models/single/{cls}/reg"), data)
        gt = test_scores(Path(f"models/single/{cls}/gt"), data)
        train_fg = float(train_masks(Path(f"models/single/{cls}/reg"), data, cls).float().mean())
        out[cls] = {"reg_test": reg["fg_fraction"], "gt_model_test": gt["fg_fraction"],
                    "true_test": reg["gt_fraction"], "reg_train": train_fg,
                    "pseudo_train": pseudo[cls]["pseudo_fg"], "true_train": pseudo[cls]["true_fg"]}
    return out


def f3(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(args: argparse.Namespace, raw: dict, metrics: dict, sizes: dict, seconds: dict[str, float],
           classes: list[str]) -> str:
    single = metrics["single_class"]
    rows = []
    for cls in classes:
        entry, size = single[cls], sizes[cls]
        rows.append([cls, f3(entry["reg"] and entry["reg"]["fbeta"]), f3(entry["gt"] and entry["gt"]["fbeta"]),
                     f"{100 * entry['gap']:+.1f}" if entry["gap"] is not None else "n/a",
                     f"{size['reg_test']:.2f} / {size['gt_model_test']:.2f} / {size['true_test']:.2f}",
                     f"{size['reg_train']:.2f} / {size['pseudo_train']:.2f} / {size['true_train']:.2f}",
                     f"{seconds.get(f'train_single@{cls}', 0):.0f} / {seconds.get(f'train_single_gt@{cls}', 0):.0f}"])
    gaps = [single[c]["gap"] for c in classes if single[c]["gap"] is not None]
    rows.append(["**mean**", f3(np.mean([single[c]["reg"]["fbeta"] for c in classes])),
                 f3(np.mean([single[c]["gt"]["fbeta"] for c in classes])),
                 f"{100 * np.mean(gaps):+.1f}" if gaps else "n/a", "", "", ""])
    pl = metrics["pseudo_labels"] or {}
    dl_rows = [[name, f3((metrics.get(f"deeplab_{name}") or {}).get("miou")),
                f"{seconds.get(f'train_deeplab@{name}', 0):.0f}"] for name in ("pseudo", "gt", "web_gt")]
    iou_rows = [[name, *(f3((metrics.get(f"deeplab_{name}") or {}).get("iou", {}).get(c))
                         for c in ["background", *classes])] for name in ("pseudo", "gt", "web_gt")]
    iou_rows.insert(0, ["pseudo labels (train photos)", *(f3(pl.get("iou", {}).get(c))
                                                          for c in ["background", *classes])])
    ts, td = raw["train_single"], raw["train_deeplab"]
    sizes_note = ("object fraction (p > 0.5) on the class's test photos: reg model / gt model / truth; "
                  "on train: the reg model's / its CRF pseudo labels' on the class's training photos (neither "
                  "reads a mask) / truth")
    command = (f"nice -n 10 .venv/bin/python -m benchmarks.bench_real_weak --data {args.data} --classes "
               f"{' '.join(classes)} --size {args.size} --epochs-scale {args.epochs_scale} --seed {args.seed}"
               + "".join(f" --set {s}" for s in args.set))
    text = [
        f"# Weakly supervised chain on real photographs (MSRC-v2){' - ' + args.title if args.title else ''}",
        "",
        f"`{command}`: params.yaml + `benchmarks/params/msrc_v2.yaml` + the overrides below, every stage run "
        "in-process in a work folder on dvc.yaml's paths. Scores are evaluate_semantic's `metrics/semantic.json`.",
        "",
        f"Overrides: train_single / train_deeplab image_size {args.size} px; schedule annealing "
        f"{ts['schedule']['annealing_epochs']} + normal {ts['schedule']['normal_epochs']} + negative "
        f"{ts['schedule']['negative_epochs']} epochs (gt baseline: the same budget), finetune "
        f"{ts['finetune']['epochs']} epochs at {ts['finetune']['image_size']} px; DeepLab {td['epochs']} epochs; "
        f"seed {args.seed}; {', '.join(args.set) or 'no --set'}. Encoder {ts['model']['encoder']} "
        f"({ts['model']['encoder_weights']}), frozen in train_single: {ts['model']['freeze_encoder']}, in DeepLab: "
        f"{td['model']['freeze_encoder']}.",
        "",
        "## Single-class models: regularized vs ground truth (Veksler Table 2 layout)",
        "",
        f"F-beta at T = 2 mean(S) on the class's test photos; gap = gt - reg in F-beta points (aim: mean <= 5). "
        f"Sizes: {sizes_note}. Seconds: wall time of train_single@ / train_single_gt@ (train_single_init, shared: "
        f"{seconds.get('train_single_init', 0):.0f} s).",
        "",
        markdown_table(["class", "reg F-beta", "gt F-beta", "gap (points)", "object fraction reg / gt / true",
                        "on train: reg / pseudo / true", "seconds reg / gt"], rows),
        f"Pseudo labels on the training photos (train + val, over the pixels they label): mIoU {f3(pl.get('miou'))}, "
        f"labelled fraction {f3(pl.get('labelled_fraction'))}.",
        "",
        "## DeepLab on the msrc_v2 test split",
        "",
        f"DeepLab on pseudo ground truth vs on ground truth (other MSRC classes background): ratio "
        f"{f3(metrics.get('deeplab_ratio'))} (aim >= 0.75); pseudo vs the web-GT ceiling "
        f"{f3(metrics.get('pseudo_vs_ceiling'))}.",
        "",
        markdown_table(["DeepLab trained on", "mIoU", "seconds"], dl_rows),
        "IoU per class:",
        "",
        markdown_table(["", *["background", *classes]], iou_rows),
        f"Other wall times: download {seconds.get('download', 0):.0f} s, web {seconds.get('web', 0):.0f} s, "
        f"pseudo_label {sum(v for k, v in seconds.items() if k.startswith('pseudo_label@')):.0f} s in all, "
        f"evaluate_semantic {seconds.get('evaluate_semantic', 0):.0f} s. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{os.getloadavg()[0]:.1f}), torch {torch.__version__} with {torch.get_num_threads()} threads.",
        "",
    ]
    return "\n".join(text)


def add_run_options(parser: argparse.ArgumentParser, set_example: str, result: Path) -> None:
    """The options every real-data benchmark takes: params overrides, work folder, heading, notes, output."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"a dotted params override, value in YAML, e.g. {set_example}")
    parser.add_argument("--keep", type=Path, help="work folder to keep (and reuse on a re-run); default: a temp one")
    parser.add_argument("--title", default="", help="a label for the results file's heading")
    parser.add_argument("--notes", type=Path, help="markdown appended to the result (hand-written findings)")
    parser.add_argument("--out", type=Path, default=result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the MSRC-v2 folder (images/, masks/, splits/)")
    parser.add_argument("--classes", nargs="+", help=f"web classes to keep (default: all of {OVERRIDES.name}); "
                        "another object class of the set is added as they are (validation classes)")
    parser.add_argument("--size", type=int, default=96, help="train_single and train_deeplab image_size, px")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="every training epoch count times this")
    parser.add_argument("--seed", type=int, default=0)
    add_run_options(parser, "train_single.schedule.volumetric_target=0.3", RESULT)
    args = parser.parse_args()
    if not (args.data / "groups.csv").is_file():
        parser.error(f"--data {args.data}: no groups.csv (expected the MSRC-v2 folder of ../shared/data)")
    raw = bench_params(args)
    classes = list(raw["web"]["classes"])
    out = args.out.resolve()
    notes = args.notes.read_text() if args.notes else ""
    with tempfile.TemporaryDirectory(prefix="realweak-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        params_file = work / "params.yaml"
        if params_file.is_file() and yaml.safe_load(params_file.read_text()) != raw:
            raise SystemExit(f"--keep {work}: holds a run with other params; use another folder")
        atomic_write_text(params_file, yaml.safe_dump(raw, sort_keys=False))
        os.chdir(work)
        timer = run_chain(work, classes)
        metrics = json.loads(Path("metrics/semantic.json").read_text())
        sizes = object_sizes(parse_params(raw), classes)
        atomic_write_json(work / "bench_real_weak.json", {"metrics": metrics, "sizes": sizes,
                                                           "seconds": timer.seconds})
        text = report(args, raw, metrics, sizes, timer.seconds, classes) + notes
    atomic_write_text(out, text)
    print(text)


if __name__ == "__main__":
    main()
