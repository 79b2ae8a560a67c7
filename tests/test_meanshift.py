"""Mean-shift on the projective sphere and in R^d, multi-resolution refinement, and region inference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift

from lofiseg.infer.meanshift import (
    align_signs,
    chord_bandwidth,
    cosine_threshold,
    mean_shift,
    refine_multiresolution,
)
from lofiseg.infer.regions import RegionEvaluator, RegionSettings, cluster, segment


def noisy_lines(centres: torch.Tensor, per: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``per`` unit points around each centre line, each with a random sign (f ~ -f), and their true labels."""
    generator = torch.Generator().manual_seed(seed)
    points = centres.repeat_interleave(per, 0) + noise * torch.randn(len(centres) * per, centres.shape[1],
                                                                     generator=generator)
    points = points / points.norm(dim=1, keepdim=True)
    signs = torch.where(torch.rand(len(points), generator=generator) < 0.5, -1.0, 1.0)
    return points * signs[:, None], torch.arange(len(centres)).repeat_interleave(per)


def same_partition(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_bandwidth_mapping_of_the_45_degree_kernel() -> None:
    # Dille et al.'s sqrt(2)/2 is cos 45 degrees; the chord between sign-aligned unit vectors at 45 degrees is
    # 2 sin(22.5 degrees) = 0.7654; the line distance of Eq. 2 at the threshold is 1 - sqrt(2)/2 = 0.2929.
    assert cosine_threshold(45.0) == pytest.approx(math.sqrt(2) / 2, abs=1e-15)
    assert chord_bandwidth(45.0) == pytest.approx(0.765366864730, abs=1e-12)
    with pytest.raises(ValueError, match="bandwidth angle"):
        cosine_threshold(90.0)


def test_three_lines_with_random_signs_are_found_as_three_modes() -> None:
    centres = torch.eye(8)[:3]
    points, truth = noisy_lines(centres, 150, 0.1)
    result = mean_shift(points, cosine_threshold(45.0))
    assert result.num_clusters == 3
    assert same_partition(result.labels, truth)
    assert result.density.tolist() == [150.0, 150.0, 150.0]
    # Each mode is (up to sign) its centre line: |cos| close to 1.
    assert (result.modes @ centres.T).abs().max(1).values.min() > 0.99


def test_agrees_with_scikit_learn_on_sign_aligned_points() -> None:
    centres = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0],
                                                          [0.0, 0.0, -0.3, 1.0]]), dim=1)
    points, _ = noisy_lines(centres, 80, 0.08, seed=1)
    ours = mean_shift(points, cosine_threshold(45.0))
    aligned = align_signs(points, ours.modes)
    reference = MeanShift(bandwidth=chord_bandwidth(45.0)).fit(aligned.numpy())
    assert len(reference.cluster_centers_) == ours.num_clusters == 3
    assert same_partition(ours.labels, reference.labels_)


def test_lines_closer_than_the_bandwidth_merge_and_farther_ones_do_not() -> None:
    def two_lines(degrees: float) -> torch.Tensor:
        angle = math.radians(degrees)
        return torch.tensor([[1.0, 0.0, 0.0], [math.cos(angle), math.sin(angle), 0.0]])

    close, _ = noisy_lines(two_lines(25.0), 60, 0.01)
    far, truth = noisy_lines(two_lines(70.0), 60, 0.01)
    assert mean_shift(close, cosine_threshold(45.0)).num_clusters == 1
    result = mean_shift(far, cosine_threshold(45.0))
    assert result.num_clusters == 2 and same_partition(result.labels, truth)


def test_euclidean_kind_max_clusters_and_errors() -> None:
    generator = torch.Generator().manual_seed(3)
    blobs = torch.cat([torch.randn(50, 2, generator=generator) * 0.1 + torch.tensor(c)
                       for c in ([0.0, 0.0], [3.0, 0.0], [0.0, 3.0])])
    truth = torch.arange(3).repeat_interleave(50)
    result = mean_shift(blobs, 1.5, kind="euclidean")
    assert result.num_clusters == 3 and same_partition(result.labels, truth)
    capped = mean_shift(blobs, 1.5, kind="euclidean", max_clusters=2)
    assert capped.num_clusters == 2 and len(capped.labels) == 150
    # Reproducible: the subsample and seeds come from ``seed``.
    again = mean_shift(blobs, 1.5, kind="euclidean", max_points=60, seed=7)
    assert torch.equal(again.labels, mean_shift(blobs, 1.5, kind="euclidean", max_points=60, seed=7).labels)
    with pytest.raises(ValueError, match="cosine threshold"):
        mean_shift(blobs, 1.5)
    with pytest.raises(ValueError, match="kind"):
        mean_shift(blobs, 0.5, kind="hyperbolic")  # type: ignore[arg-type]


def test_align_signs_flips_into_the_nearest_reference_hemisphere() -> None:
    points = torch.tensor([[-1.0, 0.1], [0.1, -1.0], [0.9, 0.1]])
    aligned = align_signs(points, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(aligned, torch.tensor([[1.0, -0.1], [-0.1, 1.0], [0.9, 0.1]]))


def test_refine_multiresolution_by_hand() -> None:
    # Coarse 2 x 2 map (upsampled to 4 x 4): left half A = 0, right half B = 1.
    # Fine 4 x 4 map: segment 5 = the left half except its top-right pixel... written out below:
    #   fine                  meaning
    #   5 5 7 7               5: 7 px, all inside A (7/8 of A): IoU 7/8 >= 0.8 -> refined A (label of A)
    #   5 5 7 7               7: right half minus (3, 3) = 7 px inside B, IoU 7/8 -> refined B
    #   5 5 7 7               9: one pixel inside B, IoU 1/8 -> a new small segment nested in B
    #   5 6 7 9               6: one pixel inside A -> new segment nested in A
    coarse = np.array([[0, 1], [0, 1]])
    fine = np.array([[5, 5, 7, 7], [5, 5, 7, 7], [5, 5, 7, 7], [5, 6, 7, 9]])
    merged = refine_multiresolution([coarse, fine])
    assert merged.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 1, 3]]
    # A fine segment straddling both coarse halves is not contained: the coarse labels stay there.
    straddle = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [8, 8, 8, 8], [8, 8, 8, 8]])
    assert refine_multiresolution([coarse, straddle]).tolist() == [[0, 0, 1, 1]] * 4
    with pytest.raises(ValueError, match="at least one"):
        refine_multiresolution([])


def test_cluster_and_segment_for_each_method() -> None:
    settings = RegionSettings(max_regions=4, min_area_fraction=0.0)
    # Softmax descriptors: argmax over channels, or k-means.
    probs = torch.zeros(3, 6, 6)
    probs[0, :, :3], probs[2, :, 3:] = 1.0, 1.0
    assert cluster("cas", probs, settings).tolist() == [[0, 0, 0, 1, 1, 1]] * 6
    kmeans = RegionSettings(max_regions=4, min_area_fraction=0.0, clustering="kmeans")
    assert same_partition(cluster("ce", probs.double(), kmeans).ravel(), cluster("cas", probs, settings).ravel())
    # Projective lines with random signs: mean-shift.
    lines, truth = noisy_lines(torch.eye(4)[:2], 18, 0.05)
    labels = cluster("projective", lines.T.reshape(4, 6, 6), settings)
    assert same_partition(labels.ravel(), truth)
    embedding = torch.cat([torch.zeros(18, 2), torch.full((18, 2), 4.0)]).T.reshape(2, 6, 6)
    assert same_partition(cluster("discriminative", embedding, settings).ravel(), truth)
    # The dense-CRF merge absorbs a 1-pixel region (1/36 < 5%) into its neighbours.
    specked = probs.clone()
    specked[:, 0, 0] = torch.tensor([0.0, 1.0, 0.0])
    image = np.zeros((6, 6, 3), np.uint8)
    merged = segment("cas", image, [specked], RegionSettings(min_area_fraction=0.05))
    assert len(np.unique(merged)) == 2
    with pytest.raises(ValueError, match="scales"):
        segment("cas", image, [specked, specked], settings)
    with pytest.raises(ValueError, match="method must be one of"):
        cluster("kmeans", probs, settings)


def test_region_evaluator_perfect_and_resized_predictions() -> None:
    gt = np.repeat(np.array([[3, 3, 9, 9]]), 4, axis=0)
    evaluator = RegionEvaluator()
    evaluator.update(np.array([[0, 1], [0, 1]]), [gt])  # 2 x 2 prediction, resized (nearest) to 4 x 4
    scores = evaluator.compute()
    assert scores["covering"] == scores["rand_index"] == scores["recall50"] == scores["miou_matched"] == 1.0
    assert scores["vi"] == 0.0
    assert list(scores) == ["covering", "rand_index", "vi", "boundary_f", "recall50", "miou_matched",
                            "boundary_iou"]
