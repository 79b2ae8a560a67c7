from __future__ import annotations

import numpy as np
import pytest
import torch

from lofiseg.infer.clustering import cluster_descriptors, merge_small_regions, postprocess_regions
from lofiseg.infer.dense_crf import CRFParams, dense_crf


def _two_halves(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A red left half and a blue right half; the truth is the colour edge."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, : size // 2] = (200, 30, 30)
    image[:, size // 2 :] = (30, 30, 200)
    truth = np.zeros((size, size), dtype=np.int64)
    truth[:, size // 2 :] = 1
    return image, truth


def _noisy_probs(truth: np.ndarray, flip: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p_right = np.where(truth == 1, 0.7, 0.3)
    p_right = np.where(rng.random(truth.shape) < flip, 1 - p_right, p_right)
    return np.stack([1 - p_right, p_right]).astype(np.float32)


def test_dense_crf_snaps_noisy_probabilities_to_the_colour_edge() -> None:
    image, truth = _two_halves()
    probs = _noisy_probs(truth)
    before = (probs.argmax(0) == truth).mean()
    refined = dense_crf(image, probs)
    after = (refined.argmax(0) == truth).mean()
    assert refined.dtype == np.float32 and refined.shape == probs.shape
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    assert before < 0.8 and after > 0.98


def test_dense_crf_without_pairwise_terms_returns_the_input() -> None:
    # Mean field with zero pairwise weights: Q = softmax(-U) = softmax(log p) = p / sum(p) = p.
    image, truth = _two_halves(16)
    probs = _noisy_probs(truth)
    refined = dense_crf(image, probs, gaussian_compat=0, bilateral_compat=0)
    np.testing.assert_allclose(refined, probs, atol=1e-6)
    # Zero probabilities are clipped to 1e-8 before the log: p = (1, 0) -> Q = (1, 1e-8) / (1 + 1e-8).
    hard = np.stack([np.ones((16, 16)), np.zeros((16, 16))]).astype(np.float32)
    refined = dense_crf(image, hard, gaussian_compat=0, bilateral_compat=0)
    np.testing.assert_allclose(refined[1], 1e-8, rtol=1e-3)


def test_dense_crf_accepts_torch_and_non_contiguous_inputs() -> None:
    image, truth = _two_halves(16)
    probs = _noisy_probs(truth)
    expected = dense_crf(image, probs)
    flipped_image = np.ascontiguousarray(image[:, ::-1])[:, ::-1]  # a negative-stride view of the same pixels
    np.testing.assert_allclose(dense_crf(flipped_image, torch.from_numpy(probs).double()), expected, atol=1e-6)


def test_dense_crf_errors_are_clear() -> None:
    image, truth = _two_halves(16)
    probs = _noisy_probs(truth)
    with pytest.raises(TypeError, match="image must be uint8 \\(H, W, 3\\), got dtype float64"):
        dense_crf(image.astype(np.float64), probs)
    with pytest.raises(ValueError, match=r"image must have shape \(16, 16, 3\) to match the map, got \(16, 8, 3\)"):
        dense_crf(image[:, :8], probs)
    with pytest.raises(ValueError, match=r"image must have shape \(H, W, 3\), got \(16, 16\)"):
        dense_crf(image[..., 0], probs)
    with pytest.raises(ValueError, match=r"probs must have shape \(M, H, W\) with M >= 2, got \(16, 16\)"):
        dense_crf(image, probs[0])
    with pytest.raises(TypeError, match="probs must be a float array"):
        dense_crf(image, probs.astype(np.int64))
    with pytest.raises(ValueError, match="probs must sum to 1 over the M channels at every pixel; off by up to 0.5"):
        dense_crf(image, probs * 0.5)
    with pytest.raises(ValueError, match="iterations must be a positive int, got 0"):
        dense_crf(image, probs, iterations=0)
    with pytest.raises(ValueError, match="bilateral_srgb must be a positive number, got -1"):
        CRFParams(bilateral_srgb=-1)
    with pytest.raises(TypeError, match="image must be a numpy array or torch tensor, got list"):
        dense_crf([[0]], probs)


def _blocks_scene() -> tuple[np.ndarray, np.ndarray]:
    """50x50 image: red left half, blue bottom-right, green top-right (1250, 625, 625 px)."""
    image = np.zeros((50, 50, 3), dtype=np.uint8)
    image[:, :25] = (200, 0, 0)
    image[25:, 25:] = (0, 0, 200)
    image[:25, 25:] = (0, 200, 0)
    labels = np.zeros((50, 50), dtype=np.int64)
    labels[25:, 25:] = 1
    labels[:25, 25:] = 2
    return image, labels


def test_merge_small_regions_absorbs_specks_into_their_surroundings() -> None:
    image, truth = _blocks_scene()
    labels = truth * 10  # label values 0, 10, 20
    labels[10:13, 5:8] = 7  # 9 px = 0.36% of 2500 < 2%: inside the red region
    labels[40:43, 40:44] = 3  # 12 px = 0.48%: inside the blue region
    labels[5:8, 30:33] = 11  # 9 px: inside the green region, with a colour of its own
    image[5:8, 30:33] = (250, 250, 250)
    merged = merge_small_regions(image, labels)
    # Survivors 0, 10, 20 are renumbered 0, 1, 2 in value order; every speck joins the region around it.
    np.testing.assert_array_equal(merged, truth)
    assert merged.dtype == np.int64


def test_merge_small_regions_keeps_large_regions_and_errors() -> None:
    image, truth = _blocks_scene()
    np.testing.assert_array_equal(merge_small_regions(image, truth + 5), truth)  # nothing small: renumber only
    # With a 30% threshold only the 1250-px region (50%) survives; everything joins it.
    np.testing.assert_array_equal(merge_small_regions(image, truth, min_area_fraction=0.3), np.zeros_like(truth))
    with pytest.raises(TypeError, match="labels must be an integer array \\(H, W\\), got dtype float32"):
        merge_small_regions(image, truth.astype(np.float32))
    with pytest.raises(ValueError, match="min_area_fraction must be in \\[0, 1\\), got 1.5"):
        merge_small_regions(image, truth, min_area_fraction=1.5)


def test_postprocess_regions_at_most_20_labels_each_at_least_2_percent() -> None:
    rng = np.random.default_rng(0)
    image, truth = _blocks_scene()
    # 3 large regions with one-hot descriptors plus 30 specks of 4 px (0.16% each) with distinct descriptors:
    # 33 distinct descriptors, more than 20 clusters.
    descriptors = np.eye(3, dtype=np.float32)[truth].transpose(2, 0, 1).copy()
    descriptors = np.concatenate([descriptors, np.zeros((1, 50, 50), np.float32)])
    for index in range(30):
        row, col = 2 * (index // 6) * 5 + 2, (index % 6) * 8 + 2
        descriptors[:, row : row + 2, col : col + 2] = rng.random((4, 1, 1)) + 2.0
    labels = postprocess_regions(image, descriptors)
    values, counts = np.unique(labels, return_counts=True)
    assert len(values) <= 20
    assert counts.min() >= 0.02 * labels.size
    np.testing.assert_array_equal(values, np.arange(len(values)))
    # The specks sit inside the three colour blocks, so they are absorbed and the blocks come back exactly.
    assert len(values) == 3
    assert all(len(np.unique(labels[truth == k])) == 1 for k in range(3))


def test_cluster_descriptors_caps_regions_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    descriptors = rng.random((2, 20, 20)).astype(np.float32)
    first = cluster_descriptors(descriptors, max_regions=20, seed=0)
    assert len(np.unique(first)) == 20
    np.testing.assert_array_equal(first, cluster_descriptors(descriptors, max_regions=20, seed=0))
    two_values = np.zeros((1, 8, 8), np.float32)
    two_values[:, :, 4:] = 1.0
    assert len(np.unique(cluster_descriptors(two_values))) == 2  # k = number of distinct descriptors
    with pytest.raises(ValueError, match=r"descriptors must have shape \(D, H, W\), got \(20, 20\)"):
        cluster_descriptors(descriptors[0])
    with pytest.raises(TypeError, match="descriptors must be a float array"):
        cluster_descriptors(descriptors.astype(np.int32))
    with pytest.raises(ValueError, match=r"image must have shape \(20, 20, 3\) to match the map"):
        postprocess_regions(np.zeros((10, 10, 3), np.uint8), descriptors)


def test_kmeans_by_hand() -> None:
    # 1-D descriptors 0, 1, 10, 11 with k = 2: the optimum groups {0, 1} (centre 0.5) and {10, 11} (centre 10.5);
    # SSE 4 * 0.25 = 1 versus >= 60.7 for any other split, and Lloyd reaches it from every k-means++ seeding.
    descriptors = np.array([[[0.0, 1.0, 10.0, 11.0]]])
    for seed in range(5):
        labels = cluster_descriptors(descriptors, max_regions=2, seed=seed)
        assert labels[0].tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])


def test_dense_crf_takes_a_read_only_image():
    """Images decoded through PIL (np.asarray) are read-only buffers; pydensecrf needs a writeable one."""
    image = np.zeros((8, 8, 3), np.uint8)
    image.setflags(write=False)
    probs = np.full((2, 8, 8), 0.5, np.float32)
    probs[1, :4] = 0.9
    probs[0, :4] = 0.1
    refined = dense_crf(image, probs)
    assert refined.shape == (2, 8, 8) and (refined[1, :4] > 0.5).all()
