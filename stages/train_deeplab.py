"""DVC stage `train_deeplab@<supervision>`: one multi-class DeepLab on pseudo ground truth, or on ground truth.

Veksler Sec. 4.3: a multi-class segmentation CNN trained with CE (ignore 255) on the union of the pseudo
ground truth (``--supervision pseudo``, ``--data data/pseudo_gt``), with random horizontal flips, Gaussian blur
and rescaling (first, 2x2 mosaics of four images with ``mosaic.<supervision>``: beyond the paper), Adam at
``train_deeplab.lr``, constant or decayed by DeepLab's "poly" policy (``lr_policy``; the paper follows DeepLab's
training "except our initial learning rate is 0.001"). ``--supervision gt`` trains the same network on the ground
truth of ``train_deeplab.gt_dataset`` under ``--data`` (masks remapped by class name to the label space
``Params.semantic_classes()``): the upper bound. ``--supervision web_gt`` trains it on the web images' own
ground truth where they have it (synthetic web sets): the pseudo labels' ceiling, which separates the loss due
to pseudo-label quality from the loss due to the web images being another domain; without masks the stage
writes only an info.json saying why it skipped. Validation mIoU every epoch on the data's val split (against
pseudo labels for ``pseudo``); a data set without a val split lends 10% of its train images (by content hash).

Checkpoints every epoch outside the DVC outs (``--checkpoints``) and resumes after a kill. Runs as one process
or under ``torchrun --nproc_per_node N -m stages.train_deeplab ...`` (DDP, see :mod:`lofiseg.train.distributed`):
each rank trains on its slice of every global batch, rank 0 alone writes checkpoints, outputs and MLflow.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lofiseg.atomic import atomic_dir, atomic_write_json
from lofiseg.config import Params, ParamsError, TrainDeeplabParams, load_params
from lofiseg.data.format import IGNORE, Dataset, DatasetFormatError, Record
from lofiseg.data.labels import CLASSES_FILE, read_class_names, remap_labels, web_class
from lofiseg.data.loading import (
    Augment,
    TensorSplit,
    iterate_batches,
    load_split,
    random_blur,
    random_flip,
    random_mosaic,
    random_rescale,
)
from lofiseg.losses.ce import cross_entropy_loss
from lofiseg.metrics.semantic import ConfusionMeter
from lofiseg.models.bundle import load_bundle
from lofiseg.models.factory import build_model
from lofiseg.provenance import standard_tags
from lofiseg.track.tracker import Tracker
from lofiseg.train.distributed import (
    DistContext,
    DistributedTrainer,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    check_batch_size,
    distributed_session,
    shard_batches,
    wrap_model,
)
from lofiseg.train.loop import (
    epoch_batches,
    fingerprint,
    load_checkpoint,
    poly_lr,
    resolve_device,
    seed_everything,
    set_lr,
)
from lofiseg.viz.images import colorize_labels, image_grid, save_png
from stages.cli import log, run, stage_parser
from stages.outputs import log_training_outputs, save_training_outputs

SUPERVISIONS = ("pseudo", "gt", "web_gt")
CURVE_KEYS = ("train_loss", "val_miou", "val_pixel_acc")
VAL_HOLDOUT = 0.1  # fraction of train lent to validation when a data set has no val split
GRID_SAMPLES = 6


class NoWebTruth(Exception):
    """The web set has no ground truth: the web_gt ceiling is skipped, with the reason in info.json."""


@dataclass
class Supervision:
    """What a run trains and validates on, in the label space ``classes``."""

    train: TensorSplit
    val: TensorSplit
    val_source: str  # "val split" or how the holdout was made
    dataset: Path



def tensor_digest(*splits: TensorSplit) -> str:
    """sha256 of exactly what training sees: ids, images and masks of the splits."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update("\n".join(split.ids).encode())
        digest.update(split.images.numpy().tobytes())
        if split.masks is not None:
            digest.update(split.masks.numpy().tobytes())
    return digest.hexdigest()


def split_records(data: Dataset, keep: Callable[[Record], bool] = lambda r: True,
                  ) -> tuple[list[Record], list[Record], str]:
    """(train, val, how val was chosen) among the records ``keep`` accepts: the val split, else the first 10% of
    train in (sha256, id) order."""
    train, val = [r for r in data.split("train") if keep(r)], [r for r in data.split("val") if keep(r)]
    if not train:
        raise DatasetFormatError(f"{data.root}: no sample in the train split")
    if val:
        return train, val, "val split"
    if len(train) < 2:
        log.warning("%s: no val split and one train image: validating on it", data.root)
        return train, train, "train (no val split)"
    ordered = sorted(train, key=lambda r: (r.sha256, r.id))
    count = max(1, round(VAL_HOLDOUT * len(train)))
    held = {r.id for r in ordered[:count]}
    log.warning("%s: no val split; holding out %d of %d train images for validation", data.root, count, len(train))
    return ([r for r in train if r.id not in held], [r for r in train if r.id in held],
            f"{count} of {len(train)} train images held out (no val split)")


def check_labels(split: TensorSplit, num_classes: int, where: Path) -> None:
    values = torch.unique(split.masks)
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.numel():
        raise DatasetFormatError(f"{where}: mask values {bad.tolist()[:10]} are outside the label space "
                                 f"0..{num_classes - 1} and {IGNORE} (ignore)")


def dataset_classes(root: Path, name: str, params: Params) -> list[str]:
    """The label space of a ground-truth data set: its classes.json, else what its params entry implies."""
    declared = read_class_names(root)
    if declared is not None:
        return declared
    try:
        return params.dataset_classes(name)
    except ValueError as err:
        raise DatasetFormatError(f"{root}: {err}, or add {CLASSES_FILE} (a JSON list, id order, background "
                                 f"first)") from None


def load_supervision(supervision: str, data_dir: Path, params: Params) -> Supervision:
    """Train and val splits at ``train_deeplab.image_size`` with masks in ``params.semantic_classes()`` ids."""
    cfg, classes = params.train_deeplab, params.semantic_classes()
    if supervision == "pseudo":
        root = data_dir
        declared = read_class_names(root)
        if declared is not None and declared != classes:
            raise DatasetFormatError(f"{root / CLASSES_FILE}: label space {declared} differs from params' "
                                     f"{classes}; run pseudo_label and pseudo_gt again")
        source = classes
    elif supervision == "gt":
        root = data_dir / cfg.gt_dataset
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: train_deeplab.gt_dataset {cfg.gt_dataset!r} is not under {data_dir}")
        source = dataset_classes(root, cfg.gt_dataset, params)
        if not set(source[1:]) & set(classes[1:]):
            raise DatasetFormatError(f"{root}: none of its classes {source[1:]} is in web.classes {classes[1:]}")
    elif supervision == "web_gt":
        return load_web_truth(data_dir, params)
    else:
        raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    data = Dataset(root)
    train_records, val_records, val_source = split_records(data)
    splits = [load_split(data, records, cfg.image_size, desc=f"load {name}")
              for records, name in ((train_records, "train"), (val_records, "val"))]
    for split in splits:
        check_labels(split, len(source), root)
        if source != classes:
            split.masks = remap_labels(split.masks, source, classes)
    return Supervision(splits[0], splits[1], val_source, root)


def load_web_truth(root: Path, params: Params) -> Supervision:
    """The web images with their ground-truth masks as labels: each image's object (mask 1) gets its class id,
    the rest (confusers included) background, 255 stays ignore. The pseudo labels' ceiling: the same images
    with perfect labels. Raises :class:`NoWebTruth` when the web set has no masks (downloaded images)."""
    cfg, classes = params.train_deeplab, params.semantic_classes()
    data = Dataset(root)

    def labelled(record: Record) -> bool:
        return record.has_mask and web_class(record, params.web.classes) is not None

    if not any(labelled(r) for r in data.split("train")):
        raise NoWebTruth(f"{root}: no train image of web classes {list(params.web.classes)} has a ground-truth mask")
    train_records, val_records, val_source = split_records(data, labelled)
    splits = []
    for records, name in ((train_records, "train"), (val_records, "val")):
        split = load_split(data, records, cfg.image_size, desc=f"load {name}")
        check_labels(split, 2, root)  # binary object masks: 0, 1 and 255 only
        ids = torch.tensor([classes.index(web_class(r, params.web.classes)) for r in records], dtype=split.masks.dtype)
        split.masks = torch.where(split.masks == 1, ids[:, None, None], split.masks)
        splits.append(split)
    return Supervision(splits[0], splits[1], val_source, root)


@torch.no_grad()
def predict_labels(model: torch.nn.Module, split: TensorSplit, batch_size: int,
                   device: torch.device) -> torch.Tensor:
    """Argmax labels (N, S, S) uint8 of ``model`` (in eval mode) on ``split``, on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(batch["image"].to(device)).argmax(1).to(torch.uint8).cpu()
           for batch in iterate_batches(split, batch_size)]
    model.train(was_training)
    return torch.cat(out)


def semantic_eval(model: torch.nn.Module, split: TensorSplit, num_classes: int, batch_size: int,
                  device: torch.device, ctx: DistContext) -> dict[str, float | list[float]]:
    """mIoU / per-class IoU / pixel accuracy over ``split``; each rank scores a shard, the counts are summed."""
    meter = ConfusionMeter(num_classes, ignore_index=IGNORE)
    shard = list(range(ctx.rank, len(split), ctx.world_size))
    if shard:
        part = split.subset(shard)
        meter.update(predict_labels(model, part, batch_size, device), part.masks)
    meter.confusion = all_reduce_sum(meter.confusion.to(device), ctx).cpu()
    return meter.compute()


def val_metrics(scores: dict[str, float | list[float]], classes: Sequence[str]) -> dict[str, float]:
    """Flat metrics: miou, pixel_acc and iou_<class> (classes absent from labels and predictions left out)."""
    out = {"miou": float(scores["miou"]), "pixel_acc": float(scores["pixel_acc"])}
    out |= {f"iou_{name}": float(v) for name, v in zip(classes, scores["iou"], strict=True) if not math.isnan(v)}
    return out


def augment_settings(cfg: TrainDeeplabParams, supervision: str) -> dict[str, Any]:
    """The training augmentation of ``supervision``'s model, as recorded in its info.json."""
    return {"mosaic": getattr(cfg.mosaic, supervision), "flip": cfg.flip, "blur": cfg.blur,
            "rescale": list(cfg.rescale) if cfg.rescale else None}


def augmentations(settings: dict[str, Any]) -> list[Augment]:
    """:func:`augment_settings` as the batch transforms, in order: mosaic, flip, blur, rescale."""
    out: list[Augment] = [partial(random_mosaic, prob=settings["mosaic"])] if settings["mosaic"] else []
    out += [random_flip] if settings["flip"] else []
    out += [random_blur] if settings["blur"] else []
    if settings["rescale"]:
        low, high = settings["rescale"]
        out.append(partial(random_rescale, low=low, high=high))
    return out


def qualitative_grid(split: TensorSplit, pred: torch.Tensor, count: int) -> np.ndarray:
    rows = [[split.images[i].permute(1, 2, 0).numpy(), colorize_labels(split.masks[i].numpy()),
             colorize_labels(pred[i].numpy())] for i in range(min(count, len(split)))]
    return image_grid(rows, col_titles=["image", "label", "prediction"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--supervision", required=True, choices=SUPERVISIONS)
    parser.add_argument("--data", type=Path, required=True,
                        help="pseudo: the pseudo-GT data set; gt: the folder holding train_deeplab.gt_dataset; "
                             "web_gt: the web images (their ground truth: the pseudo labels' ceiling)")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the model")
    parser.add_argument("--checkpoints", type=Path, default=Path(".checkpoints/train_deeplab"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    with distributed_session(resolve_device(params.train_deeplab.device)) as (ctx, device):
        train_deeplab(args, params, ctx, device)


def train_deeplab(args: argparse.Namespace, params: Params, ctx: DistContext, device: torch.device) -> None:
    cfg, classes = params.train_deeplab, params.semantic_classes()
    name = f"deeplab-{args.supervision}"
    try:
        check_batch_size(cfg.batch_size, ctx, "train_deeplab.batch_size")
    except ValueError as err:
        raise ParamsError(f"{args.params}: {err}") from None
    seed_everything(params.seed)
    try:
        data = load_supervision(args.supervision, args.data, params)
    except NoWebTruth as why:
        log.warning("%s; skipping the web_gt ceiling", why)
        if ctx.is_main:
            with atomic_dir(args.out) as tmp:
                atomic_write_json(tmp / "info.json", {"supervision": args.supervision, "skipped": str(why)})
        return
    model = build_model(num_classes=len(classes), **cfg.model.model_dump())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    ckpt_path = args.checkpoints / f"{args.supervision}.pt"
    stamp = fingerprint(cfg.model_dump(), params.seed, args.supervision, classes, tensor_digest(data.train, data.val))
    previous = load_checkpoint(ckpt_path)
    stale = previous is not None and previous.get("meta", {}).get("fingerprint") != stamp
    barrier(ctx)  # every rank has read the checkpoint before rank 0 may delete it
    if stale:
        log.warning("%s: made from other params or data; starting over", ckpt_path)
        if ctx.is_main:
            ckpt_path.unlink()
        previous = None
    barrier(ctx)
    run_id = previous["meta"].get("run_id") if previous else None

    tags = {**standard_tags(".", [str(args.data)]), "lofiseg.stage": "train_deeplab",
            "supervision": args.supervision, "world_size": ctx.world_size}
    enabled = params.tracking.enabled and ctx.is_main
    with Tracker(f"{params.tracking.experiment_prefix}-semantic", name, run_id=run_id, tags=tags, enabled=enabled,
                 required=params.tracking.required) as tracker:
        if run_id is None:
            tracker.log_params({"train_deeplab": cfg.model_dump(), "supervision": args.supervision,
                                "seed": params.seed, "device": device.type, "classes": ",".join(classes),
                                "val_source": data.val_source})
        net: torch.nn.Module = model  # the DDP wrapper once resumed: it shares the model's parameters

        def epoch_lr(epoch: int) -> float:
            return poly_lr(cfg.lr, epoch, cfg.epochs, cfg.poly_power) if cfg.lr_policy == "poly" else cfg.lr

        def step(_model: torch.nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
            set_lr(optimizer, epoch_lr(epoch))
            # the slice's mean CE times W n_r / N: DDP's gradient average is the global batch's (distributed.py)
            return cross_entropy_loss(net(batch["image"]), batch["mask"]) * batch["loss_weight"]

        trainer = DistributedTrainer(model, optimizer, step, ckpt_path, device=device, amp=cfg.amp,
                                     meta={"fingerprint": stamp, "run_id": tracker.run_id}, ctx=ctx)
        if trainer.resume():
            log.info("resuming %s from epoch %d", name, trainer.start_epoch + 1)
        net = wrap_model(model, ctx, device)  # after resume: DDP starts from rank 0's (= everyone's) weights

        def validate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
            broadcast_buffers(model, ctx)  # BatchNorm statistics drift per rank; evaluate rank 0's model
            local = torch.tensor([metrics["train_loss"], metrics["images_per_s"]], dtype=torch.float64)
            summed = all_reduce_sum(local.to(device), ctx).cpu()
            scores = val_metrics(semantic_eval(model, data.val, len(classes), cfg.batch_size, device, ctx), classes)
            out = {"train_loss": float(summed[0]) / ctx.world_size, "images_per_s": float(summed[1]),
                   "lr": epoch_lr(epoch),
                   "val_miou": scores["miou"], "val_pixel_acc": scores["pixel_acc"]}
            tracker.log_metrics({**metrics, **out, **{f"val_{k}": v for k, v in scores.items()}}, step=epoch)
            return out

        batches = epoch_batches(data.train, cfg.batch_size, params.seed,
                                augmentations(augment_settings(cfg, args.supervision)))
        history = trainer.fit(
            lambda epoch: shard_batches(batches(epoch), ctx),
            cfg.epochs, validate, desc=name)
        broadcast_buffers(model, ctx)
        barrier(ctx)
        if ctx.is_main:
            write_outputs(args, params, data, model, history, tracker, device, ctx)
    barrier(ctx)
    if ctx.is_main:
        ckpt_path.unlink(missing_ok=True)  # the model is in --out now; nothing to resume


def write_outputs(args: argparse.Namespace, params: Params, data: Supervision, model: torch.nn.Module,
                  history: list[dict[str, float]], tracker: Tracker, device: torch.device, ctx: DistContext) -> None:
    """Rank 0: model.pt, history.json, info.json, curves.png, val_grid.png, and their MLflow copies."""
    cfg, classes = params.train_deeplab, params.semantic_classes()
    pred = predict_labels(model, data.val, cfg.batch_size, device)
    meter = ConfusionMeter(len(classes), ignore_index=IGNORE)
    meter.update(pred, data.val.masks)
    scores = meter.compute()
    info = {"task": "semantic", "supervision": args.supervision, "classes": classes, "image_size": cfg.image_size,
            "epochs": cfg.epochs, "augment": augment_settings(cfg, args.supervision),
            "data": str(data.dataset), "val_source": data.val_source,
            "world_size": ctx.world_size, "mlflow_run_id": tracker.run_id,
            "val": {"miou": scores["miou"], "pixel_acc": scores["pixel_acc"],
                    "iou": {c: None if math.isnan(v) else v for c, v in zip(classes, scores["iou"], strict=True)}}}
    save_training_outputs(args.out, model, info, history, CURVE_KEYS, f"train_deeplab {args.supervision}")
    save_png(args.out / "val_grid.png", qualitative_grid(data.val, pred, GRID_SAMPLES))

    tracker.log_metrics({f"final_val_{k}": v for k, v in val_metrics(scores, classes).items()}, step=cfg.epochs)
    log_training_outputs(tracker, args.out, "val_grid.png")
    exported, _ = load_bundle(args.out / "model.pt")  # plain BatchNorm even when trained with SyncBatchNorm
    tracker.log_model(exported, "model", example_input=data.val.images[:1].float().div(255).numpy())
    log.info("%s: val mIoU %.4f (%s) -> %s", args.supervision, scores["miou"], data.val_source, args.out)


if __name__ == "__main__":
    sys.exit(run(main))
