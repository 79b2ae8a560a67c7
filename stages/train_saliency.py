"""DVC stage `train_saliency@<loss>-<rate>`: one salient-object model on one noisy copy of the data.

Trains with CE, class-agnostic CE or CAS (CAS paper Eq. 1) on the train split of ``--data``, validates on its
(clean) val split every epoch, checkpoints every epoch outside the DVC outs (``--checkpoints``) and resumes
from there after a kill. For the class-agnostic losses the saliency channel is chosen by correlation with
ground truth on the validation split (Sec. 4.2) and stored with the model.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lofiseg.config import load_params, rate_key
from lofiseg.data.format import Dataset
from lofiseg.data.loading import TensorSplit, load_split, random_flip
from lofiseg.infer.predict import predict_probs, saliency_channel
from lofiseg.losses import build_loss
from lofiseg.metrics.saliency import SaliencyMeter
from lofiseg.models.channel import ChannelSelected
from lofiseg.models.factory import build_model
from lofiseg.provenance import standard_tags
from lofiseg.track.tracker import Tracker
from lofiseg.train.loop import (
    Trainer,
    epoch_batches,
    fingerprint,
    matching_checkpoint,
    resolve_device,
    seed_everything,
)
from lofiseg.viz.images import colorize_labels, image_grid, save_png
from stages.cli import log, run, stage_parser
from stages.outputs import log_training_outputs, save_training_outputs

CURVE_KEYS = ("train_loss", "val_fbeta_adaptive", "val_mae")


def saliency_scores(probs: torch.Tensor, masks: torch.Tensor, channel: int) -> dict[str, float]:
    meter = SaliencyMeter()
    for pred, gt in zip(probs[:, channel].numpy(), masks.numpy(), strict=True):
        meter.update(pred, gt)
    return meter.compute()



def qualitative_grid(split: TensorSplit, probs: torch.Tensor, channel: int, count: int) -> np.ndarray:
    rows = []
    for i in range(min(count, len(split))):
        image = split.images[i].permute(1, 2, 0).numpy()
        rows.append([image, colorize_labels(split.masks[i].numpy()),
                     probs[i, channel].numpy()])  # float: drawn as a grey score map
    return image_grid(rows, col_titles=["image", "ground truth", "prediction"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--loss", required=True, help="ce | cace | cas")
    parser.add_argument("--rate", type=float, required=True, help="noise rate of --data (for the record)")
    parser.add_argument("--data", type=Path, required=True, help="data set with train/val splits")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the model")
    parser.add_argument("--checkpoints", type=Path, default=Path(".checkpoints/train_saliency"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.train_saliency
    if args.loss not in cfg.losses:
        raise SystemExit(f"error: --loss {args.loss!r} is not in train_saliency.losses {cfg.losses}")
    name = f"{args.loss}-{rate_key(args.rate)}"

    seed_everything(params.seed)
    device = resolve_device(cfg.device)
    data = Dataset(args.data)
    train = load_split(data, data.split("train"), cfg.image_size, desc="load train")
    val = load_split(data, data.split("val"), cfg.image_size, desc="load val")
    model = build_model(num_classes=2, **cfg.model.model_dump())
    loss_fn = build_loss(args.loss, **({"alpha": cfg.alpha} if args.loss == "cas" else {}))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)

    ckpt_path = args.checkpoints / f"{name}.pt"
    stamp = fingerprint(cfg.model_dump(), params.seed, args.loss, args.rate,
                        hashlib.sha256((args.data / "manifest.csv").read_bytes()).hexdigest())
    previous = matching_checkpoint(ckpt_path, stamp)
    run_id = previous["meta"].get("run_id") if previous else None

    tags = {**standard_tags(".", [str(args.data)]), "lofiseg.stage": "train_saliency", "loss": args.loss,
            "noise_rate": rate_key(args.rate)}
    with Tracker(f"{params.tracking.experiment_prefix}-saliency", name, run_id=run_id, tags=tags,
                 enabled=params.tracking.enabled, required=params.tracking.required) as tracker:
        if run_id is None:
            tracker.log_params({"train_saliency": cfg.model_dump(), "loss": args.loss, "noise_rate": args.rate,
                                "seed": params.seed, "device": str(device)})

        def step(net: torch.nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
            return loss_fn(net(batch["image"]), batch["mask"])

        def validate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
            probs = predict_probs(model, val, device=device)
            channel = saliency_channel(args.loss, probs, val.masks)
            scores = saliency_scores(probs, val.masks, channel)
            out = {f"val_{k}": v for k, v in scores.items()} | {"val_channel": channel}
            tracker.log_metrics({**metrics, **out}, step=epoch)
            return out

        trainer = Trainer(model, optimizer, step, ckpt_path, device=device, amp=cfg.amp,
                          meta={"fingerprint": stamp, "run_id": tracker.run_id})
        if trainer.resume():
            log.info("resuming %s from epoch %d", name, trainer.start_epoch + 1)
        augment = [random_flip] if cfg.flip else []
        history = trainer.fit(
            epoch_batches(train, cfg.batch_size, params.seed, augment), cfg.epochs, validate, desc=name)

        probs = predict_probs(model, val, device=device)
        channel = saliency_channel(args.loss, probs, val.masks)
        info = {"task": "saliency", "loss": args.loss, "noise_rate": args.rate, "channel": channel,
                "image_size": cfg.image_size, "epochs": cfg.epochs, "mlflow_run_id": tracker.run_id,
                "val": saliency_scores(probs, val.masks, channel)}
        save_training_outputs(args.out, model, info, history, CURVE_KEYS, f"train_saliency {name}")
        save_png(args.out / "val_grid.png", qualitative_grid(val, probs, channel, 6))

        tracker.set_tags({"channel": channel})
        tracker.log_metrics({f"final_val_{k}": v for k, v in info["val"].items()}, step=cfg.epochs)
        log_training_outputs(tracker, args.out, "val_grid.png")
        tracker.log_model(ChannelSelected(model, channel).eval(), "model",
                          example_input=val.images[:1].float().div(255).numpy())
    ckpt_path.unlink(missing_ok=True)  # the model is in --out now; nothing to resume
    log.info("%s: val %s", name, json.dumps(info["val"]))


if __name__ == "__main__":
    sys.exit(run(main))
