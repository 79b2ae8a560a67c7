"""Discriminative loss of De Brabandere, Neven and Van Gool, *Semantic Instance Segmentation with a
Discriminative Loss Function* (CVPR-W 2017, Eq. 1-4): the metric-learning baseline of the CAS paper (Table 2).

With ``C`` instances in an image, ``mu_c`` the mean embedding of instance ``c`` (``N_c`` pixels ``x_i``) and
``[x]_+ = max(0, x)``::

    L_var  = 1/C sum_c 1/N_c sum_i [ ||mu_c - x_i|| - delta_v ]_+^2                        (intra-instance pull)
    L_dist = 1/(C (C - 1)) sum_{cA != cB} [ 2 delta_d - ||mu_cA - mu_cB|| ]_+^2            (inter-instance push)
    L_reg  = 1/C sum_c ||mu_c||
    L      = alpha L_var + beta L_dist + gamma L_reg,   alpha = beta = 1, gamma = 0.001, delta_v = 0.5, delta_d = 1.5

Embeddings are the raw network output (no normalisation). Every distinct label of a mask is an instance
(255 ignored; ``background_id`` optionally excluded, as the paper clusters foreground only). Images without
instances are skipped; an image with one instance has no push term. The loss is the mean over images.
At inference a pixel belongs to an instance when it lies within ``delta_d`` of its centre, so mean-shift
(flat kernel) with bandwidth ``delta_d`` separates converged clusters (points within ``delta_v`` of centres
that lie ``2 delta_d`` apart): see :mod:`lofiseg.infer.regions`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from lofiseg.losses.ce import IGNORE_INDEX, at_least_float32, check_logits, check_mask
from lofiseg.losses.discriminative_margins import DELTA_D, DELTA_V
from lofiseg.losses.embedding import entity_index


class DiscriminativeTerms(NamedTuple):
    """Batch means of the three terms (scalars), the weighted total, and instances per image (B,)."""

    total: Tensor
    variance: Tensor
    distance: Tensor
    regularizer: Tensor
    num_instances: Tensor


def _check_margins(delta_v: float, delta_d: float) -> None:
    if not delta_v >= 0:
        raise ValueError(f"delta_v must be >= 0, got {delta_v}")
    if not delta_d > 0:
        raise ValueError(f"delta_d must be > 0, got {delta_d}")


def discriminative_terms(
    embeddings: Tensor,
    mask: Tensor,
    *,
    delta_v: float = DELTA_V,
    delta_d: float = DELTA_D,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.001,
    ignore_index: int = IGNORE_INDEX,
    background_id: int | None = None,
) -> DiscriminativeTerms:
    """The discriminative loss of ``embeddings`` (B, D, H, W) for instance masks (B, H, W) with ids 0..254."""
    check_logits(embeddings, name="embeddings")
    check_mask(mask, embeddings, logits_name="embeddings")
    _check_margins(delta_v, delta_d)
    x = at_least_float32(embeddings)
    batch, dims = x.shape[:2]
    x = x.reshape(batch, dims, -1).transpose(1, 2)  # (B, P, D)
    entities = entity_index(mask, ignore_index, background_id)
    zero = x.sum() * 0.0
    count = entities.num_entities
    if entities.max_entities == 0:
        return DiscriminativeTerms(zero, zero, zero, zero, count)
    present = entities.present.to(x.dtype)  # (B, C)
    sizes = entities.counts.to(x.dtype).clamp_min(1.0)
    one_hot = entities.one_hot(x.dtype)  # (B, C, P)
    means = (one_hot @ x) / sizes.unsqueeze(-1)  # (B, C, D)
    c = count.to(x.dtype)

    own = means.gather(1, entities.index.clamp_max(entities.max_entities - 1).unsqueeze(-1).expand(-1, -1, dims))
    pull = torch.relu(torch.linalg.vector_norm(own - x, dim=-1) - delta_v) ** 2  # (B, P)
    per_instance = (one_hot @ pull.unsqueeze(-1)).squeeze(-1) / sizes
    variance = (per_instance * present).sum(1) / c.clamp_min(1.0)

    gaps = torch.linalg.vector_norm(means.unsqueeze(2) - means.unsqueeze(1), dim=-1)  # (B, C, C)
    off_diagonal = 1.0 - torch.eye(gaps.shape[1], dtype=x.dtype, device=x.device)
    pairs = present.unsqueeze(2) * present.unsqueeze(1) * off_diagonal
    push = (torch.relu(2.0 * delta_d - gaps) ** 2 * pairs).sum((1, 2))
    distance = push / (c * (c - 1.0)).clamp_min(1.0)

    regularizer = (torch.linalg.vector_norm(means, dim=-1) * present).sum(1) / c.clamp_min(1.0)
    valid = (count > 0).to(x.dtype)
    images = valid.sum().clamp_min(1.0)

    def batch_mean(values: Tensor) -> Tensor:
        return (values * valid).sum() / images

    terms = [batch_mean(t) for t in (variance, distance, regularizer)]
    total = alpha * terms[0] + beta * terms[1] + gamma * terms[2]
    return DiscriminativeTerms(total, *terms, count)


def discriminative_loss(embeddings: Tensor, mask: Tensor, **kwargs: object) -> Tensor:
    """The weighted total of :func:`discriminative_terms`."""
    return discriminative_terms(embeddings, mask, **kwargs).total  # type: ignore[arg-type]


class DiscriminativeLoss(nn.Module):
    """Module form of :func:`discriminative_terms` with the paper's settings."""

    def __init__(self, delta_v: float = DELTA_V, delta_d: float = DELTA_D, alpha: float = 1.0, beta: float = 1.0,
                 gamma: float = 0.001, ignore_index: int = IGNORE_INDEX, background_id: int | None = None) -> None:
        super().__init__()
        _check_margins(delta_v, delta_d)
        self.options = {"delta_v": float(delta_v), "delta_d": float(delta_d), "alpha": alpha, "beta": beta,
                        "gamma": gamma, "ignore_index": ignore_index, "background_id": background_id}

    @property
    def delta_d(self) -> float:
        return float(self.options["delta_d"])  # type: ignore[arg-type]

    def forward(self, embeddings: Tensor, mask: Tensor) -> Tensor:
        return discriminative_terms(embeddings, mask, **self.options).total  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
