"""BatchNorm statistics recomputed after training ("precise BN", Wu & Johnson, *Rethinking "Batch" in
BatchNorm*, 2021, Sec. 3).

A BatchNorm layer trains on each batch's own statistics but predicts with running averages (momentum 0.1),
which trail the weights by about ten optimiser steps. A class of 20-40 photos gives a single-class model one to
three steps per epoch, so after training its running statistics are still those of early weights and its
evaluation-mode masks differ from the ones the loss shaped (on MSRC-v2 chair: 0.60 of the image against 0.29
under batch statistics; benchmarks/results/bench_real_weak.md). Recomputing them over the training images with
the final weights, no label read, removes that lag.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def trainable_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that update their statistics in ``model.train()`` (a frozen encoder's stay out)."""
    was_training = model.training
    model.train()
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
              and m.track_running_stats]
    model.train(was_training)
    return layers


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Tensor, batch_size: int, flip: bool = False) -> int:
    """Reset the running mean / variance of ``model``'s trainable BatchNorm layers and set them to the plain
    average over batches of ``images`` (float ``(N, 3, H, W)`` in [0, 1] on the model's device; with ``flip``
    also their mirror images), with the model's current weights. No gradient, no parameter changes; the model
    is left in its former mode. Returns the number of layers recalibrated."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 for batch statistics, got {batch_size}")
    layers = trainable_batchnorms(model)
    if not layers or len(images) < 2:
        return 0
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch counts the same
    model.train()
    views = (images, images.flip(-1)) if flip else (images,)
    for view in views:
        for start in range(0, len(view), batch_size):
            batch = view[start:start + batch_size]
            if len(batch) > 1:  # a single image has no batch statistics
                model(batch)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.train(was_training)
    return len(layers)
