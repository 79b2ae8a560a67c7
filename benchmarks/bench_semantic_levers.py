"""What raises the weakly supervised DeepLab's mIoU (Veksler Sec. 4.3, issue #5): the chain under params variants.

Runs the real stages in-process in a work folder: web -> train_single (every class, Eq. 6-8) -> pseudo_label ->
pseudo_gt -> train_deeplab@pseudo, once per named variant (dotted overrides of the repository's params.yaml,
validated by :func:`lofiseg.config.parse_params`). Every stage's output is keyed by a hash of the params it
reads plus its inputs' keys, so a variant that only changes a later stage reuses the earlier outputs (a
``pseudo_label.confidence`` change does not retrain the class models). Each variant is scored like
``evaluate_semantic`` (its functions are imported): reg F-beta per class, pseudo labels vs web ground truth,
DeepLab mIoU on the scenes test split and the ratio to the DeepLab trained on scenes ground truth.

The ``ceiling`` variant trains the same DeepLab on the web images' GROUND TRUTH (perfect pseudo labels: object
-> the image's class id, the same images and splits pseudo_label labels): the best the web-domain approach can
do on multi-object scenes. MLflow goes to ``<workdir>/mlflow.db``, never the repository.

    .venv/bin/python -m benchmarks.bench_semantic_levers --workdir /tmp/h6 --variants baseline ceiling conf0.7
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.bench_single_class import test_scores
from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import Params, parse_params
from lofiseg.data.format import Dataset, DatasetWriter
from lofiseg.data.labels import class_names_json, web_truth_labels
from lofiseg.evaluate.semantic import score_deeplab, score_pseudo_labels, score_single_class
from lofiseg.viz.figures import markdown_table
from stages import download, pseudo_gt, pseudo_label, train_deeplab, train_single, web

PROJECT = Path(__file__).resolve().parent.parent
RESULT = PROJECT / "benchmarks" / "results" / "bench_semantic_levers.md"
UPPER_BOUND = PROJECT / "models" / "deeplab" / "gt" / "model.pt"
CEILING = "ceiling"  # DeepLab on the web images' ground truth instead of pseudo labels

DEEPLAB_SEED = "bench.deeplab_seed"  # not a params key: the seed of train_deeplab alone (noise of that stage)
# name -> dotted overrides of params.yaml, cheapest first (the brief's order).
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    CEILING: {},
    "conf0.7": {"pseudo_label.confidence": 0.7},
    "conf0.9": {"pseudo_label.confidence": 0.9},
    "nocrf": {"pseudo_label.crf": False},
    "deeplab30": {"train_deeplab.epochs": 30},
    "ceiling_deeplab30": {"train_deeplab.epochs": 30},
    "finetune128": {"train_single.finetune.epochs": 5},
    "size128": {"train_single.image_size": 128},
    "reg30": {"train_single.schedule.normal_lambda_reg": 30.0},
    "reg10": {"train_single.schedule.normal_lambda_reg": 10.0},
    # noise: the baseline chain with another seed, and the baseline DeepLab alone with other seeds
    "seed1": {"seed": 1},
    "deeplab_seed1": {DEEPLAB_SEED: 1},
    "deeplab_seed2": {DEEPLAB_SEED: 2},
}
# Sections a variant may change: the web data and the scenes are generated once, from the base params.
MUTABLE = ("train_single", "pseudo_label", "train_deeplab", "evaluate", "seed")


def set_dotted(params: dict, dotted: str, value: Any, name: str) -> None:
    """Set ``section.key`` in ``params`` in place; a path params.yaml does not have is an error naming it."""
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise ValueError(f"{name}: override {dotted!r}: {key!r} is not a params section")
        node = node[key]
    if leaf not in node:
        raise ValueError(f"{name}: override {dotted!r}: no key {leaf!r} in params.yaml")
    node[leaf] = value


def work_folder(path: Path) -> Path:
    """``path`` resolved and created, with MLflow tracking into it (unless set), never into the repository."""
    work = path.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlflow.db")
    os.environ.setdefault("MLFLOW_ARTIFACT_ROOT", str(work / "artifacts"))
    if str(PROJECT) in os.environ["MLFLOW_TRACKING_URI"]:
        raise SystemExit("MLFLOW_TRACKING_URI must not point into the repository")
    return work


def params_with(pairs: list[str], section: str, flag: str, parser: argparse.ArgumentParser) -> dict:
    """The repository's params.yaml with each ``section.<key>=<value>`` of ``flag`` set (values in YAML)."""
    base = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key.startswith(f"{section}.") or not value:
            parser.error(f"{flag} {pair!r}: expected {section}.<key>=<value>")
        set_dotted(base, key, yaml.safe_load(value), flag)
    return base


def apply_overrides(base: dict, overrides: dict[str, Any], name: str) -> dict:
    """A deep copy of ``base`` with every dotted key set; an unknown path or section is an error naming it."""
    out = copy.deepcopy(base)
    for dotted, value in overrides.items():
        if dotted == DEEPLAB_SEED:
            continue
        if dotted == "seed":
            out["seed"] = value
            continue
        if not dotted.startswith(tuple(f"{s}." for s in MUTABLE)):
            raise ValueError(f"variant {name!r}: override {dotted!r} is outside the sections {list(MUTABLE)}")
        set_dotted(out, dotted, value, f"variant {name!r}")
    return out


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"name key=value key=value"`` (values parsed as YAML) -> (name, overrides)."""
    name, *pairs = text.split()
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"--variant {text!r}: {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def web_truth_dataset(params: Params, data: Dataset, out: Path) -> None:
    """Perfect pseudo labels: each class's web images (pseudo_label.splits) with object -> class id, rest 0."""
    classes = params.semantic_classes()
    out.parent.mkdir(parents=True, exist_ok=True)
    with DatasetWriter(out) as writer:
        for name in params.web.classes:
            for record in data:
                if name not in record.tags or record.split not in params.pseudo_label.splits:
                    continue
                label = web_truth_labels(data.mask(record), classes.index(name))
                writer.copy(data, record, label, image_shape=label.shape)
        writer.add_file("classes.json", class_names_json(classes))


def fraction_stats(params: Params, data: Dataset, pseudo: Dataset) -> dict[str, dict[str, float]]:
    """Per class: fraction of pixels the pseudo labels call the class vs the web ground truth's object fraction."""
    classes = params.semantic_classes()
    out = {}
    for name in params.web.classes:
        cid, pred, true, total = classes.index(name), 0, 0, 0
        for record in pseudo:
            if name not in record.tags:
                continue
            label = pseudo.mask(record)
            pred += int((label == cid).sum())
            true += int((web_truth_labels(data.mask(data[record.id]), 1) == 1).sum())
            total += label.size
        out[name] = {"pseudo_fg": pred / max(total, 1), "true_fg": true / max(total, 1)}
    return out


class Chain:
    """Stage outputs under ``work``, keyed by the params they read; stage wall seconds in ``times.json``."""

    def __init__(self, work: Path, base: dict):
        self.work = work
        self.times_file = work / "times.json"
        self.seconds: dict[str, float] = (json.loads(self.times_file.read_text())
                                          if self.times_file.is_file() else {})
        self.params_file = work / "params-base.yaml"
        self.params_file.write_text(yaml.safe_dump(base, sort_keys=False))
        self.web, self.raw = work / "web", work / "raw"
        if not (self.web / "manifest.csv").is_file():
            self._timed("data", lambda: self._make_data())

    def _make_data(self) -> None:
        argv = ["--params", str(self.params_file)]
        download.main([*argv, "--out", str(self.raw), "--cache", str(self.work / "cache"),
                       "--report", str(self.work / "rep")])
        web.main([*argv, "--raw", str(self.raw), "--out", str(self.web), "--cache", str(self.work / "cache"),
                  "--report", str(self.work / "webrep")])

    def _timed(self, key: str, fn: Any) -> float:
        started = time.perf_counter()
        fn()
        self.seconds[key] = time.perf_counter() - started
        atomic_write_json(self.times_file, self.seconds)
        return self.seconds[key]

    def stage(self, key: str, out: Path, fn: Any) -> tuple[Path, float, bool]:
        """(out, seconds, fresh): run ``fn`` unless ``out`` is complete (``.done``) from an earlier run."""
        if (out / ".done").is_file() and key in self.seconds:
            return out, self.seconds[key], False
        if out.exists():
            shutil.rmtree(out)
        seconds = self._timed(key, fn)
        out.mkdir(parents=True, exist_ok=True)
        (out / ".done").write_text("ok\n")
        return out, seconds, True

    def run(self, name: str, raw_params: dict, ceiling: bool, deeplab_seed: int | None = None) -> dict:
        """Every stage of one variant; {stage: (seconds, fresh)} and the output folders."""
        params = parse_params(raw_params, f"variant {name}")
        pfile = self.work / f"params-{digest(raw_params)}.yaml"
        pfile.write_text(yaml.safe_dump(raw_params, sort_keys=False))
        argv = ["--params", str(pfile)]
        classes = list(params.web.classes)
        stages: dict[str, tuple[float, bool]] = {}
        result: dict[str, Any] = {"params": params}
        if ceiling:
            key = "webgt-" + digest(raw_params["seed"], raw_params["pseudo_label"]["splits"])
            data, secs, fresh = self.stage(key, self.work / "webgt" / key,
                                           lambda: web_truth_dataset(params, Dataset(self.web),
                                                                     self.work / "webgt" / key / "data"))
            stages["web GT labels"] = (secs, fresh)
            data = data / "data"
            upstream = key
        else:
            s_key = "single-" + digest(raw_params["seed"], raw_params["train_single"])
            s_dir = self.work / "single" / s_key
            ckpt = ["--checkpoints", str(self.work / "ckpt" / s_key), "--data", str(self.web)]

            def train_all() -> None:
                train_single.main([*argv, "--init", "--out", str(s_dir / "init"), "--raw", str(self.raw), *ckpt])
                for cls in classes:
                    train_single.main([*argv, "--class", cls, "--init-model", str(s_dir / "init"),
                                       "--out", str(s_dir / cls / "reg"), *ckpt])

            _, secs, fresh = self.stage(s_key, s_dir, train_all)
            stages["train_single x4"] = (secs, fresh)
            result["single"] = s_dir
            p_key = "pseudo-" + digest(s_key, raw_params["pseudo_label"])
            p_dir = self.work / "pseudo" / p_key

            def label_all() -> None:
                for cls in classes:
                    pseudo_label.main([*argv, "--class", cls, "--data", str(self.web), "--model",
                                       str(s_dir / cls / "reg"), "--out", str(p_dir / "parts" / cls)])
                pseudo_gt.main([*argv, "--parts", str(p_dir / "parts"), "--out", str(p_dir / "gt")])

            _, secs, fresh = self.stage(p_key, p_dir, label_all)
            stages["pseudo_label x4 + pseudo_gt"] = (secs, fresh)
            data = p_dir / "gt"
            result["pseudo"] = data
            upstream = p_key
        d_seed = raw_params["seed"] if deeplab_seed is None else deeplab_seed
        d_key = "deeplab-" + digest(upstream, d_seed, raw_params["train_deeplab"])
        d_dir = self.work / "deeplab" / d_key
        if d_seed != raw_params["seed"]:
            d_params = {**raw_params, "seed": d_seed}
            argv = ["--params", str(self.work / f"params-{digest(d_params)}.yaml")]
            Path(argv[1]).write_text(yaml.safe_dump(d_params, sort_keys=False))
        _, secs, fresh = self.stage(d_key, d_dir, lambda: train_deeplab.main(
            [*argv, "--supervision", "pseudo", "--data", str(data), "--out", str(d_dir / "model"),
             "--checkpoints", str(self.work / "ckpt" / d_key)]))
        stages["train_deeplab"] = (secs, fresh)
        result["deeplab"] = d_dir / "model" / "model.pt"
        result["stages"] = stages
        return result


def score(chain: Chain, run: dict, upper: float) -> dict:
    params: Params = run["params"]
    data = Dataset(chain.web)
    out: dict[str, Any] = {"stages": {k: {"seconds": s, "fresh": f} for k, (s, f) in run["stages"].items()}}
    if "single" in run:
        out["single_class"] = score_single_class(data, list(params.web.classes), run["single"], params.evaluate.batch_size)
        out["fg_test"] = {cls: test_scores(run["single"] / cls / "reg", data) for cls in params.web.classes}
        pseudo = Dataset(run["pseudo"])
        out["pseudo_labels"] = score_pseudo_labels(data, pseudo, params.semantic_classes())
        out["fractions"] = fraction_stats(params, data, pseudo)
    by_set, _ = score_deeplab(run["deeplab"], chain.raw, params.deeplab_scoring())
    out["deeplab_pseudo"] = by_set[params.evaluate.semantic_sets[0]]
    out["ratio"] = out["deeplab_pseudo"]["miou"] / upper
    return out


def cell(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def report(args: argparse.Namespace, variants: dict[str, dict], results: dict[str, dict], upper: dict,
           classes: list[str], notes: list[str], per_class: int) -> str:
    rows, iou_rows, frac_rows = [], [], []
    for name, res in results.items():
        single = res.get("single_class", {})
        fb = [cell(single[c]["reg"]["fbeta"]) if single else "-" for c in classes]
        pl = res.get("pseudo_labels")
        total = sum(s["seconds"] for s in res["stages"].values())
        own = sum(s["seconds"] for s in res["stages"].values() if s["fresh"])
        overrides = ", ".join(f"{k}={v}" for k, v in variants[name].items()) or "(params.yaml)"
        if name.startswith(CEILING):
            overrides = ", ".join(["DeepLab on web GT masks", *overrides.split(", ")[1 if not variants[name] else 0:]])
        rows.append([name, overrides, *fb, cell(pl and pl["miou"]) if pl else "-",
                     cell(res["deeplab_pseudo"]["miou"]), cell(res["ratio"]), f"{total:.0f}", f"{own:.0f}"])
        iou_rows.append([name, *(cell(pl["iou"][c]) if pl else "-" for c in ["background", *classes]),
                         *(cell(res["deeplab_pseudo"]["iou"][c]) for c in ["background", *classes])])
        if "fractions" in res:
            frac_rows.append([name, *(f"{res['fg_test'][c]['fg_fraction']:.3f} / {res['fg_test'][c]['gt_fraction']:.3f}"
                                      for c in classes),
                              *(f"{res['fractions'][c]['pseudo_fg']:.3f} / {res['fractions'][c]['true_fg']:.3f}"
                                for c in classes)])
    text = [
        "# Weakly supervised DeepLab (Veksler Sec. 4.3): which params raise its mIoU",
        "",
        f"`.venv/bin/python -m benchmarks.bench_semantic_levers --workdir {args.workdir} --variants "
        f"{' '.join(results)}{' --data ' + ' '.join(args.data) if args.data else ''}`: the real stages in-process "
        f"on the synthetic data ({'default' if not args.data else 'with the --data overrides'}; web: {per_class} "
        "train images per class at 64 px; scenes test split for DeepLab), repository params.yaml plus each variant's overrides. "
        "Stage outputs are reused across variants when their params are unchanged.",
        "",
        f"Upper bound: DeepLab trained on scenes ground truth, {upper['source']}: mIoU {upper['miou']:.3f}. "
        "ratio = DeepLab-pseudo mIoU / upper bound (the issue's aim: >= 0.8).",
        "",
        "reg F-beta: adaptive F-beta of each class model on its class's test web images (`score_single_class`). "
        "pseudo mIoU: pseudo labels vs web ground truth (`score_pseudo_labels`). DeepLab: mIoU on the scenes test "
        "split (`score_deeplab`). seconds: wall time of the variant's whole chain (sum of its stages, each "
        "measured when first run) / of the stages this variant had to run itself.",
        "",
        markdown_table(["variant", "overrides", *(f"F-beta {c}" for c in classes), "pseudo mIoU", "DeepLab mIoU",
                        "ratio", "chain s", "own s"], rows),
        "IoU per class: pseudo labels vs web GT | DeepLab on scenes test:",
        "",
        markdown_table(["variant", *(f"pseudo {c}" for c in ["bg", *classes]),
                        *(f"DeepLab {c}" for c in ["bg", *classes])], iou_rows),
        "Foreground fractions: class model on its test images (p > 0.5) / true | pseudo labels on the labelled "
        "train+val images / true:",
        "",
        markdown_table(["variant", *(f"model {c}" for c in classes), *(f"pseudo {c}" for c in classes)], frac_rows),
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads. Wall times are indicative only.",
        "",
        *notes,
    ]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/h6"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"of {list(VARIANTS)}")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[],
                        help='an extra variant: "name section.key=value ..." (values in YAML)')
    parser.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the generated data for every variant, e.g. synthetic.web.centre_spread=0.4 "
                             "(use a fresh --workdir: the data is made once per work folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--upper", type=Path, default=UPPER_BOUND, help="DeepLab bundle trained on scenes GT")
    parser.add_argument("--upper-miou", type=float, help="use this upper-bound mIoU (an earlier score of --upper) "
                        "instead of scoring the bundle, e.g. while it is being retrained")
    parser.add_argument("--notes", type=Path, help="markdown appended to the result (hand-written conclusions)")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    variants = {n: VARIANTS[n] for n in args.variants if n in VARIANTS}
    unknown = [n for n in args.variants if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants {unknown}: unknown, known are {list(VARIANTS)} (or use --variant)")
    variants.update(dict(args.variant))
    if args.threads:
        torch.set_num_threads(args.threads)
    work = work_folder(args.workdir)
    base = params_with(args.data, "synthetic", "--data", parser)
    raws = {name: apply_overrides(base, over, name) for name, over in variants.items()}
    for name, raw in raws.items():
        parse_params(raw, f"variant {name}")  # every variant validated before any work
    upper_path = args.upper.resolve()
    os.chdir(work)  # checkpoints and provenance relative to the work folder, not the repository
    chain = Chain(work, base)
    base_params = parse_params(base)
    if args.upper_miou is not None:
        upper = {"miou": args.upper_miou, "source": f"`{upper_path}` as scored earlier (--upper-miou)"}
    else:
        upper_scores, _ = score_deeplab(upper_path, chain.raw, base_params.deeplab_scoring())
        upper = {"miou": upper_scores[base_params.evaluate.semantic_sets[0]]["miou"], "source": f"`{upper_path}`"}
    results_file = work / "results.json"
    previous = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results: dict[str, dict] = {n: r for n, r in previous.get("results", {}).items() if n not in variants}
    variants = {**{n: previous["variants"][n] for n in results}, **variants}
    classes = list(base_params.web.classes)
    per_class = base_params.synthetic.web.per_class
    notes = [args.notes.read_text()] if args.notes else []
    for name in [n for n in variants if n not in results]:
        started = time.perf_counter()
        run = chain.run(name, raws[name], ceiling=name.startswith(CEILING),
                        deeplab_seed=variants[name].get(DEEPLAB_SEED))
        results[name] = score(chain, run, upper["miou"])
        print(f"== {name}: DeepLab {results[name]['deeplab_pseudo']['miou']:.3f} ratio {results[name]['ratio']:.3f}"
              f" pseudo {(results[name].get('pseudo_labels') or {}).get('miou')} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
        atomic_write_json(results_file, {"upper": upper, "variants": variants, "results": results})
        atomic_write_text(args.out, report(args, variants, results, upper, classes, notes, per_class))
    print(report(args, variants, results, upper, classes, notes, per_class))


if __name__ == "__main__":
    main()
