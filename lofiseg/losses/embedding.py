"""Projective-sphere embedding losses of Dille et al., *A Bottom-Up Approach to Class-Agnostic Image Segmentation*.

Per-pixel features are lines through the origin: ``f = t / ||t||`` with ``t = tanh(network output)`` and
``f ~ -f`` (Eq. 1), compared by ``dist(f1, f2) = 1 - |f1 . f2|`` (Eq. 2). For every ground-truth entity ``k``
(pixels ``E_k``) the target line ``mu_k`` is the top eigenvector of ``M_k = sum_{i in E_k} f_i f_i^T`` (Eq. 4).
With ``K`` labelled entities in an image::

    L_u  = mean_i |1 - ||t_i|| |                                                           (Eq. 3, unit length)
    L_a  = 1/K sum_k 1/|E_k| sum_{i in E_k} (1 - |f_i . mu_k|)                               (Eq. 5, attraction)
    L_r  = 1/sqrt(K+1) (L_r^BG + sum_k 1/|E_k| sum_{l != k} sum_{i in E_k} |f_i . mu_l|)     (Eq. 6, repulsion)
    L_r^BG = sum_k 1/|E_k| sum_{i in E_k} |f_i . mu_BG| + 1/|BG| sum_{i in BG} sum_k |f_i . mu_k|
    S    = |P f|,  P = (A^T A)^-1 A^T the left inverse of A = [mu_1 ... mu_K]                (Eq. 7, segment space)
    L_s  = 1/K sum_k MSE(S_k, S^_k),  L_g = 1/K sum_k sum_m MSE(grad S_k^m, grad S^_k^m)     (Eq. 8)
    L    = L_a + L_r + L_s + 0.125 L_rc + 0.025 L_g + 0.05 L_u                               (Eq. 9)

``S^_k`` is the binary map of entity ``k``. Background (``background_id``, "no entity", Sec. 3.3) has no target
line: it only enters the orthogonality terms (L_r^BG, with ``mu_BG`` the top eigenvector of its own ``M``) and
the segment-space terms with target 0 in every channel. The ground truth is eroded with a 5x5 kernel and the
eroded pixels (and ignored pixels, 255) are left out of every term (Sec. 3.3).

Degenerate images (Sec. 3.5): if two target lines nearly coincide the left inverse does not exist; an image
whose Gram matrix ``A^T A`` has its smallest eigenvalue below ``gram_eps`` (or with K > d) skips L_s and L_g.

Choices where the paper is silent:

* L_u is printed as a sum over pixels; here it is the mean over the evaluated pixels, so that
  ``lambda_u = 0.05`` keeps the same meaning at any image size.
* MSE is the mean over the evaluated pixels (background included); the gradient MSE at scale ``m`` subsamples
  S, S^ and the evaluated-pixel mask with stride ``2^m`` (MegaDepth, Li & Snavely) and averages the squared
  x and y finite-difference errors over the pairs of evaluated pixels; 4 scales.
* Images count equally: each term is averaged over the images where it is defined (K >= 1; non-degenerate for
  L_s, L_g; an entity with a negative key for L_rc).
* Gradients flow through the target lines. ``torch.linalg.eigh``'s own backward divides by every eigenvalue
  gap, which is 0/0 = NaN when lower eigenvalues coincide (rank-deficient ``M_k`` of a small or uniform
  entity); :func:`top_eigenvector` back-propagates only the top eigenvector's first-order perturbation
  ``d mu = sum_{j != top} v_j v_j^T dM mu / (lambda_top - lambda_j)``, which needs the top gap only.
* Regional contrast (Liu et al., ReCo; ``tau = 0.5``, 256 queries per entity): queries are pixels of entity
  ``k`` drawn at random, the positive key is ``mu_k``, the negative keys are up to ``rc_negatives`` pixels drawn
  from the other entities and the background of the same image, similarity ``|q . key| / tau`` (projective).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lofiseg.losses.ce import IGNORE_INDEX, at_least_float32, check_logits, check_mask

LABEL_BINS = 256  # uint8 label values 0..255
EIGEN_GAP_EPS = 1e-9  # relative top-eigenvalue gap below which mu gets no gradient (it is not unique)
UNIT_EPS = 1e-6


# --- shared by the embedding losses: per-image entity indices ----------------------------------------------

@dataclass(frozen=True)
class EntityIndex:
    """Compact per-image entity ids of a batch of masks.

    ``index`` (B, P): entity ``0 .. K_max - 1`` of each pixel, ``K_max`` for background, ``K_max + 1`` for
    pixels outside every term (ignored or eroded). ``counts`` (B, K_max) pixels per entity (0 = absent).
    """

    index: Tensor
    counts: Tensor
    num_entities: Tensor  # (B,) int64
    max_entities: int

    @property
    def present(self) -> Tensor:
        return self.counts > 0

    @property
    def background(self) -> Tensor:
        return self.index == self.max_entities

    @property
    def evaluated(self) -> Tensor:
        """Pixels that take part in the losses: entities and background."""
        return self.index <= self.max_entities

    def one_hot(self, dtype: torch.dtype) -> Tensor:
        """(B, K_max, P) indicator of each entity's pixels."""
        ids = torch.arange(self.max_entities, device=self.index.device)
        return (self.index.unsqueeze(1) == ids[None, :, None]).to(dtype)


def erode_labels(mask: Tensor, size: int = 5, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Set to ``ignore_index`` every pixel whose ``size`` x ``size`` window holds another label (Dille Sec. 3.3).

    The image border is not a boundary (replicate padding); ignored pixels are a label like any other, so the
    rim next to an ignored area is eroded too. ``size <= 1`` returns the mask unchanged.
    """
    if size <= 1:
        return mask
    if size % 2 != 1:
        raise ValueError(f"size must be an odd kernel width, got {size}")
    labels = mask.to(torch.float32).unsqueeze(1)
    pad = size // 2
    padded = F.pad(labels, (pad, pad, pad, pad), mode="replicate")
    high = F.max_pool2d(padded, size, stride=1)
    low = -F.max_pool2d(-padded, size, stride=1)
    return torch.where((high == low).squeeze(1), mask, torch.full_like(mask, ignore_index))


def entity_index(mask: Tensor, ignore_index: int = IGNORE_INDEX, background_id: int | None = None) -> EntityIndex:
    """Entities of each image of ``mask`` (B, H, W) with labels in 0..255: every distinct label except
    ``ignore_index`` and ``background_id``, numbered 0..K-1 in the order of their label values."""
    batch = mask.shape[0]
    labels = mask.reshape(batch, -1).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= LABEL_BINS):
        raise ValueError(f"mask labels must lie in 0..{LABEL_BINS - 1}, got {int(labels.min())}..{int(labels.max())}")
    is_entity = labels != ignore_index
    if background_id is not None:
        is_entity &= labels != background_id
    offsets = torch.arange(batch, device=labels.device).unsqueeze(1) * LABEL_BINS
    flat = (labels + offsets)[is_entity]
    bins = torch.bincount(flat, minlength=batch * LABEL_BINS).reshape(batch, LABEL_BINS)
    present = bins > 0
    rank = torch.cumsum(present.long(), dim=1) - 1  # label value -> compact entity id
    num_entities = present.sum(1)
    k_max = int(num_entities.max()) if batch else 0
    index = torch.full_like(labels, k_max + 1)
    index = torch.where(is_entity, rank.gather(1, labels), index)
    if background_id is not None:
        index = torch.where(labels == background_id, torch.full_like(labels, k_max), index)
    counts = torch.zeros(batch, k_max, dtype=torch.long, device=labels.device)
    if k_max:
        counts = torch.nn.functional.one_hot(index.clamp_max(k_max), k_max + 1)[..., :k_max].sum(1)
    return EntityIndex(index=index, counts=counts, num_entities=num_entities, max_entities=k_max)


# --- target lines (Eq. 4) ----------------------------------------------------------------------------------

class _TopEigenvector(torch.autograd.Function):
    """Top eigenvector of symmetric matrices (..., d, d), back-propagating through the top gap only."""

    @staticmethod
    def forward(ctx, matrix: Tensor) -> Tensor:  # type: ignore[override]
        values, vectors = torch.linalg.eigh(matrix)
        ctx.save_for_backward(values, vectors)
        return vectors[..., -1]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        values, vectors = ctx.saved_tensors
        top = vectors[..., -1]
        gap = values[..., -1:] - values  # lambda_top - lambda_j >= 0, 0 for j = top
        scale = values[..., -1:].abs().clamp_min(1.0)
        projections = (vectors.transpose(-1, -2) @ grad.unsqueeze(-1)).squeeze(-1)  # v_j . g
        coefficients = torch.where(gap > EIGEN_GAP_EPS * scale, projections / gap.clamp_min(1e-30),
                                   torch.zeros_like(projections))
        direction = (vectors @ coefficients.unsqueeze(-1)).squeeze(-1)  # sum_j c_j v_j
        outer = direction.unsqueeze(-1) * top.unsqueeze(-2)  # (sum_j c_j v_j) mu^T
        return 0.5 * (outer + outer.transpose(-1, -2))


def top_eigenvector(matrix: Tensor) -> Tensor:
    """``argmax_v v^T M v`` over unit ``v`` (Eq. 4) for a batch of symmetric matrices (..., d, d); sign arbitrary."""
    return _TopEigenvector.apply(matrix)


def _placeholder(d: int, like: Tensor) -> Tensor:
    """A fixed matrix with distinct eigenvalues, standing in for absent entities (no NaN, no gradient)."""
    return torch.diag(torch.arange(d, 0, -1, dtype=like.dtype, device=like.device))


def target_lines(features: Tensor, entities: EntityIndex) -> tuple[Tensor, Tensor]:
    """Target lines ``mu_k`` (B, K_max, d) of every entity (Eq. 4) and ``mu_BG`` (B, d) of the background.

    ``features`` are unit features (B, P, d). Absent entities (and images without background) get a fixed
    placeholder line; callers mask them out.
    """
    d = features.shape[-1]
    one_hot = entities.one_hot(features.dtype)  # (B, K, P)
    scatter = torch.einsum("bkp,bpd,bpe->bkde", one_hot, features, features)
    placeholder = _placeholder(d, features)
    scatter = torch.where(entities.present[..., None, None], scatter, placeholder)
    background = entities.background.to(features.dtype)
    bg_scatter = torch.einsum("bp,bpd,bpe->bde", background, features, features)
    has_bg = entities.background.any(1)
    bg_scatter = torch.where(has_bg[:, None, None], bg_scatter, placeholder)
    return top_eigenvector(scatter), top_eigenvector(bg_scatter)


# --- the loss ----------------------------------------------------------------------------------------------

class ProjectiveTerms(NamedTuple):
    """Batch-averaged terms of Eq. 9 (scalars) and per-image bookkeeping."""

    total: Tensor
    attraction: Tensor  # Eq. 5
    repulsion: Tensor  # Eq. 6
    segment: Tensor  # Eq. 8, L_s
    gradient: Tensor  # Eq. 8, L_g
    unit: Tensor  # Eq. 3
    contrast: Tensor  # regional contrast (Liu et al.); 0 when lambda_rc = 0
    num_entities: Tensor  # (B,) int64
    degenerate: Tensor  # (B,) bool: image with K >= 1 whose segment-space terms were skipped


@dataclass(frozen=True)
class ProjectiveWeights:
    """Eq. 9: L_a, L_r and L_s weigh 1; lambda_rc = 0.125, lambda_g = 0.025, lambda_u = 0.05."""

    attraction: float = 1.0
    repulsion: float = 1.0
    segment: float = 1.0
    contrast: float = 0.125
    gradient: float = 0.025
    unit: float = 0.05

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"weight {name} must be a finite number >= 0, got {value!r}")


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` (B,) over ``valid`` images; 0 (with a gradient path) when none is valid."""
    weight = valid.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def _gradient_mse(pred: Tensor, target: Tensor, evaluated: Tensor, scales: int) -> Tensor:
    """sum over scales m of the MSE of x/y finite differences at stride 2^m; (B, K) per entity channel.

    ``pred``/``target`` (B, K, H, W); ``evaluated`` (B, H, W) bool: a difference counts when both ends count.
    """
    total = pred.new_zeros(pred.shape[:2])
    for m in range(scales):  # a handful of scales, not a loop over pixels
        step = 2**m
        p, t = pred[..., ::step, ::step], target[..., ::step, ::step]
        ok = evaluated[:, None, ::step, ::step].to(pred.dtype)
        if p.shape[-1] < 2 and p.shape[-2] < 2:
            break
        err = p - t
        dx_ok = ok[..., :, 1:] * ok[..., :, :-1]
        dy_ok = ok[..., 1:, :] * ok[..., :-1, :]
        sq = ((err[..., :, 1:] - err[..., :, :-1]) ** 2 * dx_ok).sum((-1, -2))
        sq = sq + ((err[..., 1:, :] - err[..., :-1, :]) ** 2 * dy_ok).sum((-1, -2))
        pairs = dx_ok.sum((-1, -2)) + dy_ok.sum((-1, -2))
        total = total + sq / pairs.clamp_min(1.0)
    return total


def _regional_contrast(features: Tensor, lines: Tensor, entities: EntityIndex, one_hot: Tensor, tau: float,
                       queries: int, negatives: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """ReCo-style InfoNCE per image (B,) and which images have it; see the module docstring."""
    batch, pixels, _ = features.shape
    present = entities.present
    in_entity = one_hot > 0  # (B, K, P)
    others = (entities.evaluated.unsqueeze(1) & ~in_entity)  # other entities and background
    draw = torch.rand(batch, 2, pixels, generator=generator, dtype=torch.float32).to(features.device)
    q_count, n_count = min(queries, pixels), min(negatives, pixels)
    q_score, q_index = torch.where(in_entity, draw[:, :1], -1.0).topk(q_count, dim=-1)  # (B, K, Q)
    n_score, n_index = torch.where(others, draw[:, 1:], -1.0).topk(n_count, dim=-1)  # (B, K, N)
    gather = features.unsqueeze(1).expand(-1, one_hot.shape[1], -1, -1)
    q = gather.gather(2, q_index.unsqueeze(-1).expand(-1, -1, -1, features.shape[-1]))
    keys = gather.gather(2, n_index.unsqueeze(-1).expand(-1, -1, -1, features.shape[-1]))
    positive = (q * lines.unsqueeze(2)).sum(-1).abs() / tau  # (B, K, Q)
    negative = (q @ keys.transpose(-1, -2)).abs() / tau  # (B, K, Q, N)
    # Missing keys get a logit far below any real one (|logit| <= 1 / tau): exp() underflows to exactly 0.
    negative = negative.masked_fill(~(n_score >= 0).unsqueeze(2), -1e4)
    per_query = torch.logaddexp(positive, torch.logsumexp(negative, dim=-1)) - positive
    q_ok = (q_score >= 0).to(features.dtype)
    per_entity = (per_query * q_ok).sum(-1) / q_ok.sum(-1).clamp_min(1.0)
    entity_ok = present & (n_score[..., 0] >= 0)
    weight = entity_ok.to(features.dtype)
    per_image = (per_entity * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    return per_image, entity_ok.any(1)


def projective_terms(
    features: Tensor,
    mask: Tensor,
    *,
    weights: ProjectiveWeights = ProjectiveWeights(),
    ignore_index: int = IGNORE_INDEX,
    background_id: int | None = None,
    erosion: int = 5,
    gram_eps: float = 1e-2,
    gradient_scales: int = 4,
    rc_temperature: float = 0.5,
    rc_queries: int = 256,
    rc_negatives: int = 256,
    generator: torch.Generator | None = None,
) -> ProjectiveTerms:
    """All terms of Eq. 9 from the head's tanh output ``features`` (B, d, H, W), before unit normalisation.

    ``mask`` (B, H, W) holds arbitrary entity ids 0..254, ``ignore_index`` for unlabelled pixels and optionally
    ``background_id`` for "no entity" pixels. ``erosion`` is the GT erosion kernel width (5; <= 1 turns it off).
    """
    check_logits(features, name="features")
    check_mask(mask, features, logits_name="features")
    if not 0.0 < gram_eps < 1.0:
        raise ValueError(f"gram_eps must lie in (0, 1), got {gram_eps}")
    if gradient_scales < 1:
        raise ValueError(f"gradient_scales must be >= 1, got {gradient_scales}")
    if not rc_temperature > 0:
        raise ValueError(f"rc_temperature must be > 0, got {rc_temperature}")
    raw = at_least_float32(features)
    batch, d, height, width = raw.shape
    raw = raw.reshape(batch, d, height * width).transpose(1, 2)  # (B, P, d)
    norm = raw.norm(dim=-1)
    unit_features = raw / norm.clamp_min(UNIT_EPS).unsqueeze(-1)
    entities = entity_index(erode_labels(mask, erosion, ignore_index), ignore_index, background_id)
    evaluated = entities.evaluated
    ev = evaluated.to(raw.dtype)
    zero = raw.sum() * 0.0

    unit_per_image = ((1.0 - norm).abs() * ev).sum(1) / ev.sum(1).clamp_min(1.0)
    unit = _masked_mean(unit_per_image, evaluated.any(1))
    k_count = entities.num_entities
    has_entities = k_count > 0
    if entities.max_entities == 0:
        total = weights.unit * unit
        return ProjectiveTerms(total, zero, zero, zero, zero, unit, zero, k_count,
                               torch.zeros_like(has_entities))

    present = entities.present
    pf = present.to(raw.dtype)
    k = k_count.to(raw.dtype)
    counts = entities.counts.to(raw.dtype).clamp_min(1.0)
    one_hot = entities.one_hot(raw.dtype)  # (B, K, P)
    lines, bg_line = target_lines(unit_features, entities)
    dots = (unit_features @ lines.transpose(1, 2)).abs()  # (B, P, K): |f_i . mu_k|
    # mean over E_k of |f_i . mu_l| for every (k, l): (B, K, K)
    cross = (one_hot @ dots) / counts.unsqueeze(-1)
    own = torch.diagonal(cross, dim1=1, dim2=2)  # (B, K)
    attraction_per_image = ((1.0 - own) * pf).sum(1) / k.clamp_min(1.0)

    pair = pf.unsqueeze(2) * pf.unsqueeze(1) * (1.0 - torch.eye(cross.shape[1], dtype=raw.dtype,
                                                                  device=raw.device))
    repel = (cross * pair).sum((1, 2))
    background = entities.background
    has_bg = background.any(1)
    bgf = background.to(raw.dtype)
    to_bg_line = (unit_features @ bg_line.unsqueeze(-1)).squeeze(-1).abs()  # (B, P)
    entity_to_bg = ((one_hot @ to_bg_line.unsqueeze(-1)).squeeze(-1) / counts * pf).sum(1)
    bg_to_entities = ((dots * pf.unsqueeze(1)).sum(-1) * bgf).sum(1) / bgf.sum(1).clamp_min(1.0)
    repel = repel + torch.where(has_bg, entity_to_bg + bg_to_entities, torch.zeros_like(repel))
    repulsion_per_image = repel / torch.sqrt(k + 1.0)

    # Segment space (Eq. 7): S = |(A^T A)^-1 A^T f| with absent entities padded by identity rows/columns.
    eye = torch.eye(lines.shape[1], dtype=raw.dtype, device=raw.device)
    masked_lines = lines * pf.unsqueeze(-1)
    gram = masked_lines @ masked_lines.transpose(1, 2) + torch.diag_embed(1.0 - pf)
    with torch.no_grad():
        smallest = torch.linalg.eigvalsh(gram)[:, 0]
    degenerate = has_entities & ((smallest < gram_eps) | (k_count > d))
    usable = has_entities & ~degenerate
    gram = torch.where(usable[:, None, None], gram, eye.expand_as(gram))
    left_inverse = torch.linalg.solve(gram, masked_lines)  # P = (A^T A)^-1 A^T, (B, K, d)
    segments = (left_inverse @ unit_features.transpose(1, 2)).abs()  # S = |P f|, (B, K, P)
    target = one_hot
    sq = (segments - target) ** 2 * ev.unsqueeze(1)
    mse = sq.sum(-1) / ev.sum(1).clamp_min(1.0).unsqueeze(1)  # (B, K)
    segment_per_image = (mse * pf).sum(1) / k.clamp_min(1.0)
    grad_mse = _gradient_mse(segments.reshape(batch, -1, height, width), target.reshape(batch, -1, height, width),
                             evaluated.reshape(batch, height, width), gradient_scales)
    gradient_per_image = (grad_mse * pf).sum(1) / k.clamp_min(1.0)

    attraction = _masked_mean(attraction_per_image, has_entities)
    repulsion = _masked_mean(repulsion_per_image, has_entities)
    segment = _masked_mean(segment_per_image, usable)
    gradient = _masked_mean(gradient_per_image, usable)
    contrast = zero
    if weights.contrast > 0:
        per_image, has_contrast = _regional_contrast(unit_features, lines, entities, one_hot, rc_temperature,
                                                     rc_queries, rc_negatives, generator)
        contrast = _masked_mean(per_image, has_contrast)
    total = (weights.attraction * attraction + weights.repulsion * repulsion + weights.segment * segment
             + weights.contrast * contrast + weights.gradient * gradient + weights.unit * unit)
    return ProjectiveTerms(total, attraction, repulsion, segment, gradient, unit, contrast, k_count, degenerate)


def projective_loss(features: Tensor, mask: Tensor, **kwargs: object) -> Tensor:
    """Eq. 9 as one scalar; keyword arguments as :func:`projective_terms`."""
    return projective_terms(features, mask, **kwargs).total  # type: ignore[arg-type]


class ProjectiveLoss(nn.Module):
    """Module form of :func:`projective_terms` (Eq. 9, the paper's weights); ``last_terms`` keeps the last call's
    terms for logging (e.g. the fraction of degenerate images)."""

    def __init__(self, weights: ProjectiveWeights | None = None, ignore_index: int = IGNORE_INDEX,
                 background_id: int | None = None, erosion: int = 5, gram_eps: float = 1e-2,
                 gradient_scales: int = 4, rc_temperature: float = 0.5, rc_queries: int = 256,
                 rc_negatives: int = 256) -> None:
        super().__init__()
        self.weights = weights or ProjectiveWeights()
        self.options = {"ignore_index": ignore_index, "background_id": background_id, "erosion": erosion,
                        "gram_eps": gram_eps, "gradient_scales": gradient_scales,
                        "rc_temperature": rc_temperature, "rc_queries": rc_queries, "rc_negatives": rc_negatives}
        self.last_terms: ProjectiveTerms | None = None

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        self.last_terms = projective_terms(features, mask, weights=self.weights, **self.options)
        return self.last_terms.total

    def extra_repr(self) -> str:
        return f"weights={self.weights}, " + ", ".join(f"{k}={v!r}" for k, v in self.options.items())
