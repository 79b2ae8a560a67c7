"""DVC stage `train_regions@<method>`: one class-agnostic multi-region model (CAS Sec. 5.2-5.3, Dille et al.).

Methods, all trained on the train split of ``train_regions.dataset`` (masks with arbitrary region ids,
255 ignored), validated on its val split every epoch (region metrics of the inference routine):

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

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lofiseg.config import Params, TrainRegionsParams, load_params
from lofiseg.data.format import Dataset
from lofiseg.data.loading import TensorSplit, load_split, random_flip
from lofiseg.infer.regions import RegionEvaluator, RegionSettings, segment_images
from lofiseg.losses import CASLoss, CrossEntropyLoss
from lofiseg.losses.discriminative import DiscriminativeLoss
from lofiseg.losses.embedding import ProjectiveLoss
from lofiseg.models.descriptor_heads import descriptor_kind, descriptor_model
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
from lofiseg.viz.images import image_grid, random_colours, save_png
from stages.cli import log, run, stage_parser
from stages.outputs import log_training_outputs, save_training_outputs

CURVE_KEYS = ("train_loss", "val_covering", "val_recall50", "val_vi", "degenerate_fraction")
METHODS = ("cas", "projective", "ce", "discriminative")

Step = Callable[[torch.nn.Module, dict[str, torch.Tensor], int], torch.Tensor]



def output_channels(method: str, cfg: TrainRegionsParams) -> int:
    """M softmax channels for cas / ce, d embedding dimensions for projective / discriminative."""
    return cfg.channels if descriptor_kind(method) == "softmax" else cfg.embedding_dim


def make_step(method: str, cfg: TrainRegionsParams) -> tuple[Step, torch.nn.Module]:
    """The per-batch loss of ``method`` and the loss module (kept for logging its last terms)."""
    if method == "cas":
        loss_fn: torch.nn.Module = CASLoss(alpha=cfg.alpha)
        return (lambda net, batch, epoch: loss_fn(net(batch["image"]), batch["mask"])), loss_fn
    if method == "ce":
        ce = CrossEntropyLoss()
        channels = cfg.channels

        def ce_step(net: torch.nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
            mask = batch["mask"]
            classes = torch.where(mask == 255, mask, mask % channels)  # region id -> class id mod M
            return ce(net(batch["image"]), classes)

        return ce_step, ce
    if method == "projective":
        projective = ProjectiveLoss()
        return (lambda net, batch, epoch: projective(torch.tanh(net(batch["image"])), batch["mask"])), projective
    if method == "discriminative":
        discriminative = DiscriminativeLoss()
        return (lambda net, batch, epoch: discriminative(net(batch["image"]), batch["mask"])), discriminative
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def region_scores(model: torch.nn.Module, method: str, split: TensorSplit, settings: RegionSettings,
                  batch_size: int, device: torch.device) -> tuple[dict[str, float], list[np.ndarray]]:
    labels = segment_images(model, method, split.images, settings, batch_size, device, desc=f"val {method}")
    evaluator = RegionEvaluator()
    for pred, gt in zip(labels, split.masks.numpy(), strict=True):
        evaluator.update(pred, [gt])
    return evaluator.compute(), labels


def qualitative_grid(split: TensorSplit, labels: list[np.ndarray], count: int) -> np.ndarray:
    rows = [[split.images[i].permute(1, 2, 0).numpy(), random_colours(split.masks[i].numpy().astype(np.int64)),
             random_colours(labels[i])] for i in range(min(count, len(split)))]
    return image_grid(rows, col_titles=["image", "ground truth", "regions"])


def train_regions(params: Params, method: str, raw: Path, out: Path, checkpoints: Path) -> dict:
    """Train one method; writes model.pt, info.json, history.json, curves.png, val_grid.png into ``out``."""
    cfg = params.train_regions
    if method not in cfg.methods:
        raise SystemExit(f"error: --method {method!r} is not in train_regions.methods {cfg.methods}")
    seed_everything(params.seed)
    device = resolve_device(cfg.device)
    data_root = raw / cfg.dataset
    data = Dataset(data_root)
    train = load_split(data, data.split("train"), cfg.image_size, desc="load train")
    val = load_split(data, data.split("val"), cfg.image_size, desc="load val")
    channels = output_channels(method, cfg)
    model = build_model(num_classes=channels, **cfg.model.model_dump())
    step, loss_module = make_step(method, cfg)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    settings = cfg.region_settings(params.seed)

    ckpt_path = checkpoints / f"{method}.pt"
    stamp = fingerprint(cfg.model_dump(), params.seed, method,
                        hashlib.sha256((data_root / "manifest.csv").read_bytes()).hexdigest())
    previous = matching_checkpoint(ckpt_path, stamp)
    run_id = previous["meta"].get("run_id") if previous else None

    degenerate = {"images": 0, "seen": 0}

    def counted_step(net: torch.nn.Module, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
        loss = step(net, batch, epoch)
        terms = getattr(loss_module, "last_terms", None)
        if terms is not None:
            degenerate["images"] += int(terms.degenerate.sum())
            degenerate["seen"] += int((terms.num_entities > 0).sum())
        return loss

    tags = {**standard_tags(".", [str(data_root)]), "lofiseg.stage": "train_regions", "method": method}
    with Tracker(f"{params.tracking.experiment_prefix}-regions", method, run_id=run_id, tags=tags,
                 enabled=params.tracking.enabled, required=params.tracking.required) as tracker:
        if run_id is None:
            tracker.log_params({"train_regions": cfg.model_dump(), "method": method, "seed": params.seed,
                                "device": str(device), "output_channels": channels})

        def validate(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
            scores, _ = region_scores(model, method, val, settings, cfg.batch_size, device)
            result = {f"val_{k}": v for k, v in scores.items()}
            if method == "projective":
                result["degenerate_fraction"] = degenerate["images"] / max(degenerate["seen"], 1)
                degenerate.update(images=0, seen=0)
            tracker.log_metrics({**metrics, **result}, step=epoch)
            return result

        trainer = Trainer(model, optimizer, counted_step, ckpt_path, device=device, amp=cfg.amp,
                          meta={"fingerprint": stamp, "run_id": tracker.run_id})
        if trainer.resume():
            log.info("resuming %s from epoch %d", method, trainer.start_epoch + 1)
        augment = [random_flip] if cfg.flip else []
        history = trainer.fit(
            epoch_batches(train, cfg.batch_size, params.seed, augment), cfg.epochs, validate, desc=f"regions {method}")

        scores, labels = region_scores(model, method, val, settings, cfg.batch_size, device)
        info = {"task": "regions", "method": method, "descriptor": descriptor_kind(method),
                "output_channels": channels, "dataset": cfg.dataset, "image_size": cfg.image_size,
                "epochs": cfg.epochs, "mlflow_run_id": tracker.run_id, "val": scores}
        if method == "ce":
            info["label_mapping"] = f"class = region id mod {cfg.channels}"
        if method == "discriminative":
            info.update(delta_v=loss_module.options["delta_v"], delta_d=loss_module.options["delta_d"])
        save_training_outputs(out, model, info, history, CURVE_KEYS, f"train_regions {method}")
        save_png(out / "val_grid.png", qualitative_grid(val, labels, 6))

        tracker.set_tags({"descriptor": info["descriptor"]})
        tracker.log_metrics({f"final_val_{k}": v for k, v in scores.items()}, step=cfg.epochs)
        log_training_outputs(tracker, out, "val_grid.png")
        tracker.log_model(descriptor_model(model, method).eval(), "model",
                          example_input=val.images[:1].float().div(255).numpy())
    ckpt_path.unlink(missing_ok=True)  # the model is in --out now; nothing to resume
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
