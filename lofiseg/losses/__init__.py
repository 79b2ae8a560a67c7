"""The papers' losses: CE, class-agnostic CE and CAS (Sharma et al.), regularized losses (Veksler), the
projective-sphere embedding losses (Dille et al.) and the discriminative loss (De Brabandere et al.).

All losses take logits ``(B, M, H, W)`` and apply the softmax inside, unless their name ends in
``_from_probs`` / ``_from_foreground``. Masks are ``(B, H, W)`` integer label maps with 255 = ignore.
:func:`build_loss` makes a loss by the name params give it, called as ``loss(logits, mask) -> scalar``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lofiseg.losses.cas import DEFAULT_ALPHA, CASLoss, CASTerms, cas_loss, cas_loss_from_probs, cas_terms
from lofiseg.losses.ce import (
    IGNORE_INDEX,
    ClassAgnosticCrossEntropyLoss,
    CrossEntropyLoss,
    at_least_float32,
    check_logits,
    check_mask,
    check_mask_values,
    class_agnostic_cross_entropy_loss,
    cross_entropy_loss,
    zero_loss,
)
from lofiseg.losses.dense_crf_loss import (
    DenseCRFLoss,
    dense_crf_loss,
    dense_crf_loss_from_foreground,
    dense_crf_weights,
)
from lofiseg.losses.discriminative import (
    DiscriminativeLoss,
    DiscriminativeTerms,
    discriminative_loss,
    discriminative_terms,
)
from lofiseg.losses.embedding import (
    EntityIndex,
    ProjectiveLoss,
    ProjectiveTerms,
    ProjectiveWeights,
    entity_index,
    erode_labels,
    projective_loss,
    projective_terms,
    target_lines,
    top_eigenvector,
)
from lofiseg.losses.regularized import (
    DEFAULT_SIGMA,
    FOREGROUND_CHANNEL,
    CompleteRegularizedLoss,
    NegativeLoss,
    PositionalLoss,
    RegularizedLossSchedule,
    RegularizedLossTerms,
    SparseCRFLoss,
    StageParams,
    VolumetricLoss,
    complete_regularized_loss,
    complete_regularized_terms,
    edge_weights,
    foreground_probability,
    negative_loss,
    positional_loss,
    sigma_schedule,
    sparse_crf_loss,
    sparse_crf_loss_from_foreground,
    volumetric_loss,
)

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


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_SIGMA",
    "FOREGROUND_CHANNEL",
    "IGNORE_INDEX",
    "LOSSES",
    "CASLoss",
    "CASTerms",
    "ClassAgnosticCrossEntropyLoss",
    "CompleteRegularizedLoss",
    "CrossEntropyLoss",
    "DenseCRFLoss",
    "DiscriminativeLoss",
    "DiscriminativeTerms",
    "EntityIndex",
    "NegativeLoss",
    "PositionalLoss",
    "ProjectiveLoss",
    "ProjectiveTerms",
    "ProjectiveWeights",
    "RegularizedLossSchedule",
    "RegularizedLossTerms",
    "SparseCRFLoss",
    "StageParams",
    "VolumetricLoss",
    "at_least_float32",
    "build_loss",
    "cas_loss",
    "cas_loss_from_probs",
    "cas_terms",
    "check_logits",
    "check_mask",
    "check_mask_values",
    "class_agnostic_cross_entropy_loss",
    "complete_regularized_loss",
    "complete_regularized_terms",
    "cross_entropy_loss",
    "dense_crf_loss",
    "dense_crf_loss_from_foreground",
    "dense_crf_weights",
    "discriminative_loss",
    "discriminative_terms",
    "edge_weights",
    "entity_index",
    "erode_labels",
    "foreground_probability",
    "negative_loss",
    "positional_loss",
    "projective_loss",
    "projective_terms",
    "sigma_schedule",
    "sparse_crf_loss",
    "sparse_crf_loss_from_foreground",
    "target_lines",
    "top_eigenvector",
    "volumetric_loss",
    "zero_loss",
]
