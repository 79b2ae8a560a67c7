"""Label audit: which masks of a low-fidelity training set have their region labels permuted, and the fix.

Beyond the papers. A model trained with CAS (Eq. 1) on masks whose labels were flipped per image still learns
what is salient; its output on a training image tells which labelling of that image's regions it explains.

Per image, the agreement matrix ``A[i, j]`` is the mean probability of label ``j`` over the pixels given label
``i`` (255 ignored; a label absent from the mask gives a zero row). The labelling the model supports best is
the permutation ``pi`` maximising ``sum_i A[i, pi(i)]`` (Hungarian matching, ``linear_sum_assignment``).
``audit_score = (sum_i A[i, pi(i)] - sum_i A[i, i]) / n`` (n: labels present) is how much better the image is
explained relabelled: 0 when the given labels are already the best, up to 1. An image is flagged when its score
exceeds ``min_score``. For a binary mask and a saliency map ``s`` (label 1 = ``s``, label 0 = ``1 - s``), a
flip scores ``mean(s | given 0) - mean(s | given 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from lofiseg.data.format import IGNORE


@dataclass(frozen=True)
class AuditResult:
    """One image's verdict: flagged, its score, and the relabelling ``given label -> corrected label``."""

    flagged: bool
    score: float
    permutation: dict[int, int]  # empty when not flagged


def binary_probs(saliency: torch.Tensor) -> torch.Tensor:
    """(N, H, W) saliency in [0, 1] -> (N, 2, H, W) probabilities of label 0 (background) and label 1."""
    return torch.stack([1 - saliency, saliency], dim=1)


def agreement_matrices(probs: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (N, L, L): mean probability of label j over the pixels given label i; and which labels are present
    (N, L) bool. ``probs`` (N, L, H, W) per label; ``masks`` (N, H, W) with values < L or 255 (ignore)."""
    if probs.ndim != 4 or masks.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(f"probs must be (N, L, H, W) and masks (N, H, W), got {tuple(probs.shape)} and "
                         f"{tuple(masks.shape)}")
    labels = probs.shape[1]
    masks = masks.long()
    valid = masks != IGNORE
    if bool((masks[valid] >= labels).any()):
        raise ValueError(f"masks hold labels >= {labels}, the number of probability channels: "
                         f"{sorted(set(masks[valid].unique().tolist()) - set(range(labels)))}")
    onehot = F.one_hot(torch.where(valid, masks, 0), labels).to(probs.dtype) * valid[..., None]  # (N, H, W, L)
    sums = torch.einsum("nhwi,njhw->nij", onehot, probs)
    counts = onehot.sum(dim=(1, 2))  # (N, L)
    return sums / counts.clamp_min(1)[..., None], counts > 0


def audit_labels(probs: torch.Tensor, masks: torch.Tensor, min_score: float = 0.0) -> list[AuditResult]:
    """The audit of each image (module docstring): Hungarian matching of predicted to given labels on the
    agreement matrix; flagged when the best relabelling beats the given labels by more than ``min_score``."""
    agreement, present = agreement_matrices(probs.float(), masks)
    results = []
    for matrix, here in zip(agreement.numpy(), present.numpy(), strict=True):
        rows, cols = linear_sum_assignment(matrix, maximize=True)
        n = max(int(here.sum()), 1)
        score = float((matrix[rows, cols].sum() - np.trace(matrix)) / n)
        moved = {int(i): int(j) for i, j in zip(rows, cols, strict=True) if i != j}
        flagged = score > min_score and bool(moved)
        results.append(AuditResult(flagged, score, moved if flagged else {}))
    return results

