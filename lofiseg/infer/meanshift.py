"""Mean-shift clustering of per-pixel features (Dille et al. Sec. 4, 4.1), vectorised in torch.

Flat-kernel mean-shift (Comaniciu & Meer 2002, as scikit-learn's ``MeanShift``): seeds move to the mean of the
points within ``bandwidth`` until they stop, converged seeds closer than ``bandwidth`` to a denser one are
dropped (scikit-learn's rule), and every point joins its nearest mode. Modes are found on a fixed random
subsample of the points (``max_points``), then all points are assigned: the cost is
O(iterations x seeds x max_points x d) + O(N x K x d), independent of the image size for the first part.

``kind="projective"``: points are unit lines, f ~ -f (Eq. 1). A point is a neighbour of mode ``m`` when the
angle between the lines is at most the bandwidth angle, ``|f . m| >= cos(theta)``; it enters the mean
sign-aligned to the mode (``sign(f . m) f``), so antipodal copies of one line reinforce each other. Dille et
al.'s bandwidth sqrt(2)/2 "representing a 45 degree separation" is this cosine: theta = 45 degrees <=>
|f . m| >= sqrt(2)/2 <=> the line distance of Eq. 2, 1 - |f . m|, is <= 1 - sqrt(2)/2 = 0.293 <=> after sign
alignment the Euclidean (chord) distance ``||f - m||`` is <= 2 sin(theta / 2) = 0.765, the bandwidth to give
``sklearn.cluster.MeanShift`` on sign-aligned points (:func:`chord_bandwidth`). The mean is re-normalised
to the sphere after each step.

``kind="euclidean"``: plain flat-kernel mean-shift in R^d (the discriminative-loss baseline).

:func:`refine_multiresolution` merges segmentations of the same image computed at increasing resolutions
(Sec. 4.1): fine segments that overlap a coarse segment almost exactly replace it (sharper boundary), fine
segments nested inside a coarse one become new segments (small objects), others leave the coarse map alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lofiseg.infer.bandwidth import chord_bandwidth, cosine_threshold  # noqa: F401  (importable from here too)

Kind = Literal["projective", "euclidean"]
UNIT_EPS = 1e-12


def align_signs(points: Tensor, reference: Tensor) -> Tensor:
    """Flip each unit line ``points[i]`` (N, d) into the hemisphere of its nearest line in ``reference`` (K, d)
    (or of the single line ``reference`` (d,)); lines orthogonal to all references keep their sign."""
    ref = reference.reshape(-1, points.shape[-1]).to(points.dtype)
    dots = points @ ref.T  # (N, K)
    nearest = dots.abs().argmax(1, keepdim=True)
    sign = torch.sign(dots.gather(1, nearest))
    return points * torch.where(sign == 0, torch.ones_like(sign), sign)


def normalize(points: Tensor) -> Tensor:
    return points / points.norm(dim=-1, keepdim=True).clamp_min(UNIT_EPS)


@dataclass(frozen=True)
class MeanShiftResult:
    """``labels`` (N,) int64 in 0..K-1, ``modes`` (K, d) ordered by decreasing density, ``density`` (K,) points
    of the subsample within the bandwidth of each mode."""

    labels: Tensor
    modes: Tensor
    density: Tensor

    @property
    def num_clusters(self) -> int:
        return int(self.modes.shape[0])


def _neighbour_weights(modes: Tensor, sample: Tensor, kind: Kind, bandwidth: float) -> Tensor:
    """(S, n) kernel weights: sign-aligned 0/+-1 for projective, 0/1 for Euclidean."""
    if kind == "projective":
        dots = modes @ sample.T
        return torch.where(dots.abs() >= bandwidth, torch.sign(dots), torch.zeros_like(dots))
    return (torch.cdist(modes, sample) <= bandwidth).to(sample.dtype)


def _close(a: Tensor, b: Tensor, kind: Kind, bandwidth: float) -> Tensor:
    """(len(a), len(b)) True where two modes lie within the bandwidth of each other."""
    if kind == "projective":
        return (a @ b.T).abs() >= bandwidth
    return torch.cdist(a, b) <= bandwidth


def _nearest(points: Tensor, modes: Tensor, kind: Kind, chunk: int = 65536) -> Tensor:
    out = []
    for start in range(0, points.shape[0], chunk):  # memory bound for huge images, not a per-pixel loop
        part = points[start:start + chunk]
        if kind == "projective":
            out.append((part @ modes.T).abs().argmax(1))
        else:
            out.append(torch.cdist(part, modes).argmin(1))
    return torch.cat(out)


@torch.no_grad()
def mean_shift(
    points: Tensor,
    bandwidth: float,
    *,
    kind: Kind = "projective",
    max_points: int = 4096,
    max_seeds: int = 256,
    max_iter: int = 100,
    tol: float = 1e-4,
    max_clusters: int | None = None,
    seed: int = 0,
) -> MeanShiftResult:
    """Flat-kernel mean-shift of ``points`` (N, d); see the module docstring.

    ``bandwidth``: for ``"projective"`` the cosine threshold (:func:`cosine_threshold`, sqrt(2)/2 for 45
    degrees; points are normalised here), for ``"euclidean"`` the kernel radius. Seeds are ``max_seeds``
    points of the ``max_points`` subsample (both drawn with ``seed``, so results are reproducible). A seed stops
    when it moves less than ``tol`` (Euclidean, on the sphere for projective). ``max_clusters`` keeps the
    densest modes only; every point joins its nearest kept mode.
    """
    if not isinstance(points, Tensor) or points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (N, d) tensor, got {getattr(points, 'shape', points)!r}")
    if kind not in ("projective", "euclidean"):
        raise ValueError(f"kind must be 'projective' or 'euclidean', got {kind!r}")
    if kind == "projective" and not 0.0 < bandwidth < 1.0:
        raise ValueError(f"projective bandwidth is a cosine threshold in (0, 1), got {bandwidth}")
    if kind == "euclidean" and not bandwidth > 0:
        raise ValueError(f"euclidean bandwidth must be > 0, got {bandwidth}")
    if max_clusters is not None and max_clusters < 1:
        raise ValueError(f"max_clusters must be >= 1 or None, got {max_clusters}")
    points = points.float()
    if kind == "projective":
        points = normalize(points)
    generator = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    sample = points[torch.randperm(n, generator=generator)[:max_points].to(points.device)]
    modes = sample[torch.randperm(sample.shape[0], generator=generator)[:max_seeds].to(points.device)].clone()
    active = torch.ones(modes.shape[0], dtype=torch.bool, device=points.device)
    for _ in range(max_iter):
        weights = _neighbour_weights(modes[active], sample, kind, bandwidth)
        moved = weights @ sample
        if kind == "projective":
            moved = normalize(moved)
        else:
            moved = moved / weights.sum(1, keepdim=True).clamp_min(1.0)
        shift = (moved - modes[active]).norm(dim=1)
        modes[active] = moved
        still = active.clone()
        still[active] = shift >= tol
        active = still
        if not bool(active.any()):
            break
    density = _neighbour_weights(modes, sample, kind, bandwidth).abs().sum(1)
    order = torch.argsort(density, descending=True, stable=True)
    modes, density = modes[order], density[order]
    close = _close(modes, modes, kind, bandwidth).cpu().numpy()
    keep = np.zeros(len(modes), dtype=bool)
    for i in range(len(modes)):  # greedy over at most max_seeds modes (scikit-learn's de-duplication)
        if not (close[i] & keep).any():
            keep[i] = True
    kept = torch.from_numpy(np.flatnonzero(keep)).to(points.device)
    if max_clusters is not None:
        kept = kept[:max_clusters]
    modes, density = modes[kept], density[kept]
    labels = _nearest(points, modes, kind)
    used, labels = torch.unique(labels, return_inverse=True)
    return MeanShiftResult(labels=labels, modes=modes[used], density=density[used])


def refine_multiresolution(levels: list[np.ndarray], contain: float = 0.9, refine_iou: float = 0.8) -> np.ndarray:
    """Merge label maps of one image from the coarsest to the finest resolution (Dille et al. Sec. 4.1).

    Each map is brought to the finest map's shape (nearest). For every segment ``s`` of the next finer map, its
    parent is the current segment ``c`` holding most of it. If at least ``contain`` of ``s`` lies in ``c``:
    with IoU(s, c) >= ``refine_iou`` ``s`` is a refined ``c`` (its pixels take ``c``'s label), otherwise ``s``
    is a new, smaller segment inside ``c``. Segments straddling several coarse segments leave the current
    labels unchanged. Returns int64 labels 0..K-1 at the finest resolution.
    """
    if not levels:
        raise ValueError("levels must hold at least one label map")
    if not 0.5 < contain <= 1.0 or not 0.0 < refine_iou <= 1.0:
        raise ValueError(f"need 0.5 < contain <= 1 and 0 < refine_iou <= 1, got {contain}, {refine_iou}")
    shape = levels[-1].shape
    current = np.unique(_resize_nearest(levels[0], shape), return_inverse=True)[1].reshape(shape)
    for finer in levels[1:]:
        fine = np.unique(_resize_nearest(finer, shape), return_inverse=True)[1].reshape(shape)
        n_fine, n_cur = int(fine.max()) + 1, int(current.max()) + 1
        table = np.bincount(fine.ravel() * n_cur + current.ravel(), minlength=n_fine * n_cur).reshape(n_fine, n_cur)
        size_fine, size_cur = table.sum(1), table.sum(0)
        parent = table.argmax(1)
        inside = table[np.arange(n_fine), parent]
        iou = inside / (size_fine + size_cur[parent] - inside)
        contained = inside >= contain * size_fine
        new_label = np.where(contained & (iou >= refine_iou), parent, n_cur + np.arange(n_fine))
        new_label = np.where(contained, new_label, -1)
        mapped = new_label[fine]
        current = np.where(mapped >= 0, mapped, current)
        current = np.unique(current, return_inverse=True)[1].reshape(shape)
    return current.astype(np.int64)


def _resize_nearest(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if labels.ndim != 2:
        raise ValueError(f"label maps must be (H, W), got shape {labels.shape}")
    if labels.shape == shape:
        return labels
    rows = (np.arange(shape[0]) * labels.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * labels.shape[1]) // shape[1]
    return labels[rows[:, None], cols[None, :]]
