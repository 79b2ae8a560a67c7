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
writes only an info.json saying why it skipped. Validation mIoU every ``validate_every`` epochs and the last
on the data's val split (against pseudo labels for ``pseudo``); a data set without a val split lends 10% of
its train images (by content hash).

With ``train_deeplab.enabled: false`` (single-class models only) every supervision writes only that info.json.

Checkpoints every epoch outside the DVC outs (``--checkpoints``) and resumes after a kill. Runs as one process
or under ``torchrun --nproc_per_node N -m stages.train_deeplab ...`` (DDP, see :mod:`lofiseg.train.distributed`):
each rank trains on its slice of every global batch, rank 0 alone writes checkpoints, outputs and MLflow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from lofiseg.config import Params, ParamsError, TrainDeeplabParams, load_params
from lofiseg.data.augment import augment_settings, augmentations
from lofiseg.data.supervision import SUPERVISIONS, NoWebTruth, Supervision, load_supervision, tensor_digest
from lofiseg.metrics.semantic import iou_report, semantic_scores
from lofiseg.models.factory import build_model
from lofiseg.train.distributed import DistContext, check_batch_size, distributed_session
from lofiseg.train.loop import epoch_batches, poly_lr, resolve_device, seed_everything
from lofiseg.train.optim import build_optimizer
from lofiseg.train.run import RunIdentity, TrainingRun, periodic, write_json_outputs
from lofiseg.train.steps import build_step
from lofiseg.train.validation import argmax_labels, semantic_eval, val_metrics
from lofiseg.viz.images import colorize_labels, qualitative_grid
from stages.cli import log, run, stage_parser

CURVE_KEYS = ("train_loss", "val_miou", "val_pixel_acc")
GRID_SAMPLES = 6


def supervision_data(supervision: str, data_dir: Path, params: Params) -> Supervision:
    """:func:`lofiseg.data.supervision.load_supervision` in ``params.semantic_classes()`` ids."""
    cfg = params.train_deeplab
    return load_supervision(supervision, data_dir, params.semantic_classes(), list(params.web.classes),
                            cfg.image_size, cfg.gt_dataset, params.dataset_classes)


def supervision_augment(cfg: TrainDeeplabParams, supervision: str) -> dict:
    """The training augmentation of ``supervision``'s model, as recorded in its info.json."""
    return augment_settings(getattr(cfg.mosaic, supervision), cfg.flip, cfg.blur, cfg.rescale)


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
    if not cfg.enabled:
        log.warning("train_deeplab.enabled is false: no multi-class DeepLab (%s)", args.supervision)
        if ctx.is_main:
            write_json_outputs(args.out, {"info.json": {"supervision": args.supervision,
                                                        "skipped": "train_deeplab.enabled is false"}})
        return
    try:
        check_batch_size(cfg.batch_size, ctx, "train_deeplab.batch_size")
    except ValueError as err:
        raise ParamsError(f"{args.params}: {err}") from None
    seed_everything(params.seed)
    try:
        data = supervision_data(args.supervision, args.data, params)
    except NoWebTruth as why:
        log.warning("%s; skipping the web_gt ceiling", why)
        if ctx.is_main:
            write_json_outputs(args.out, {"info.json": {"supervision": args.supervision, "skipped": str(why)}})
        return
    model = build_model(num_classes=len(classes), **cfg.model.model_dump())
    optimizer = build_optimizer(params=model.parameters(), lr=cfg.lr, **cfg.optimizer.model_dump())
    identity = RunIdentity(
        f"{params.tracking.experiment_prefix}-semantic", f"deeplab-{args.supervision}",
        fingerprint=(cfg.model_dump(), params.seed, args.supervision, classes, tensor_digest(data.train, data.val)),
        params={"train_deeplab": cfg.model_dump(), "supervision": args.supervision, "seed": params.seed,
                "device": device.type, "classes": ",".join(classes), "val_source": data.val_source},
        tags={"lofiseg.stage": "train_deeplab", "supervision": args.supervision, "world_size": ctx.world_size},
        inputs=[str(args.data)])

    with TrainingRun(identity, args.checkpoints / f"{args.supervision}.pt", tracking=params.tracking.enabled,
                     tracking_required=params.tracking.required, ctx=ctx) as training:
        def validate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
            scores = val_metrics(semantic_eval(model, data.val, len(classes), cfg.batch_size, device, ctx), classes)
            training.log_metrics({f"val_{k}": v for k, v in scores.items()}, step=epoch)
            return {"val_miou": scores["miou"], "val_pixel_acc": scores["pixel_acc"]}

        def epoch_lr(epoch: int) -> float:
            return poly_lr(cfg.lr, epoch, cfg.epochs, cfg.poly_power) if cfg.lr_policy == "poly" else cfg.lr

        augment = supervision_augment(cfg, args.supervision)
        training.fit(model, optimizer, build_step("ce"), epoch_batches(data.train, cfg.batch_size, params.seed,
                                                                        augmentations(augment)),
                     cfg.epochs, periodic(validate, cfg.validate_every, cfg.epochs), device=device,
                     **cfg.runner(), lr=epoch_lr, desc=identity.name)
        if ctx.is_main:
            pred = argmax_labels(model, data.val, cfg.batch_size, device)
            scores = semantic_scores(pred, data.val.masks, len(classes))
            info = {"task": "semantic", "supervision": args.supervision, "classes": classes,
                    "image_size": cfg.image_size, "epochs": cfg.epochs, "augment": augment,
                    "data": str(data.dataset), "val_source": data.val_source, "world_size": ctx.world_size,
                    "val": iou_report(scores, classes)}
            grid = qualitative_grid(data.val.images[:GRID_SAMPLES].permute(0, 2, 3, 1).numpy(), {
                "label": [colorize_labels(m) for m in data.val.masks[:GRID_SAMPLES].numpy()],
                "prediction": [colorize_labels(p) for p in pred[:GRID_SAMPLES].numpy()]})
            training.write_outputs(args.out, model, info, CURVE_KEYS, f"train_deeplab {args.supervision}",
                                   example=data.val.images[:1], pictures={"val_grid.png": grid},
                                   final_val=val_metrics(scores, classes))
            log.info("%s: val mIoU %.4f (%s) -> %s", args.supervision, scores["miou"], data.val_source, args.out)


if __name__ == "__main__":
    sys.exit(run(main))
