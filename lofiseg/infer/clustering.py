"""The CAS multi-region post-processing (CAS supplement Sec. E): cluster the network's descriptors into 20
regions (:func:`cluster_descriptors`, k-means), then smooth out the regions with less than 2% of the image's
pixels with the dense CRF (:func:`merge_small_regions`); :func:`postprocess_regions` does both.
"""

from __future__ import annotations

import numpy as np
import torch

from lofiseg.infer.dense_crf import CRFParams, as_numpy, check_image, crf_inference


def _check_labels(labels: object) -> np.ndarray:
    labels = as_numpy(labels, "labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array (H, W), got dtype {labels.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (H, W), got {labels.shape}")
    return labels


def merge_small_regions(
    image: np.ndarray,
    labels: np.ndarray,
    min_area_fraction: float = 0.02,
    crf: CRFParams | None = None,
    label_confidence: float = 0.9,
) -> np.ndarray:
    """Absorb the labels covering less than ``min_area_fraction`` of the image into their neighbours (CAS supp. E).

    The surviving labels (at least ``min_area_fraction`` of the pixels; the largest one if none qualifies) keep
    their pixels. Pixels of small labels get a uniform unary over the surviving labels, survivors a unary of
    ``label_confidence`` on their own label, and the dense CRF's pairwise terms (position + colour) decide which
    surviving label each small-region pixel joins. Returns int64 (H, W) labels renumbered 0..K-1 in the order of
    the original label values, every one covering at least ``min_area_fraction`` of the image.
    """
    crf = crf or CRFParams()
    labels = _check_labels(labels)
    image = check_image(image, *labels.shape)
    if not 0.0 <= min_area_fraction < 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction!r}")
    if not 0.0 < label_confidence < 1.0:
        raise ValueError(f"label_confidence must be in (0, 1), got {label_confidence!r}")

    values, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(-1)
    areas = np.bincount(dense, minlength=values.size)
    keep = areas >= min_area_fraction * labels.size
    if not keep.any():
        keep[np.argmax(areas)] = True
    survivor_index = np.cumsum(keep) - 1  # original dense label -> 0..K-1 (valid where keep)
    num_survivors = int(keep.sum())
    small_pixel = ~keep[dense]
    if not small_pixel.any():
        return survivor_index[dense].reshape(labels.shape).astype(np.int64)
    if num_survivors == 1:
        return np.zeros(labels.shape, dtype=np.int64)

    # Unary over the surviving labels: confident for survivors' own label, uniform for small-region pixels.
    off_label = (1.0 - label_confidence) / (num_survivors - 1)
    probs = np.full((num_survivors, labels.size), off_label, dtype=np.float32)
    survivor_pixels = np.flatnonzero(~small_pixel)
    probs[survivor_index[dense[survivor_pixels]], survivor_pixels] = label_confidence
    probs[:, small_pixel] = 1.0 / num_survivors
    q = crf_inference(image, -np.log(probs), crf)

    merged = survivor_index[dense]
    merged[small_pixel] = q[:, small_pixel].argmax(axis=0)
    return merged.reshape(labels.shape).astype(np.int64)


def kmeans(points: torch.Tensor, k: int, seed: int = 0, max_iter: int = 100, tol: float = 1e-4) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007), vectorised over points.

    ``points`` (N, D) float, ``k`` <= number of distinct points. Stops when the squared centre shift is at most
    ``tol`` times the mean per-dimension variance (sklearn's rule) or after ``max_iter`` iterations.
    Deterministic for a given ``seed``. Returns int64 (N,) cluster indices in [0, k); an emptied cluster keeps
    its last centre.
    """
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    points = points - points.mean(0)  # centred: better float32 distances
    threshold = tol * float(points.var(0, unbiased=False).mean())
    num_points = points.shape[0]
    centres = points.new_empty(k, points.shape[1])
    centres[0] = points[int(torch.randint(num_points, (1,), generator=generator))]
    nearest_sq = ((points - centres[0]) ** 2).sum(1)
    for index in range(1, k):  # k-means++: the next centre is drawn with probability ~ squared distance
        cumulative = torch.cumsum(nearest_sq.double(), 0)
        draw = torch.rand(1, generator=generator, dtype=torch.float64) * cumulative[-1]
        pick = int(torch.searchsorted(cumulative, draw, right=True).clamp_max(num_points - 1))
        centres[index] = points[pick]
        nearest_sq = torch.minimum(nearest_sq, ((points - centres[index]) ** 2).sum(1))
    labels = points.new_zeros(num_points, dtype=torch.long)
    for _ in range(max_iter):
        labels = ((centres**2).sum(1) - 2 * points @ centres.T).argmin(1)  # argmin of |x - c|^2
        one_hot = torch.nn.functional.one_hot(labels, k).to(points.dtype)
        counts = one_hot.sum(0)
        filled = counts > 0
        updated = centres.clone()
        updated[filled] = (one_hot.T @ points)[filled] / counts[filled, None]
        shift = float(((updated - centres) ** 2).sum())
        centres = updated
        if shift <= threshold:
            break
    return ((centres**2).sum(1) - 2 * points @ centres.T).argmin(1)


def cluster_descriptors(descriptors: np.ndarray, max_regions: int = 20, seed: int = 0) -> np.ndarray:
    """k-means (k-means++ seeding, fixed ``seed``) of the per-pixel descriptors (D, H, W) into <= ``max_regions``.

    k = min(max_regions, number of distinct descriptors). Returns int64 (H, W) labels 0..K-1, K <= k.
    """
    descriptors = as_numpy(descriptors, "descriptors")
    if not np.issubdtype(descriptors.dtype, np.floating):
        raise TypeError(f"descriptors must be a float array (D, H, W), got dtype {descriptors.dtype}")
    if descriptors.ndim != 3:
        raise ValueError(f"descriptors must have shape (D, H, W), got {descriptors.shape}")
    if not np.isfinite(descriptors).all():
        raise ValueError("descriptors must be finite")
    if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 1:
        raise ValueError(f"max_regions must be a positive int, got {max_regions!r}")
    height, width = descriptors.shape[1:]
    points = torch.from_numpy(descriptors.reshape(descriptors.shape[0], -1).T.astype(np.float64))
    k = min(max_regions, torch.unique(points, dim=0).shape[0])
    labels = kmeans(points, k, seed=seed).numpy()
    return np.unique(labels, return_inverse=True)[1].reshape(height, width).astype(np.int64)


def postprocess_regions(
    image: np.ndarray,
    descriptors: np.ndarray,
    max_regions: int = 20,
    min_area_fraction: float = 0.02,
    crf: CRFParams | None = None,
    seed: int = 0,
) -> np.ndarray:
    """CAS supplement Sec. E: cluster descriptors into <= ``max_regions`` regions, then CRF-merge the small ones.

    ``image`` uint8 (H, W, 3), ``descriptors`` float (D, H, W) (the network's softmax output). Returns an int64
    label map (H, W) with at most ``max_regions`` labels 0..K-1, each covering >= ``min_area_fraction`` of it.
    """
    descriptors = as_numpy(descriptors, "descriptors")
    if descriptors.ndim != 3:
        raise ValueError(f"descriptors must have shape (D, H, W), got {descriptors.shape}")
    check_image(image, *descriptors.shape[1:])
    clusters = cluster_descriptors(descriptors, max_regions=max_regions, seed=seed)
    return merge_small_regions(image, clusters, min_area_fraction=min_area_fraction, crf=crf)
