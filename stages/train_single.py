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

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lofiseg.config import Params, load_params
from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import Dataset, DatasetFormatError, dataset_digest, sha256_file
from lofiseg.data.labels import require_class_records
from lofiseg.data.loading import TensorSplit, random_flip, to_float
from lofiseg.models.bundle import load_bundle
from lofiseg.models.factory import SegmentationModel, build_model
from lofiseg.train.batchnorm import recalibrate_batchnorm
from lofiseg.train.loop import epoch_batches, epoch_generator, resolve_device, seed_everything
from lofiseg.train.optim import build_optimizer
from lofiseg.train.regularized_plan import (
    RegularizedTraining,
    gt_labels,
    install_init_model,
    negative_loader,
    split_loader,
    transfer_weights,
)
from lofiseg.train.run import RunIdentity, TrainingRun, write_json_outputs
from lofiseg.train.steps import build_step
from stages.cli import log, run, stage_parser

REG_CURVES = ("train_loss", "loss_sparse_crf", "loss_volumetric", "loss_positional", "loss_negative", "sigma")
GT_CURVES = ("train_loss",)


def new_model(params: Params) -> SegmentationModel:
    return build_model(num_classes=2, **params.train_single.model.model_dump())


def train(params: Params, args: Any, device: torch.device, name: str, model: SegmentationModel, step: Any,
          batches: Callable, epochs: int, evaluate: Callable | None, info: dict[str, Any], stamp: tuple,
          inputs: list[str], example: torch.Tensor, curves: Sequence[str], files: dict | None = None,
          calibration: TensorSplit | None = None) -> None:
    """One tracked, resumable class model run (MLflow experiment ``<prefix>-single-class``) into ``--out``; with
    ``recalibrate_bn`` the BatchNorm statistics are recomputed over ``calibration``'s images before saving."""
    cfg = params.train_single
    identity = RunIdentity(
        f"{params.tracking.experiment_prefix}-single-class", name, fingerprint=(cfg.model_dump(), params.seed, *stamp),
        params={"train_single": cfg.model_dump(), "seed": params.seed,
                **{k: v for k, v in info.items() if k != "schedule"}},
        tags={"lofiseg.stage": "train_single", "class": info.get("class") or "", "supervision": info["supervision"]},
        inputs=inputs)
    optimizer = build_optimizer(params=model.parameters(), lr=cfg.lr, **cfg.optimizer.model_dump())
    with TrainingRun(identity, args.checkpoints / f"{name}.pt", tracking=params.tracking.enabled,
                     tracking_required=params.tracking.required) as training:
        history = training.fit(model, optimizer, step, batches, epochs, evaluate, device=device, **cfg.runner())
        if cfg.recalibrate_bn and calibration is not None:
            info = {**info, "bn_recalibrated": recalibrate_batchnorm(
                model, to_float(calibration.images).to(device), cfg.batch_size, flip=cfg.flip)}
        info = {**info, "epochs": epochs,
                "final_train_loss": history[-1]["train_loss"] if history else None}
        training.write_outputs(args.out, model.cpu().eval(), info, curves, f"train_single {name}", example=example,
                               files=files)
    log.info("%s: %d epochs, final train loss %s", name, epochs, info["final_train_loss"])


def train_regularized(params: Params, args: Any, device: torch.device, name: str,
                      positives: Callable[[int], TensorSplit], negatives: Callable[[int], TensorSplit] | None,
                      model: SegmentationModel, *, anneal: bool, finetune: bool, info: dict[str, Any], stamp: tuple,
                      inputs: list[str], files: dict | None = None) -> None:
    """The regularized loss (Eq. 6-8) on ``positives(size)`` (+ ``negatives(size)`` in negative epochs)."""
    cfg = params.train_single
    schedule = cfg.schedule.loss_schedule(anneal=anneal, negatives=negatives is not None)
    plan = RegularizedTraining.build(schedule, positives, negatives, image_size=cfg.image_size,
                                     finetune_size=cfg.finetune.image_size,
                                     finetune_epochs=cfg.finetune.epochs if finetune else 0,
                                     batch_size=cfg.batch_size, augment=[random_flip] if cfg.flip else [])
    loss = cfg.schedule.loss()
    step = build_step("regularized", plan=plan.plan, loss=loss)
    size = plan.plan[-1].image_size
    info = {**info, "supervision": "reg", "image_size": size, "channel": 1, "schedule": plan.record(loss)}
    train(params, args, device, name, model, step,
          lambda epoch: plan.batches(epoch, epoch_generator(params.seed, epoch)), len(plan.plan),
          lambda epoch, metrics: {**step.epoch_metrics(epoch), **plan.epoch_info(epoch)}, info, stamp, inputs,
          positives(size).images[:1], REG_CURVES, {"schedule.json": [p.as_dict() for p in plan.plan], **(files or {})},
          calibration=positives(size))


def run_init(params: Params, args: Any, device: torch.device) -> None:
    """``--init``: models/single/init per train_single.init_from."""
    source = params.train_single.init_from
    if source is None:
        write_json_outputs(args.out, {"init.json": {"init_from": None, "kind": "none"}})
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
        install_init_model(source, args.out, new_model(params), f"train_single.init_from {source!r}")
        return
    train_regularized(params, args, device, f"init-{source}", split_loader(dataset, records, f"load {source}"),
                      None, new_model(params), anneal=True, finetune=False,
                      info={"class": source if kind == "class" else None, "init_from": source, "kind": kind,
                            "images": len(records)},
                      stamp=("init", source, dataset_digest(dataset.root)), inputs=[str(dataset.root)],
                      files={"init.json": {"init_from": source, "kind": kind}})


def run_regularized(params: Params, args: Any, device: torch.device) -> None:
    """``--class X``: the regularized model of class X (Eq. 6-8), on its images only, never a mask."""
    cfg, cls = params.train_single, args.cls
    dataset = Dataset(args.data)
    records = require_class_records(dataset, cls)
    negatives, negative_count = None, 0
    if cfg.negatives and cfg.schedule.negative_epochs > 0:
        negatives, negative_count = negative_loader(dataset, cls)
    init_path = args.init_model / "model.pt" if args.init_model is not None else None
    model = new_model(params)
    init_sha = None
    if init_path is not None and init_path.is_file():
        transfer_weights(model, load_bundle(init_path)[0], str(init_path))
        init_sha = sha256_file(init_path)
        log.info("class %r: weights from %s, no annealing", cls, init_path)
    info = {"class": cls, "init_from": cfg.init_from if init_sha else None,
            "init_model": str(init_path) if init_sha else None, "images": len(records),
            "negative_images": negative_count}
    train_regularized(params, args, device, f"{cls}-reg", split_loader(dataset, records, f"load {cls}"), negatives,
                      model, anneal=init_sha is None, finetune=True, info=info,
                      stamp=("reg", cls, dataset_digest(dataset.root), init_sha), inputs=[str(args.data)])


def run_gt(params: Params, args: Any, device: torch.device) -> None:
    """``--class X --gt``: the same network trained with CE on ground truth (mask > 0 -> 1), the paper's gap."""
    cfg, cls = params.train_single, args.cls
    dataset = Dataset(args.data)
    records = require_class_records(dataset, cls)
    missing = [r.id for r in records if not r.has_mask]
    if missing:
        why = (f"{len(missing)} of the {len(records)} train images tagged {cls!r} have no ground truth mask "
               f"(e.g. {missing[0]!r}): no -gt baseline for this class")
        write_json_outputs(args.out, {"info.json": {"class": cls, "supervision": "gt", "skipped": why}})
        log.warning("class %r: %s", cls, why)
        return
    size = cfg.finetune.image_size if cfg.finetune.epochs > 0 else cfg.image_size  # the reg model's final size
    split = cached_load_split(dataset, records, size, with_masks=True, desc=f"load {cls} with masks")
    split.masks = gt_labels(split.masks)
    batches = epoch_batches(split, cfg.batch_size, params.seed, [random_flip] if cfg.flip else [])
    info = {"class": cls, "supervision": "gt", "image_size": size, "channel": 1, "images": len(records)}
    train(params, args, device, f"{cls}-gt", new_model(params), build_step("ce"), batches, cfg.gt_epoch_count(),
          None, info, ("gt", cls, size, dataset_digest(dataset.root)), [str(args.data)], split.images[:1], GT_CURVES,
          calibration=split)


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
    {"init": run_init, "gt": run_gt, "reg": run_regularized}[
        "init" if args.init else "gt" if args.gt else "reg"](params, args, device)


if __name__ == "__main__":
    sys.exit(run(main))
