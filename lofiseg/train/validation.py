"""Semantic validation of a network during and after training: labels, confusion counts over ranks, mIoU."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lofiseg.data.format import IGNORE
from lofiseg.data.loading import TensorSplit, batch_to_device, iterate_batches
from lofiseg.metrics.semantic import ConfusionMeter
from lofiseg.train.distributed import DistContext, all_reduce_sum


@torch.no_grad()
def argmax_labels(model: torch.nn.Module, split: TensorSplit, batch_size: int, device: torch.device) -> torch.Tensor:
    """Argmax labels (N, S, S) uint8 of ``model`` (in eval mode) on ``split``, on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(batch_to_device(batch, device)["image"]).argmax(1).to(torch.uint8).cpu()
           for batch in iterate_batches(split, batch_size)]
    model.train(was_training)
    return torch.cat(out)


def semantic_eval(model: torch.nn.Module, split: TensorSplit, num_classes: int, batch_size: int,
                  device: torch.device, ctx: DistContext) -> dict[str, float | list[float]]:
    """:func:`~lofiseg.metrics.semantic.semantic_scores` of ``model`` over ``split``; each rank scores a shard, the counts are summed."""
    meter = ConfusionMeter(num_classes, ignore_index=IGNORE)
    shard = list(range(ctx.rank, len(split), ctx.world_size))
    if shard:
        part = split.subset(shard)
        meter.update(argmax_labels(model, part, batch_size, device), part.masks)
    meter.confusion = all_reduce_sum(meter.confusion.to(device), ctx).cpu()
    return meter.compute()


def val_metrics(scores: dict[str, float | list[float]], classes: Sequence[str]) -> dict[str, float]:
    """Flat metrics: miou, pixel_acc and iou_<class> (classes absent from labels and predictions left out)."""
    out = {"miou": float(scores["miou"]), "pixel_acc": float(scores["pixel_acc"])}
    out |= {f"iou_{name}": float(v) for name, v in zip(classes, scores["iou"], strict=True) if not math.isnan(v)}
    return out

