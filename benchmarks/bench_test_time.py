"""DeepLab test-time inference (issue #5): multi-scale + flip averaging, over train_deeplab seeds.

The repository's DeepLab bundles (``models/deeplab/{pseudo,gt,web_gt}``, made by ``dvc repro`` with params
seed S) are the seed-S models; other seeds are trained here, in the work folder, by the real stage
(``stages.train_deeplab``) on the repository's ``data/pseudo_gt``, ``data/raw`` and ``data/web`` with only
``seed`` changed. Every model is scored like ``evaluate_semantic`` (``score_deeplab``) under each inference
setting (``evaluate.semantic_scales`` / ``evaluate.semantic_flip``); the ratio is DeepLab-on-pseudo over
DeepLab-on-GT (the upper bound) with the same setting, per seed and of the seed means. MLflow goes to
``<workdir>/mlflow.db``.

    .venv/bin/python -m benchmarks.bench_test_time --workdir /tmp/tt --seeds 0 1 2 \
        --setting "plain 1.0" --setting "flip 1.0 flip" --setting "ms 1.0 1.5 2.0 flip"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.bench_semantic_levers import params_with, work_folder
from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import parse_params
from lofiseg.evaluate.semantic import score_deeplab
from lofiseg.viz.figures import markdown_table
from stages import train_deeplab

PROJECT = Path(__file__).resolve().parent.parent
RESULT = PROJECT / "benchmarks" / "results" / "bench_test_time.md"
DATA = {"pseudo": PROJECT / "data" / "pseudo_gt", "gt": PROJECT / "data" / "raw", "web_gt": PROJECT / "data" / "web"}


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """"name s1 s2 ... [flip]" -> (name, {"semantic_scales": [s1, ...], "semantic_flip": bool})."""
    name, *rest = text.split()
    flip = "flip" in rest
    try:
        scales = [float(v) for v in rest if v != "flip"]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--setting {text!r}: expected 'name scale ... [flip]' ({err})") from None
    return name, {"semantic_scales": scales or [1.0], "semantic_flip": flip}


def bundle(work: Path, base: dict, supervision: str, seed: int, own: bool = False) -> Path:
    """The seed's model of ``supervision``: the repository's for the params seed (unless ``own``: the training
    params differ from the repository's), else trained in ``work``."""
    if seed == base["seed"] and not own:
        return PROJECT / "models" / "deeplab" / supervision / "model.pt"
    out = work / f"seed{seed}" / supervision
    if not (out / "model.pt").is_file():
        params_file = work / f"params-seed{seed}-{supervision}.yaml"
        params_file.write_text(yaml.safe_dump({**base, "seed": seed}, sort_keys=False))
        started = time.perf_counter()
        train_deeplab.main(["--params", str(params_file), "--supervision", supervision, "--data",
                            str(DATA[supervision]), "--out", str(out), "--checkpoints", str(work / "ckpt" / f"s{seed}")])
        print(f"trained {supervision} seed {seed} in {time.perf_counter() - started:.0f} s", flush=True)
    return out / "model.pt"


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(args: argparse.Namespace, settings: dict, scores: dict, notes: str) -> str:
    rows, summary = [], []
    for name, setting in settings.items():
        per_seed = scores[name]
        for seed, s in per_seed.items():
            rows.append([name, seed, *(f"{s[k]:.3f}" if k in s else "-" for k in ("pseudo", "gt", "web_gt")),
                         f"{s['pseudo'] / s['gt']:.3f}", f"{s['seconds']:.0f}"])
        pseudo = [s["pseudo"] for s in per_seed.values()]
        gt = [s["gt"] for s in per_seed.values()]
        summary.append([name, " ".join(f"{v:g}" for v in setting["semantic_scales"]),
                        "yes" if setting["semantic_flip"] else "no", mean_std(pseudo), mean_std(gt),
                        f"{statistics.mean(pseudo) / statistics.mean(gt):.3f}",
                        f"{min(p / g for p, g in zip(pseudo, gt, strict=True)):.3f}"])
    return "\n".join([
        "# DeepLab test-time inference: multi-scale and flip, over seeds",
        "",
        f"`.venv/bin/python -m benchmarks.bench_test_time --workdir {args.workdir} --seeds "
        f"{' '.join(map(str, args.seeds))} --split {args.split} "
        + (f"--train {' '.join(args.train)} " if args.train else "")
        + ("" if args.train_gt is None else " ".join(["--train-gt", *args.train_gt]) + " ")
        + " ".join(f'--setting "{n}"' for n in args.raw_settings) + "`",
        "",
        f"mIoU on the scenes {args.split} split (`score_deeplab`, as `evaluate_semantic`) of DeepLab trained on the pseudo "
        "labels (pseudo), on scenes ground truth (gt, the upper bound) and on the web images' ground truth (web_gt, "
        + (f"the ceiling: not trained with --train). Every model is trained here by `stages.train_deeplab` with "
           f"params.yaml plus {', '.join(args.train)} and the seed. " if args.train else
           "the ceiling; seed of params.yaml only). The seed of params.yaml is the repository's `dvc repro` models; "
           "the others are trained by `stages.train_deeplab` with only `seed` changed. ")
        + ("" if args.train_gt is None else
           f"The upper bound (gt) is trained with params.yaml plus {', '.join(args.train_gt)} and the seed instead. "
           if args.train_gt else "The upper bound (gt) is params.yaml's as is (the repository's model for the params seed). ")
        + "Inference: the softmax averaged "
        "over the test image resized by each scale (64 px x scale) and, with flip, its mirror image.",
        "",
        markdown_table(["setting", "scales", "flip", "pseudo mIoU", "gt mIoU (upper bound)",
                        "ratio of means", "worst seed ratio"], summary),
        "Per seed:",
        "",
        markdown_table(["setting", "seed", "pseudo", "gt", "web_gt", "ratio", "scoring s"], rows),
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads.",
        "",
        notes,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tt"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--setting", dest="raw_settings", action="append", default=[],
                        help='"name scale ... [flip]", e.g. "ms 1.0 1.5 2.0 flip"')
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="score on this split of the scenes (val: to choose a setting without the test split)")
    parser.add_argument("--train", nargs="*", default=[], metavar="KEY=VALUE",
                        help="train_deeplab overrides for every model trained here, e.g. train_deeplab.lr_policy=poly "
                             "(then no repository model is used)")
    parser.add_argument("--train-gt", nargs="*", metavar="KEY=VALUE",
                        help="the upper bound's overrides when they differ from --train's (given alone: params.yaml "
                             "as is), e.g. to measure a lever for the web-trained model against the best upper bound")
    parser.add_argument("--notes", type=Path, help="markdown appended to the result (hand-written conclusions)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    args.out = args.out.resolve()  # before the chdir into the work folder
    args.raw_settings = args.raw_settings or ["plain 1.0"]
    settings = dict(parse_setting(t) for t in args.raw_settings)
    work = work_folder(args.workdir)
    base = params_with(args.train, "train_deeplab", "--train", parser)
    gt_train = args.train if args.train_gt is None else args.train_gt
    base_gt = params_with(gt_train, "train_deeplab", "--train-gt", parser)
    params = {name: parse_params({**base, "evaluate": {**base["evaluate"], **s}}, f"setting {name}")
              for name, s in settings.items()}
    os.chdir(work)
    own = bool(args.train)
    models = {seed: {"pseudo": bundle(work, base, "pseudo", seed, own),
                     "gt": bundle(work, base_gt, "gt", seed, bool(gt_train))} for seed in args.seeds}
    if base["seed"] in args.seeds and not own and (PROJECT / "models" / "deeplab" / "web_gt" / "model.pt").is_file():
        models[base["seed"]]["web_gt"] = PROJECT / "models" / "deeplab" / "web_gt" / "model.pt"
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for name in settings:
        scores[name] = {}
        for seed, bundles in models.items():
            started = time.perf_counter()
            entry: dict[str, float] = {}
            for supervision, path in bundles.items():
                by_set, _ = score_deeplab(path, PROJECT / "data" / "raw", params[name].deeplab_scoring(), args.split)
                entry[supervision] = by_set[params[name].evaluate.semantic_sets[0]]["miou"]
            entry["seconds"] = time.perf_counter() - started
            scores[name][seed] = entry
            print(f"== {name} seed {seed}: {json.dumps({k: round(v, 4) for k, v in entry.items()})}", flush=True)
    atomic_write_json(work / "results.json", {"settings": settings, "scores": scores})
    notes = args.notes.read_text() if args.notes else ""
    atomic_write_text(args.out, report(args, settings, scores, notes))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
