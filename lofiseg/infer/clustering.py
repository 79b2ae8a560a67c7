"""The CAS multi-region post-processing (CAS supplement Sec. E): cluster the network's descriptors into 20
regions (:func:`cluster_descriptors`, k-means), then smooth out the regions with less than 2% of the image's
pixels with the dense CRF (:func:`merge_small_regions`); :func:`postprocess_regions` does both.
"""

from __future__ import annotations

import numpy as np

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


def cluster_descriptors(descriptors: np.ndarray, max_regions: int = 20, seed: int = 0) -> np.ndarray:
    """k-means of the per-pixel descriptors (D, H, W) into <= ``max_regions`` clusters (scikit-learn ``KMeans``).

    Lloyd's algorithm from one k-means++ seeding (Arthur & Vassilvitskii 2007; ``random_state=seed``, so
    deterministic), k = min(max_regions, number of distinct descriptors). Returns int64 (H, W) labels 0..K-1,
    K <= k.
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
    points = descriptors.reshape(descriptors.shape[0], -1).T.astype(np.float64)
    k = min(max_regions, np.unique(points, axis=0).shape[0])
    from sklearn.cluster import KMeans  # lazy: 1-2 s of import, and only clustering='kmeans' needs it

    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(points)
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
