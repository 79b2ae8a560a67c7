"""DVC stage `train_regions@<method>`: one class-agnostic multi-region model (CAS Sec. 5.2-5.3, Dille et al.).

Methods, all trained on the train split of ``train_regions.dataset`` (masks with arbitrary region ids,
255 ignored), validated on its val split every ``validate_every`` epochs and the last (region metrics of the
inference routine):

* ``cas``: ``channels`` (M) softmax outputs, CAS loss (Eq. 1) on the raw region ids.
* ``ce``: the same network with cross-entropy, region id ``r`` taken as class ``r mod M`` (the baseline that
  fails by design: the ids carry no meaning, and two regions of an image may share a class).
* ``projective``: ``embedding_dim`` (d) outputs -> tanh -> unit lines, Dille et al.'s loss (Eq. 9).
* ``discriminative``: ``embedding_dim`` raw outputs, De Brabandere et al.'s loss (delta_v 0.5, delta_d 1.5).

Checkpoints every epoch outside the DVC outs (``--checkpoints``) and resumes after a kill (same params and
data, else it starts over). ``model.pt`` is a plain :func:`~lofiseg.models.factory.build_model` network; its head
(softmax, tanh + unit length, or none) is named by ``info["descriptor"]`` and rebuilt by
:func:`lofiseg.models.descriptor_heads.descriptor_model`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lofiseg.config import Params, TrainRegionsParams, load_params
from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import Dataset, dataset_digest
from lofiseg.data.loading import random_flip
from lofiseg.infer.regions import score_split
from lofiseg.models.descriptor_heads import descriptor_kind, descriptor_model
from lofiseg.models.factory import build_model
from lofiseg.train.loop import epoch_batches, resolve_device, seed_everything
from lofiseg.train.optim import build_optimizer
from lofiseg.train.run import RunIdentity, TrainingRun, periodic
from lofiseg.train.steps import LossStep, build_step
from lofiseg.viz.images import qualitative_grid, random_colours
from stages.cli import log, run, stage_parser

CURVE_KEYS = ("train_loss", "val_covering", "val_recall50", "val_vi", "degenerate_fraction")
METHODS = ("cas", "projective", "ce", "discriminative")
GRID_SAMPLES = 6


def output_channels(method: str, cfg: TrainRegionsParams) -> int:
    """M softmax channels for cas / ce, d embedding dimensions for projective / discriminative."""
    return cfg.channels if descriptor_kind(method) == "softmax" else cfg.embedding_dim


def make_step(method: str, cfg: TrainRegionsParams) -> LossStep:
    """The per-batch loss of ``method``: CAS with ``alpha``, CE on region ids mod ``channels``, or as named."""
    options = {"cas": {"alpha": cfg.alpha}, "ce": {"region_classes": cfg.channels}}.get(method, {})
    return build_step(method, **options)


def train_regions(params: Params, method: str, raw: Path, out: Path, checkpoints: Path) -> dict:
    """Train one method; writes model.pt, info.json, history.json, curves.png, val_grid.png into ``out``."""
    cfg = params.train_regions
    if method not in cfg.methods:
        raise SystemExit(f"error: --method {method!r} is not in train_regions.methods {cfg.methods}")
    seed_everything(params.seed)
    device = resolve_device(cfg.device)
    data_root = raw / cfg.dataset
    data = Dataset(data_root)
    train = cached_load_split(data, data.split("train"), cfg.image_size, desc="load train")
    val = cached_load_split(data, data.split("val"), cfg.image_size, desc="load val")
    channels = output_channels(method, cfg)
    model = build_model(num_classes=channels, **cfg.model.model_dump())
    step = make_step(method, cfg)
    optimizer = build_optimizer(params=model.parameters(), lr=cfg.lr, **cfg.optimizer.model_dump())
    settings = cfg.region_settings(params.seed)
    identity = RunIdentity(
        f"{params.tracking.experiment_prefix}-regions", method,
        fingerprint=(cfg.model_dump(), params.seed, method, dataset_digest(data_root)),
        params={"train_regions": cfg.model_dump(), "method": method, "seed": params.seed, "device": str(device),
                "output_channels": channels},
        tags={"lofiseg.stage": "train_regions", "method": method}, inputs=[str(data_root)])

    with TrainingRun(identity, checkpoints / f"{method}.pt", tracking=params.tracking.enabled,
                     tracking_required=params.tracking.required) as training:
        def validate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
            scores, _ = score_split(model, method, val, settings, cfg.batch_size, device)
            return {f"val_{k}": v for k, v in scores.items()}

        every = periodic(validate, cfg.validate_every, cfg.epochs)
        augment = [random_flip] if cfg.flip else []
        training.fit(model, optimizer, step, epoch_batches(train, cfg.batch_size, params.seed, augment), cfg.epochs,
                     lambda epoch, metrics: every(epoch, metrics) | step.epoch_metrics(epoch), device=device,
                     **cfg.runner(), desc=f"regions {method}")

        scores, labels = score_split(model, method, val, settings, cfg.batch_size, device)
        info = {"task": "regions", "method": method, "descriptor": descriptor_kind(method),
                "output_channels": channels, "dataset": cfg.dataset, "image_size": cfg.image_size,
                "epochs": cfg.epochs, "val": scores}
        if method == "ce":
            info["label_mapping"] = f"class = region id mod {cfg.channels}"
        if method == "discriminative":
            info.update(delta_v=step.loss.options["delta_v"], delta_d=step.loss.options["delta_d"])
        grid = qualitative_grid(val.images[:GRID_SAMPLES].permute(0, 2, 3, 1).numpy(), {
            "ground truth": [random_colours(m.astype(np.int64)) for m in val.masks[:GRID_SAMPLES].numpy()],
            "regions": [random_colours(lab) for lab in labels[:GRID_SAMPLES]]})
        training.write_outputs(out, model, info, CURVE_KEYS, f"train_regions {method}", example=val.images[:1],
                               pictures={"val_grid.png": grid}, final_val=scores,
                               tags={"descriptor": info["descriptor"]},
                               serve=lambda served: descriptor_model(served, method))
    return info


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="cas | projective | ce | discriminative")
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="folder of the downloaded data sets")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the model")
    parser.add_argument("--checkpoints", type=Path, default=Path(".checkpoints/train_regions"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    info = train_regions(params, args.method, args.raw, args.out, args.checkpoints)
    log.info("%s: val %s", args.method, json.dumps(info["val"]))


if __name__ == "__main__":
    sys.exit(run(main))
