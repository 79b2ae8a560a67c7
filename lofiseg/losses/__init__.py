"""The papers' losses: CE, class-agnostic CE and CAS (Sharma et al.), regularized losses (Veksler), the
projective-sphere embedding losses (Dille et al.) and the discriminative loss (De Brabandere et al.).

All losses take logits ``(B, M, H, W)`` and apply the softmax inside, unless their name ends in
``_from_probs`` / ``_from_foreground``. Masks are ``(B, H, W)`` integer label maps with 255 = ignore.
:func:`build_loss` makes a loss by the name params give it, called as ``loss(logits, mask) -> scalar``.

Submodules load on first use (PEP 562): the schedule's constants (:mod:`lofiseg.losses.regularized_schedule`)
and the margins import without torch, so the params schema that takes its defaults from them stays light.
"""

from __future__ import annotations

import importlib
import typing
from typing import Any

if typing.TYPE_CHECKING:  # for type checkers, and for the dvc.yaml deps walk (tests/test_dvc_deps.py)
    from lofiseg.losses import (  # noqa: F401
        cas,
        ce,
        dense_crf_loss,
        discriminative,
        embedding,
        registry,
        regularized,
        regularized_schedule,
    )

_EXPORTS = {
    "cas": (
        "DEFAULT_ALPHA",
        "CASLoss",
        "CASTerms",
        "cas_loss",
        "cas_loss_from_probs",
        "cas_terms",
    ),
    "ce": (
        "IGNORE_INDEX",
        "ClassAgnosticCrossEntropyLoss",
        "CrossEntropyLoss",
        "at_least_float32",
        "check_logits",
        "check_mask",
        "check_mask_values",
        "class_agnostic_cross_entropy_loss",
        "cross_entropy_loss",
        "zero_loss",
    ),
    "dense_crf_loss": (
        "DenseCRFLoss",
        "dense_crf_loss",
        "dense_crf_loss_from_foreground",
        "dense_crf_weights",
    ),
    "discriminative": (
        "DiscriminativeLoss",
        "DiscriminativeTerms",
        "discriminative_loss",
        "discriminative_terms",
    ),
    "embedding": (
        "EntityIndex",
        "ProjectiveLoss",
        "ProjectiveTerms",
        "ProjectiveWeights",
        "entity_index",
        "erode_labels",
        "projective_loss",
        "projective_terms",
        "target_lines",
        "top_eigenvector",
    ),
    "regularized": (
        "FOREGROUND_CHANNEL",
        "CompleteRegularizedLoss",
        "NegativeLoss",
        "PositionalLoss",
        "RegularizedLossTerms",
        "SparseCRFLoss",
        "VolumetricLoss",
        "complete_regularized_loss",
        "complete_regularized_terms",
        "edge_weights",
        "foreground_probability",
        "negative_loss",
        "positional_loss",
        "sparse_crf_loss",
        "sparse_crf_loss_from_foreground",
        "volumetric_loss",
    ),
    "regularized_schedule": (
        "DEFAULT_SIGMA",
        "RegularizedLossSchedule",
        "StageParams",
        "sigma_schedule",
    ),
    "registry": (
        "LOSSES",
        "build_loss",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _MODULE_OF[name]
    loaded = importlib.import_module(f".{module}", __name__)
    # Bind all of the module's names at once: importing ``dense_crf_loss`` sets the package attribute of that
    # name to the submodule, which the function of the same name must replace.
    globals().update({export: getattr(loaded, export) for export in _EXPORTS[module]})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
