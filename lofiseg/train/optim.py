"""The optimiser of a training run, by name, from plain arguments (params: ``<section>.optimizer``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("adam", "sgd")


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam or SGD over the ``params`` that require gradients (a frozen encoder stays out).

    ``momentum`` is SGD's (Adam has its own betas); ``weight_decay`` is the L2 penalty of either. DeepLab
    (Chen et al. 2018) trains with SGD, momentum 0.9, weight decay 5e-4.
    """
    trainable = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer.name must be one of {list(OPTIMIZERS)}, got {name!r}")
