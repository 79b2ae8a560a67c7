"""DVC stages `train_single_init`, `train_single@<class>` and `train_single_gt@<class>`: single-class models.

``--init``: the start point of every class model, per ``train_single.init_from``: null -> none (each class
anneals); ``<class>`` -> a model trained with annealing + normal stages on that class's web images; ``<data
set>`` -> the same on ``--raw/<set>``'s train images; ``path.pt`` -> that model, checked and copied.
``--class X``: Veksler's regularized loss (Eq. 6) on the train images tagged X, no mask ever opened: annealing
(Eq. 8) + normal stage, or the normal stage only from ``--init-model``'s weights; then negative epochs with the
other classes' images (Eq. 7); then optionally the weights transferred to larger images (``finetune``).
``--class X --gt``: the same network trained with CE on ground truth, where the class's images have masks.

Checkpoints every epoch in ``--checkpoints`` (resumed after a kill), MLflow experiment ``<prefix>-single-class``.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lofiseg.atomic import atomic_dir, atomic_write_json
from lofiseg.config import Params, load_params
from lofiseg.data.format import MANIFEST, Dataset, DatasetFormatError
from lofiseg.data.loading import TensorSplit, load_split, random_flip
from lofiseg.losses.ce import cross_entropy_loss
from lofiseg.models.bundle import load_bundle
from lofiseg.models.factory import SegmentationModel, build_model
from lofiseg.provenance import standard_tags
from lofiseg.track.tracker import Tracker
from lofiseg.train.loop import (
    Trainer,
    epoch_batches,
    epoch_generator,
    fingerprint,
    matching_checkpoint,
    resolve_device,
    seed_everything,
)
from lofiseg.train.regularized_plan import (
    RegularizedStep,
    gt_labels,
    negative_records,
    paired_batches,
    require_class_records,
    training_plan,
    transfer_weights,
)
from stages.cli import log, run, stage_parser
from stages.outputs import log_training_outputs, save_training_outputs

REG_CURVES = ("train_loss", "loss_sparse_crf", "loss_volumetric", "loss_positional", "loss_negative", "sigma")
GT_CURVES = ("train_loss",)
EXPERIMENT = "single-class"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



@dataclass
class Job:
    """One model to train: what the generic loop below needs to know about it."""

    name: str  # MLflow run name and checkpoint file stem
    model: SegmentationModel
    step: Callable[[torch.nn.Module, dict[str, torch.Tensor], int], torch.Tensor]
    make_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]]
    epochs: int
    epoch_metrics: Callable[[int], dict[str, Any]]
    stamp: tuple[Any, ...]  # what the checkpoint is made from
    info: dict[str, Any]
    run_params: dict[str, Any]
    curves: Sequence[str]
    example: torch.Tensor  # one input batch for the MLflow signature
    inputs: list[str] = field(default_factory=list)  # DVC-tracked inputs for the provenance tags
    extra_files: dict[str, Any] = field(default_factory=dict)  # name -> JSON written beside model.pt


def train_job(job: Job, params: Params, out: Path, checkpoints: Path, device: torch.device) -> dict[str, Any]:
    """Train ``job`` with checkpoint/resume and MLflow tracking; write model.pt, history.json, info.json and
    curves.png into ``out`` (swapped in as a whole). Returns the info."""
    cfg = params.train_single
    ckpt_path = checkpoints / f"{job.name}.pt"
    stamp = fingerprint(*job.stamp)
    previous = matching_checkpoint(ckpt_path, stamp)
    run_id = previous["meta"].get("run_id") if previous else None
    optimizer = torch.optim.Adam([p for p in job.model.parameters() if p.requires_grad], lr=cfg.lr)
    tags = {**standard_tags(".", job.inputs), "lofiseg.stage": "train_single", "class": job.info.get("class") or "",
            "supervision": job.info["supervision"]}
    with Tracker(f"{params.tracking.experiment_prefix}-{EXPERIMENT}", job.name, run_id=run_id, tags=tags,
                 enabled=params.tracking.enabled, required=params.tracking.required) as tracker:
        if run_id is None:
            tracker.log_params(job.run_params)

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
            extra = job.epoch_metrics(epoch)
            numeric = {k: v for k, v in {**metrics, **extra}.items()
                       if k != "epoch" and isinstance(v, int | float)}
            tracker.log_metrics(numeric, step=epoch)
            return extra

        trainer = Trainer(job.model, optimizer, job.step, ckpt_path, device=device, amp=cfg.amp,
                          meta={"fingerprint": stamp, "run_id": tracker.run_id})
        if trainer.resume():
            log.info("resuming %s from epoch %d", job.name, trainer.start_epoch + 1)
        history = trainer.fit(job.make_batches, job.epochs, on_epoch_end, desc=job.name)

        info = {**job.info, "epochs": job.epochs, "mlflow_run_id": tracker.run_id,
                "final_train_loss": history[-1]["train_loss"] if history else None}
        model = job.model.cpu().eval()
        with atomic_dir(out) as tmp:
            save_training_outputs(tmp, model, info, history, job.curves, f"train_single {job.name}")
            for name, value in job.extra_files.items():
                atomic_write_json(tmp / name, value)
        log_training_outputs(tracker, out, *job.extra_files)
        tracker.log_model(model, "model", example_input=job.example.numpy())
    ckpt_path.unlink(missing_ok=True)  # the model is in --out now; nothing to resume
    log.info("%s: %d epochs, final train loss %s", job.name, job.epochs, info["final_train_loss"])
    return info


def new_model(params: Params) -> SegmentationModel:
    return build_model(num_classes=2, **params.train_single.model.model_dump())


def regularized_job(params: Params, name: str, positives: Callable[[int], TensorSplit],
                    negatives: Callable[[int], TensorSplit] | None, model: SegmentationModel, *, anneal: bool,
                    finetune: bool, info: dict[str, Any], stamp: tuple[Any, ...], inputs: list[str]) -> Job:
    """The regularized-loss job: the plan of :func:`lofiseg.train.regularized_plan.training_plan`, the images of each
    epoch's size from ``positives(size)`` (and ``negatives(size)`` in negative epochs)."""
    cfg = params.train_single
    schedule = cfg.schedule.loss_schedule(anneal=anneal, negatives=negatives is not None)
    ft_epochs = cfg.finetune.epochs if finetune else 0
    plan = training_plan(schedule, cfg.image_size, cfg.finetune.image_size, ft_epochs, negatives is not None)
    step = RegularizedStep(plan, cfg.schedule.loss())
    augment = [random_flip] if cfg.flip else []

    def make_batches(epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        entry = plan[epoch]
        neg = negatives(entry.image_size) if entry.negatives and negatives is not None else None
        return paired_batches(positives(entry.image_size), neg, cfg.batch_size,
                              epoch_generator(params.seed, epoch), augment)

    def epoch_metrics(epoch: int) -> dict[str, Any]:
        return {**step.epoch_metrics(epoch), "stage": plan[epoch].stage.stage, "phase": plan[epoch].phase}

    schedule_info = {"annealing_epochs": schedule.annealing_epochs, "normal_epochs": schedule.normal_epochs,
                     "negative_epochs": schedule.negative_epochs, "finetune_epochs": ft_epochs,
                     "finetune_image_size": cfg.finetune.image_size if ft_epochs else None,
                     "sigma_start": schedule.sigma_start, "sigma_end": schedule.sigma_end,
                     "sigma_rule": schedule.sigma_rule, "normal_lambda_reg": schedule.normal_lambda_reg,
                     "lambda_neg": schedule.lambda_neg, "volumetric_target": cfg.schedule.volumetric_target,
                     "volumetric_min": cfg.schedule.volumetric_min}
    info = {**info, "supervision": "reg", "image_size": plan[-1].image_size, "channel": 1,
            "schedule": schedule_info}
    example = positives(plan[-1].image_size).images[:1].float().div(255)
    run_params = {"train_single": cfg.model_dump(), "seed": params.seed, **{k: v for k, v in info.items()
                                                                            if k != "schedule"}}
    return Job(name, model, step, make_batches, len(plan), epoch_metrics, (cfg.model_dump(), params.seed, *stamp),
               info, run_params, REG_CURVES, example, inputs, {"schedule.json": [p.as_dict() for p in plan]})


def split_loader(dataset: Dataset, records: list, desc: str) -> Callable[[int], TensorSplit]:
    """``size -> images`` of ``records`` (no masks), decoded once per size."""
    cache: dict[int, TensorSplit] = {}

    def load(size: int) -> TensorSplit:
        if size not in cache:
            cache[size] = load_split(dataset, records, size, with_masks=False, desc=f"{desc} {size}px")
        return cache[size]

    return load


def manifest_sha(root: Path) -> str:
    return file_sha256(root / MANIFEST)


# --- the three modes ----------------------------------------------------------------------------------------

def run_init(params: Params, args: Any, device: torch.device) -> None:
    """``--init``: models/single/init per train_single.init_from."""
    cfg = params.train_single
    source = cfg.init_from
    if source is None:
        with atomic_dir(args.out) as tmp:
            atomic_write_json(tmp / "init.json", {"init_from": None, "kind": "none"})
        log.info("train_single.init_from is null: every class anneals; wrote %s", args.out / "init.json")
        return
    if source in params.web.classes:
        kind, dataset = "class", Dataset(args.data)
        records = require_class_records(dataset, source)
    elif source in params.download.enabled():
        kind, dataset = "dataset", Dataset(args.raw / source)
        records = dataset.split("train")
        if not records:
            raise DatasetFormatError(f"{dataset.root}: train_single.init_from {source!r} names a data set with no "
                                     f"train image")
    else:
        kind = "path"
    init_json = {"init_from": source, "kind": kind}
    if kind == "path":
        path = Path(source)
        loaded, loaded_info = load_bundle(path)
        transfer_weights(new_model(params), loaded, f"train_single.init_from {source!r}")
        with atomic_dir(args.out) as tmp:
            shutil.copyfile(path, tmp / "model.pt")
            atomic_write_json(tmp / "info.json", {"init_from": source, "kind": kind, "source_info": loaded_info,
                                                  "sha256": file_sha256(path)})
            atomic_write_json(tmp / "init.json", init_json)
        log.info("init model %s checked and copied to %s", path, args.out)
        return
    job = regularized_job(
        params, f"init-{source}", split_loader(dataset, records, f"load {source}"), None, new_model(params),
        anneal=True, finetune=False, info={"class": source if kind == "class" else None, "init_from": source,
                                           "kind": kind, "images": len(records)},
        stamp=("init", source, manifest_sha(dataset.root)), inputs=[str(dataset.root)])
    job.extra_files["init.json"] = init_json
    train_job(job, params, args.out, args.checkpoints, device)


def run_regularized(params: Params, args: Any, device: torch.device) -> None:
    """``--class X``: the regularized model of class X (Eq. 6-8), on its images only, never a mask."""
    cfg, cls = params.train_single, args.cls
    dataset = Dataset(args.data)
    records = require_class_records(dataset, cls)
    negatives = None
    neg_records: list = []
    if cfg.negatives and cfg.schedule.negative_epochs > 0:
        neg_records = negative_records(dataset, cls)
        if neg_records:
            negatives = split_loader(dataset, neg_records, f"load negatives of {cls}")
        else:
            log.warning("class %r: no image of another class in %s; training without negatives", cls, args.data)
    init_path = args.init_model / "model.pt" if args.init_model is not None else None
    model = new_model(params)
    init_sha = None
    if init_path is not None and init_path.is_file():
        source, _ = load_bundle(init_path)
        transfer_weights(model, source, str(init_path))
        init_sha = file_sha256(init_path)
        log.info("class %r: weights from %s, no annealing", cls, init_path)
    info = {"class": cls, "init_from": cfg.init_from if init_sha else None,
            "init_model": str(init_path) if init_sha else None, "images": len(records),
            "negative_images": len(neg_records) if negatives is not None else 0}
    job = regularized_job(params, f"{cls}-reg", split_loader(dataset, records, f"load {cls}"), negatives, model,
                          anneal=init_sha is None, finetune=True, info=info,
                          stamp=("reg", cls, manifest_sha(dataset.root), init_sha), inputs=[str(args.data)])
    train_job(job, params, args.out, args.checkpoints, device)


def run_gt(params: Params, args: Any, device: torch.device) -> None:
    """``--class X --gt``: the same network trained with CE on ground truth (mask > 0 -> 1), the paper's gap."""
    cfg, cls = params.train_single, args.cls
    dataset = Dataset(args.data)
    records = require_class_records(dataset, cls)
    missing = [r.id for r in records if not r.has_mask]
    if missing:
        why = (f"{len(missing)} of the {len(records)} train images tagged {cls!r} have no ground truth mask "
               f"(e.g. {missing[0]!r}): no -gt baseline for this class")
        with atomic_dir(args.out) as tmp:
            atomic_write_json(tmp / "info.json", {"class": cls, "supervision": "gt", "skipped": why})
        log.warning("class %r: %s", cls, why)
        return
    size = cfg.finetune.image_size if cfg.finetune.epochs > 0 else cfg.image_size  # the reg model's final size
    split = load_split(dataset, records, size, with_masks=True, desc=f"load {cls} with masks")
    split.masks = gt_labels(split.masks)
    augment = [random_flip] if cfg.flip else []

    def step(net: torch.nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        return cross_entropy_loss(net(batch["image"]), batch["mask"])

    info = {"class": cls, "supervision": "gt", "image_size": size, "channel": 1, "images": len(records)}
    batches = epoch_batches(split, cfg.batch_size, params.seed, augment)
    job = Job(f"{cls}-gt", new_model(params), step, batches, cfg.gt_epochs, lambda epoch: {},
              (cfg.model_dump(), params.seed, "gt", cls, size, manifest_sha(dataset.root)), info,
              {"train_single": cfg.model_dump(), "seed": params.seed, **info}, GT_CURVES,
              split.images[:1].float().div(255), [str(args.data)])
    train_job(job, params, args.out, args.checkpoints, device)


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--init", action="store_true", help="train (or copy) the init_from start model")
    parser.add_argument("--class", dest="cls", help="the web class to train a model for")
    parser.add_argument("--gt", action="store_true", help="the CE baseline on ground truth (with --class)")
    parser.add_argument("--data", type=Path, required=True, help="the web data set (data/web)")
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="data sets for init_from: <set>")
    parser.add_argument("--init-model", type=Path, help="folder of the --init stage's output")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--checkpoints", type=Path, default=Path(".checkpoints/train_single"))
    args = parser.parse_args(argv)
    if args.init == (args.cls is not None):
        parser.error("give exactly one of --init and --class")
    if args.gt and args.init:
        parser.error("--gt goes with --class, not --init")
    params = load_params(args.params)
    if args.cls is not None and args.cls not in params.web.classes:
        raise SystemExit(f"error: --class {args.cls!r} is not in web.classes {list(params.web.classes)}")
    if args.init and params.train_single.init_from is None:
        run_init(params, args, torch.device("cpu"))
        return
    seed_everything(params.seed)
    device = resolve_device(params.train_single.device)
    if args.init:
        run_init(params, args, device)
    elif args.gt:
        run_gt(params, args, device)
    else:
        run_regularized(params, args, device)


if __name__ == "__main__":
    sys.exit(run(main))
