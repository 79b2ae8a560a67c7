"""One name -> loss: the losses a saliency or regions run picks by the name params give it."""

from __future__ import annotations

from typing import Any

from torch import nn

from lofiseg.losses.cas import CASLoss
from lofiseg.losses.ce import ClassAgnosticCrossEntropyLoss, CrossEntropyLoss
from lofiseg.losses.discriminative import DiscriminativeLoss
from lofiseg.losses.embedding import ProjectiveLoss

LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "cace": ClassAgnosticCrossEntropyLoss,
    "cas": CASLoss,
    "projective": ProjectiveLoss,
    "discriminative": DiscriminativeLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Loss module by the name params give it (a saliency loss or a regions method): ``"ce"``, ``"cace"``,
    ``"cas"``, ``"projective"`` or ``"discriminative"``; ``kwargs`` go to its constructor."""
    if not isinstance(name, str) or name.lower() not in LOSSES:
        raise ValueError(f"name must be one of {sorted(LOSSES)}, got {name!r}")
    return LOSSES[name.lower()](**kwargs)
