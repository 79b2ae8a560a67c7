"""Per-pixel descriptor heads on top of any :func:`lofiseg.models.factory.build_model` network.

* :class:`ProjectiveHead` (Dille et al. Sec. 3.1, 3.6): the network's ``d`` output channels -> ``tanh`` ->
  unit length per pixel, i.e. a point of the projective sphere (Eq. 1). The losses need the ``tanh`` output
  before normalisation (the unit-length loss, Eq. 3): :meth:`ProjectiveHead.tanh_features`.
* :class:`SoftmaxHead`: the softmax over the M channels (the CAS / CE descriptors, CAS supplement E).

The trained network stays a plain :class:`~lofiseg.models.factory.SegmentationModel` (saved with
:func:`lofiseg.models.bundle.save_bundle`); the head is applied outside it, so :func:`descriptor_model` rebuilds the
descriptor model of a region method from a loaded bundle.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

UNIT_EPS = 1e-6
DESCRIPTORS = {"cas": "softmax", "ce": "softmax", "projective": "projective", "discriminative": "embedding"}


def descriptor_kind(method: str) -> str:
    """What a region method's network output means: softmax, projective (unit lines) or embedding (raw R^d)."""
    if method not in DESCRIPTORS:
        raise ValueError(f"method must be one of {sorted(DESCRIPTORS)}, got {method!r}")
    return DESCRIPTORS[method]


def projective_features(output: Tensor) -> tuple[Tensor, Tensor]:
    """(unit features, tanh features) of a network output (B, d, H, W): t = tanh(output), f = t / ||t||."""
    raw = torch.tanh(output)
    return raw / raw.norm(dim=1, keepdim=True).clamp_min(UNIT_EPS), raw


class ProjectiveHead(nn.Module):
    """``model`` with d output channels -> per-pixel unit lines (B, d, H, W) (Dille et al. Eq. 1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def tanh_features(self, x: Tensor) -> Tensor:
        """The tanh output before unit normalisation, what :mod:`lofiseg.losses.embedding` takes."""
        return torch.tanh(self.model(x))

    def forward(self, x: Tensor) -> Tensor:
        return projective_features(self.model(x))[0]


class SoftmaxHead(nn.Module):
    """``model``'s logits -> softmax probabilities over the channels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).float().softmax(dim=1)


def descriptor_model(model: nn.Module, method: str) -> nn.Module:
    """The network plus the head of ``method``: softmax (cas, ce), projective, or the bare embedding."""
    kind = descriptor_kind(method)
    if kind == "softmax":
        return SoftmaxHead(model)
    if kind == "projective":
        return ProjectiveHead(model)
    return model
