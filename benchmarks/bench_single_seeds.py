"""How much the seed moves a single-class model (Veksler Eq. 6-8), and whether a label-free pick among seeds helps.

For each variant (dotted overrides of params.yaml's ``train_single``, as in bench_semantic_levers) and each seed,
trains ``train_single@<class>`` in-process for every web class, then scores each model on its class's test
images (adaptive F-beta, beta^2 = 0.3, ground truth used only here). Per (variant, class) it reports the mean,
std, min and max over seeds, and the F-beta of the *consensus* model: the seed whose binarised predictions on
the class's TRAIN images agree most (mean IoU) with the other seeds' - a choice that needs no mask.

Models are kept under ``<workdir>/<variant>-s<seed>/<class>`` and reused by later runs. MLflow goes to
``<workdir>/mlflow.db``, never the repository.

    .venv/bin/python -m benchmarks.bench_single_seeds --workdir /tmp/scr/w2 --seeds 0 1 2 3 4 \\
        --variant "base" --variant "n50 train_single.schedule.normal_epochs=50"
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.bench_semantic_levers import apply_overrides, digest, params_with, parse_variant, work_folder
from benchmarks.bench_single_class import test_scores
from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.data.format import Dataset
from lofiseg.data.labels import class_records
from lofiseg.data.loading import load_split
from lofiseg.infer.predict import predict_probs
from lofiseg.models.bundle import load_bundle
from lofiseg.viz.figures import markdown_table
from stages import download, train_single, web

PROJECT = Path(__file__).resolve().parent.parent
RESULT = PROJECT / "benchmarks" / "results" / "bench_single_seeds.md"


def make_web(work: Path, base: dict) -> Path:
    """The default synthetic web set of ``base`` under ``work`` (generated once per synthetic params)."""
    root = work / f"data-{digest(base['synthetic'])}"
    params_file = root.with_suffix(".yaml")
    if not (root / "web" / "manifest.csv").is_file():
        root.mkdir(parents=True, exist_ok=True)
        params_file.write_text(yaml.safe_dump(base))
        argv = ["--params", str(params_file)]
        download.main([*argv, "--out", str(root / "raw"), "--cache", str(root / "cache"), "--report", str(root / "r")])
        web.main([*argv, "--raw", str(root / "raw"), "--out", str(root / "web"), "--cache", str(root / "cache"),
                  "--report", str(root / "wr")])
    return root


def train_seed(work: Path, data: Path, raw: dict, run: str, classes: list[str]) -> dict[str, float]:
    """train_single_init + train_single@<class> for every class missing under ``work/run``; seconds per class."""
    params_file = work / f"params-{run}.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    out = work / run
    argv = ["--params", str(params_file), "--data", str(data / "web"), "--checkpoints", str(work / "ckpt" / run)]
    seconds = {}
    for cls in classes:
        if (out / cls / "model.pt").is_file():
            continue
        if not (out / "init").is_dir():
            train_single.main([*argv, "--init", "--out", str(out / "init"), "--raw", str(data / "raw")])
        started = time.perf_counter()
        train_single.main([*argv, "--class", cls, "--init-model", str(out / "init"), "--out", str(out / cls)])
        seconds[cls] = time.perf_counter() - started
    return seconds


def train_masks(model_dir: Path, data: Dataset, cls: str) -> torch.Tensor:
    """Binarised foreground (N, S, S) of a class model on the class's train images (no mask is read)."""
    model, info = load_bundle(model_dir / "model.pt")
    split = load_split(data, class_records(data, cls, "train"), info["image_size"], with_masks=False)
    return predict_probs(model, split)[:, info["channel"]] > 0.5


def agreement(masks: list[torch.Tensor]) -> np.ndarray:
    """Each model's mean IoU with the others', averaged over images (an empty pair counts as agreeing)."""
    k = len(masks)
    flat = torch.stack([m.flatten(1) for m in masks])  # (k, N, P)
    inter = (flat[:, None] & flat[None]).sum(-1).float()
    union = (flat[:, None] | flat[None]).sum(-1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean(-1)  # (k, k)
    return ((iou.sum(1) - 1) / max(k - 1, 1)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seeds"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help='"name section.key=value ..." (values in YAML); default: "base" (params.yaml)')
    parser.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE",
                        help="synthetic.* overrides of the generated web set, e.g. synthetic.web.centre_spread=0.4")
    parser.add_argument("--notes", type=Path, help="markdown appended to the result (hand-written conclusions)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    variants = dict(args.variant) or {"base": {}}
    work = work_folder(args.workdir)
    base = params_with(args.data, "synthetic", "--data", parser)
    raws = {(name, seed): apply_overrides(base, {**over, "seed": seed}, name)
            for name, over in variants.items() for seed in args.seeds}
    classes = list(base["web"]["classes"])
    data_root = make_web(work, base)
    data = Dataset(data_root / "web")
    os.chdir(work)
    seconds: dict[str, list[float]] = {}
    for (name, seed), raw in raws.items():
        for secs in train_seed(work, data_root, raw, f"{name}-s{seed}", classes).values():
            seconds.setdefault(name, []).append(secs)
    rows, results = [], {}
    for name in variants:
        for cls in classes:
            dirs = [work / f"{name}-s{seed}" / cls for seed in args.seeds]
            fbeta = np.array([test_scores(d, data)["fbeta_adaptive"] for d in dirs])
            agree = agreement([train_masks(d, data, cls) for d in dirs])
            pick = int(np.argmax(agree))
            results[f"{name}/{cls}"] = {"fbeta": fbeta.tolist(), "agreement": agree.tolist(), "pick_seed": args.seeds[pick]}
            rows.append([name, cls, " / ".join(f"{f:.3f}" for f in fbeta), f"{fbeta.mean():.3f} ± {fbeta.std():.3f}",
                         f"{fbeta.min():.3f}", f"{fbeta.max():.3f}",
                         f"{fbeta[pick]:.3f} (seed {args.seeds[pick]}, agreement {agree[pick]:.2f})"])
        per_seed = np.array([[results[f"{name}/{c}"]["fbeta"][i] for c in classes] for i in range(len(args.seeds))])
        picks = [results[f"{name}/{c}"]["fbeta"][args.seeds.index(results[f"{name}/{c}"]["pick_seed"])]
                 for c in classes]
        rows.append([name, "**mean of classes**", " / ".join(f"{v:.3f}" for v in per_seed.mean(1)),
                     f"{per_seed.mean():.3f} ± {per_seed.mean(1).std():.3f}", f"{per_seed.mean(1).min():.3f}",
                     f"{per_seed.mean(1).max():.3f}", f"{np.mean(picks):.3f}"])
    atomic_write_json(work / "seeds.json", {"variants": variants, "seeds": args.seeds, "results": results})
    overrides = "; ".join(f"`{n}`: {o or '(params.yaml)'}" for n, o in variants.items())
    timing = ", ".join(f"{n} {np.mean(s):.0f} s" for n, s in seconds.items())
    text = "\n\n".join([
        "# Single-class models over seeds: spread, and a label-free pick among them",
        f"`.venv/bin/python -m benchmarks.bench_single_seeds --seeds {' '.join(map(str, args.seeds))}"
        f"{' --data ' + ' '.join(args.data) if args.data else ''}` with variants {overrides}; every other key from "
        f"the repository's params.yaml. Data: the synthetic web set ({'default' if not args.data else '--data'}; "
        f"{len(class_records(data, classes[0], 'train'))} train / "
        f"{len(class_records(data, classes[0], 'test'))} test images per class, 64 px).",
        "Adaptive F-beta (beta^2 = 0.3) of `train_single@<class>` on the class's test images. **consensus**: the "
        "seed whose foreground (p > 0.5) on the class's *train* images has the highest mean IoU with the other "
        "seeds' - chosen without any mask.",
        markdown_table(["variant", "class", "F-beta per seed", "mean ± std", "min", "max", "consensus pick"], rows),
        f"Seconds per class model trained in this run (mean): {timing or 'none (all reused)'}. Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
        "threads.",
        *([args.notes.read_text()] if args.notes else []),
    ]) + "\n"
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
