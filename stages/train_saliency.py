"""DVC stage `train_saliency@<loss>-<rate>`: one salient-object model on one noisy copy of the data.

Trains with CE, class-agnostic CE or CAS (CAS paper Eq. 1) on the train split of ``--data``, validates on its
(clean) val split every ``validate_every`` epochs and the last, checkpoints every epoch outside the DVC outs (``--checkpoints``) and resumes
from there after a kill. For the class-agnostic losses the saliency channel is chosen by correlation with
ground truth on the validation split (Sec. 4.2) and stored with the model.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lofiseg.config import load_params, rate_key
from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import Dataset, dataset_digest
from lofiseg.data.loading import random_flip
from lofiseg.infer.predict import predict_probs, saliency_channel
from lofiseg.metrics.saliency import SaliencyMeter
from lofiseg.models.channel import ChannelSelected
from lofiseg.models.factory import build_model
from lofiseg.train.loop import epoch_batches, resolve_device, seed_everything
from lofiseg.train.optim import build_optimizer
from lofiseg.train.run import RunIdentity, TrainingRun, periodic
from lofiseg.train.steps import build_step
from lofiseg.viz.images import colorize_labels, qualitative_grid
from stages.cli import log, run, stage_parser

CURVE_KEYS = ("train_loss", "val_fbeta_adaptive", "val_mae")
GRID_SAMPLES = 6


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--loss", required=True, help="ce | cace | cas")
    parser.add_argument("--rate", type=float, required=True, help="noise rate of --data (for the record)")
    parser.add_argument("--data", type=Path, required=True, help="data set with train/val splits")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the model")
    parser.add_argument("--checkpoints", type=Path, default=Path(".checkpoints/train_saliency"))
    parser.add_argument("--variant", default="", help="names a model on other data (audited: train_audited@<rate>)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.train_saliency
    if args.loss not in cfg.losses and not args.variant:
        raise SystemExit(f"error: --loss {args.loss!r} is not in train_saliency.losses {cfg.losses}")
    name = "-".join([args.loss, rate_key(args.rate), *([args.variant] if args.variant else [])])

    seed_everything(params.seed)
    device = resolve_device(cfg.device)
    data = Dataset(args.data)
    train = cached_load_split(data, data.split("train"), cfg.image_size, desc="load train")
    val = cached_load_split(data, data.split("val"), cfg.image_size, desc="load val")
    model = build_model(num_classes=2, **cfg.model.model_dump())
    step = build_step(args.loss, **({"alpha": cfg.alpha} if args.loss == "cas" else {}))
    optimizer = build_optimizer(params=model.parameters(), lr=cfg.lr, **cfg.optimizer.model_dump())
    identity = RunIdentity(
        f"{params.tracking.experiment_prefix}-saliency", name,
        fingerprint=(cfg.model_dump(), params.seed, args.loss, args.rate, dataset_digest(args.data)),
        params={"train_saliency": cfg.model_dump(), "loss": args.loss, "noise_rate": args.rate,
                "seed": params.seed, "device": str(device)},
        tags={"lofiseg.stage": "train_saliency", "loss": args.loss, "noise_rate": rate_key(args.rate)},
        inputs=[str(args.data)])

    with TrainingRun(identity, args.checkpoints / f"{name}.pt", tracking=params.tracking.enabled,
                     tracking_required=params.tracking.required) as training:
        def validate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
            probs = predict_probs(model, val, device=device)
            channel = saliency_channel(args.loss, probs, val.masks)
            scores = SaliencyMeter.of(probs[:, channel].numpy(), val.masks.numpy())
            return {f"val_{k}": v for k, v in scores.items()} | {"val_channel": channel}

        augment = [random_flip] if cfg.flip else []
        training.fit(model, optimizer, step, epoch_batches(train, cfg.batch_size, params.seed, augment),
                     cfg.epochs, periodic(validate, cfg.validate_every, cfg.epochs), device=device, **cfg.runner(),
                     desc=name)

        probs = predict_probs(model, val, device=device)
        channel = saliency_channel(args.loss, probs, val.masks)
        info = {"task": "saliency", "loss": args.loss, "noise_rate": args.rate, "channel": channel,
                "image_size": cfg.image_size, "epochs": cfg.epochs,
                "val": SaliencyMeter.of(probs[:, channel].numpy(), val.masks.numpy())}
        info |= {"variant": args.variant} if args.variant else {}
        grid = qualitative_grid(val.images[:GRID_SAMPLES].permute(0, 2, 3, 1).numpy(), {
            "ground truth": [colorize_labels(m) for m in val.masks[:GRID_SAMPLES].numpy()],
            "prediction": probs[:GRID_SAMPLES, channel].numpy()})  # float: drawn as a grey score map
        training.write_outputs(args.out, model, info, CURVE_KEYS, f"train_saliency {name}", example=val.images[:1],
                               pictures={"val_grid.png": grid}, final_val=info["val"], tags={"channel": channel},
                               serve=lambda served: ChannelSelected(served, channel))
    log.info("%s: val %s", name, json.dumps(info["val"]))


if __name__ == "__main__":
    sys.exit(run(main))
