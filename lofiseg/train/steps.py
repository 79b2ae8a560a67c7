"""Training steps by the loss name params give them: ``step(net, batch, epoch) -> loss``, the Trainer's step.

One registry for every loss a stage trains with: the saliency losses (``ce``, ``cace``, ``cas``), the regions
methods (``cas``, ``ce`` on region ids mod M, ``projective``, ``discriminative``), the single-class models'
``regularized`` loss (Veksler Eq. 6-8) and CE on ground truth (``ce``). Every step also reports per-epoch
values (:meth:`LossStep.epoch_metrics`), e.g. the fraction of degenerate images of the projective loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lofiseg.losses import build_loss
from lofiseg.losses.ce import IGNORE_INDEX
from lofiseg.losses.embedding import ProjectiveLoss
from lofiseg.train.regularized_plan import RegularizedStep


class LossStep:
    """``loss(head(net(image)), target(mask))``: ``head`` maps the network's outputs to the loss's input
    (None: as they are), ``target`` the mask to the loss's labels (None: as it is)."""

    def __init__(self, loss: nn.Module, head: Callable[[Tensor], Tensor] | None = None,
                 target: Callable[[Tensor], Tensor] | None = None) -> None:
        self.loss, self.head, self.target = loss, head, target

    def __call__(self, net: nn.Module, batch: dict[str, Tensor], epoch: int) -> Tensor:
        mask = batch["mask"] if self.target is None else self.target(batch["mask"])
        out = net(batch["image"])
        return self.loss(out if self.head is None else self.head(out), mask)

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """What the step measured over the epoch (read once, then reset); nothing for a plain loss."""
        return {}


class ProjectiveStep(LossStep):
    """Dille et al.'s loss (Eq. 9) on tanh outputs; counts the images whose segment-space terms were skipped
    (degenerate: K > d, or a singular Gram matrix) among those with an entity."""

    def __init__(self, loss: ProjectiveLoss) -> None:
        super().__init__(loss, head=torch.tanh)
        self.degenerate = self.seen = 0

    def __call__(self, net: nn.Module, batch: dict[str, Tensor], epoch: int) -> Tensor:
        loss = super().__call__(net, batch, epoch)
        terms = self.loss.last_terms
        self.degenerate += int(terms.degenerate.sum())
        self.seen += int((terms.num_entities > 0).sum())
        return loss

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        fraction = self.degenerate / max(self.seen, 1)
        self.degenerate = self.seen = 0
        return {"degenerate_fraction": fraction}


def region_ids_modulo(mask: Tensor, classes: int) -> Tensor:
    """Region id ``r`` as class ``r mod classes`` (ignore stays ignore): the CE baseline of the regions task,
    where ids carry no meaning and two regions of an image may share a class."""
    return torch.where(mask == IGNORE_INDEX, mask, mask % classes)


def build_step(name: str, **options: Any) -> LossStep | RegularizedStep:
    """The step of loss ``name``. ``regularized``: options ``plan`` and ``loss`` of
    :class:`~lofiseg.train.regularized_plan.RegularizedStep`. Any loss of :func:`lofiseg.losses.build_loss`:
    its constructor's options (e.g. ``alpha`` of ``cas``), and for ``ce`` ``region_classes`` M to train on
    region ids mod M."""
    if name == "regularized":
        return RegularizedStep(**options)
    region_classes = options.pop("region_classes", None)
    if region_classes is not None and name != "ce":
        raise ValueError(f"region_classes goes with loss 'ce', not {name!r}")
    loss = build_loss(name, **options)
    if isinstance(loss, ProjectiveLoss):
        return ProjectiveStep(loss)
    target = None if region_classes is None else (lambda mask: region_ids_modulo(mask, region_classes))
    return LossStep(loss, target=target)
