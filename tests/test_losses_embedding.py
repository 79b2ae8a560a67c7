"""Projective-sphere losses of Dille et al. (Eq. 1-9): hand values, degenerate images, erosion, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from lofiseg.losses import (
    ProjectiveLoss,
    ProjectiveWeights,
    entity_index,
    erode_labels,
    projective_loss,
    projective_terms,
    top_eigenvector,
)

NO_CONTRAST = ProjectiveWeights(contrast=0.0)


def feature_map(rows: list[list[list[float]]]) -> torch.Tensor:
    """Nested [row][col][channel] features of one image -> (1, d, H, W) float64."""
    return torch.tensor(rows, dtype=torch.float64).permute(2, 0, 1).unsqueeze(0)


def test_erosion_removes_a_band_around_every_boundary_but_not_the_image_border() -> None:
    # 8 x 8, label 1 in columns 0-3, label 2 in columns 4-7. A pixel stays when its 5 x 5 window (columns
    # c-2..c+2, clipped by replicate padding) holds one label: label 1 needs c + 2 <= 3, label 2 c - 2 >= 4.
    mask = torch.ones(1, 8, 8, dtype=torch.long)
    mask[..., 4:] = 2
    eroded = erode_labels(mask, 5)
    assert eroded[0, 0].tolist() == [1, 1, 255, 255, 255, 255, 2, 2]
    assert torch.equal(eroded[0, :, 0], torch.ones(8, dtype=torch.long))  # top/bottom border rows kept
    assert torch.equal(erode_labels(mask, 1), mask)
    with pytest.raises(ValueError, match="odd"):
        erode_labels(mask, 4)


def test_entity_index_numbers_labels_per_image_and_sets_aside_background_and_ignore() -> None:
    mask = torch.tensor([[[7, 200, 255, 0]], [[0, 0, 9, 9]]])
    index = entity_index(mask, background_id=0)
    assert index.max_entities == 2
    assert index.num_entities.tolist() == [2, 1]
    # image 0: 7 -> 0, 200 -> 1, 255 -> excluded (3), 0 -> background (2); image 1: 9 -> 0
    assert index.index.tolist() == [[0, 1, 3, 2], [2, 2, 0, 0]]
    assert index.counts.tolist() == [[1, 1], [2, 0]]
    assert entity_index(mask).num_entities.tolist() == [3, 2]  # without background_id, 0 is an entity


def test_two_entities_with_orthogonal_unit_features_give_zero_attraction_and_repulsion() -> None:
    # 4 x 4 image, left half entity 3 with f = e1, right half entity 8 with f = e2 (d = 3), ||t|| = 1.
    # mu_3 = +-e1, mu_8 = +-e2: |f . mu_own| = 1 -> L_a = 0; |e1 . e2| = 0 -> L_r = 0. A^T A = I, P = [e1 e2]^T,
    # S_3 = 1 on the left, 0 on the right = the ground truth -> L_s = L_g = 0; L_u = 0.
    # Regional contrast (tau = 0.5): every query has the positive logit 1 / 0.5 = 2 and 8 negative keys (the
    # other half) with logit 0: log(e^2 + 8 e^0) - 2 = log(15.389056) - 2 = 0.733534.
    left, right = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    features = feature_map([[left, left, right, right]] * 4)
    mask = torch.tensor([[[3, 3, 8, 8]] * 4])
    terms = projective_terms(features, mask, erosion=1)
    for name in ("attraction", "repulsion", "segment", "gradient", "unit"):
        assert getattr(terms, name).item() == pytest.approx(0.0, abs=1e-12), name
    expected_rc = math.log(math.e**2 + 8) - 2.0
    assert terms.contrast.item() == pytest.approx(expected_rc, abs=1e-9)
    assert terms.total.item() == pytest.approx(0.125 * expected_rc, abs=1e-9)
    assert terms.num_entities.tolist() == [2] and terms.degenerate.tolist() == [False]


def test_hand_value_one_entity_and_background() -> None:
    # 1 x 3 image, d = 2: entity pixels f1 = (1, 0), f2 = (0.6, 0.8); background pixel t3 = (0, 0.5) -> f3 = (0, 1).
    # Eq. 4: M = f1 f1^T + f2 f2^T = [[1.36, 0.48], [0.48, 0.64]], eigenvalues 1 +- 0.6, top eigenvector
    #   mu = (2, 1) / sqrt(5); |f1 . mu| = |f2 . mu| = 2 / sqrt(5) = c. mu_BG = (0, 1).
    # Eq. 5: L_a = 1 - c.
    # Eq. 6: L_r^BG = mean(|f1 . mu_BG|, |f2 . mu_BG|) + |f3 . mu| = (0 + 0.8) / 2 + 1 / sqrt(5);
    #   no other entity, so L_r = L_r^BG / sqrt(K + 1) = L_r^BG / sqrt(2).
    # Eq. 7-8: P = mu^T, S = (c, c, 1/sqrt(5)), target (1, 1, 0):
    #   L_s = ((1 - c)^2 + (1 - c)^2 + 1/5) / 3.
    #   L_g: err = S - target = (c - 1, c - 1, 1/sqrt(5)); stride 1: x differences (0, 1/sqrt(5) - c + 1),
    #   mean of squares over 2 pairs; stride 2: columns 0 and 2, one pair; stride 4 has a single column.
    # Eq. 3: | 1 - ||t|| | = (0, 0, 0.5), mean over the 3 evaluated pixels = 1/6.
    features = feature_map([[[1.0, 0.0], [0.6, 0.8], [0.0, 0.5]]])
    mask = torch.tensor([[[5, 5, 0]]])
    terms = projective_terms(features, mask, weights=NO_CONTRAST, background_id=0, erosion=1)
    c, s = 2 / math.sqrt(5), 1 / math.sqrt(5)
    attraction = 1 - c
    repulsion = (0.4 + s) / math.sqrt(2)
    segment = (2 * (1 - c) ** 2 + 0.2) / 3
    jump = (s - (c - 1)) ** 2
    gradient = jump / 2 + jump / 1
    unit = 0.5 / 3
    assert terms.attraction.item() == pytest.approx(attraction, abs=1e-9)
    assert terms.repulsion.item() == pytest.approx(repulsion, abs=1e-9)
    assert terms.segment.item() == pytest.approx(segment, abs=1e-9)
    assert terms.gradient.item() == pytest.approx(gradient, abs=1e-9)
    assert terms.unit.item() == pytest.approx(unit, abs=1e-9)
    expected = attraction + repulsion + segment + 0.025 * gradient + 0.05 * unit  # Eq. 9
    assert terms.total.item() == pytest.approx(expected, abs=1e-9)
    assert projective_loss(features, mask, weights=NO_CONTRAST, background_id=0, erosion=1).item() == (
        pytest.approx(expected, abs=1e-9))


def test_repulsion_uses_sqrt_k_plus_one_over_all_ordered_pairs() -> None:
    # 1 x 3, three entities with f = e1, e2 and (e1 + e2)/sqrt(2): mu_k = f_k. |f_i . mu_l| over ordered pairs:
    # (1,2) 0, (1,3) r, (2,1) 0, (2,3) r, (3,1) r, (3,2) r with r = 1/sqrt(2): sum 4 r, normaliser sqrt(3 + 1) = 2.
    r = 1 / math.sqrt(2)
    features = feature_map([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [r, r, 0.0]]])
    terms = projective_terms(features, torch.tensor([[[1, 2, 3]]]), weights=NO_CONTRAST, erosion=1)
    assert terms.attraction.item() == pytest.approx(0.0, abs=1e-12)
    assert terms.repulsion.item() == pytest.approx(4 * r / 2, abs=1e-9)


def test_degenerate_image_skips_the_segment_space_terms_without_nan() -> None:
    # Both entities have the same features: mu_1 = mu_2, A^T A = [[1, 1], [1, 1]] is singular.
    # L_a = 0; L_r = (1 + 1) / sqrt(3) (each entity lies on the other's line); L_s, L_g skipped (0).
    same = [0.6, 0.8]
    features = feature_map([[same, same, same, same]]).requires_grad_(True)
    mask = torch.tensor([[[1, 1, 2, 2]]])
    terms = projective_terms(features, mask, weights=NO_CONTRAST, erosion=1)
    assert terms.degenerate.tolist() == [True]
    assert terms.segment.item() == 0.0 and terms.gradient.item() == 0.0
    assert terms.repulsion.item() == pytest.approx(2 / math.sqrt(3), abs=1e-9)
    terms.total.backward()
    assert torch.isfinite(features.grad).all()
    # A batch with one degenerate and one regular image: the segment terms average over the regular one only.
    other = feature_map([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    both = torch.cat([features.detach(), other])
    terms = projective_terms(both, torch.cat([mask, mask]), weights=NO_CONTRAST, erosion=1)
    assert terms.degenerate.tolist() == [True, False]
    alone = projective_terms(other, mask, weights=NO_CONTRAST, erosion=1)
    assert terms.segment.item() == pytest.approx(alone.segment.item(), abs=1e-12)
    # More entities than dimensions: no left inverse either.
    r = 2**-0.5
    three = projective_terms(feature_map([[[1.0, 0.0], [0.0, 1.0], [r, r]]]),
                             torch.tensor([[[1, 2, 3]]]), weights=NO_CONTRAST, erosion=1)
    assert three.degenerate.tolist() == [True]


def test_gradcheck_double_precision() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=generator).tanh().requires_grad_(True)
    mask = torch.zeros(2, 4, 5, dtype=torch.long)
    mask[:, :, 3:] = 40
    mask[1, :2] = 7
    mask[0, 0, 0] = 255

    def loss(x: torch.Tensor) -> torch.Tensor:
        return projective_terms(x, mask, background_id=0, erosion=1, generator=torch.Generator().manual_seed(1)).total

    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-5)


def test_top_eigenvector_backward_is_finite_for_rank_deficient_matrices() -> None:
    # One-hot features give M = n e1 e1^T: all lower eigenvalues are exactly 0. eigh's own backward divides by
    # their zero gaps (0/0 = NaN); the top-gap-only backward stays finite.
    f = torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=torch.float64, requires_grad=True)
    mu = top_eigenvector(f.T @ f)
    assert mu.abs().tolist() == [1.0, 0.0, 0.0]
    (mu * torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)).sum().backward()
    assert torch.isfinite(f.grad).all()
    matrix = torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    matrix = (matrix @ matrix.transpose(1, 2)).requires_grad_(True)
    weights = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def sign_free(m: torch.Tensor) -> torch.Tensor:  # a function of the line only, not of its sign
        return ((top_eigenvector(0.5 * (m + m.transpose(1, 2))) * weights).sum(-1) ** 2).sum()

    assert torch.autograd.gradcheck(sign_free, (matrix,), eps=1e-6, atol=1e-5)


def test_loss_is_invariant_to_flipping_the_sign_of_features() -> None:
    # f ~ -f (Eq. 1): every term uses |f . mu| or |P f|.
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(1, 3, 6, 6, dtype=torch.float64, generator=generator).tanh()
    flips = torch.where(torch.rand(1, 1, 6, 6, generator=generator) < 0.5, -1.0, 1.0).double()
    mask = (torch.arange(36).reshape(1, 6, 6) // 12).long()
    a = projective_terms(features, mask, erosion=1, generator=torch.Generator().manual_seed(0))
    b = projective_terms(features * flips, mask, erosion=1, generator=torch.Generator().manual_seed(0))
    assert a.total.item() == pytest.approx(b.total.item(), abs=1e-10)


def test_eroded_and_ignored_pixels_take_no_part() -> None:
    # Changing the features of ignored pixels or of pixels the 5x5 erosion removes leaves the loss unchanged.
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(1, 3, 12, 12, dtype=torch.float64, generator=generator).tanh()
    mask = torch.zeros(1, 12, 12, dtype=torch.long)
    mask[..., 6:] = 1
    mask[..., 0, 0] = 255
    changed = features.clone()
    changed[..., 4:8] = 0.3  # columns 4-7 are within 2 px of the boundary between columns 5 and 6
    changed[..., 0, 0] = -0.7
    assert projective_terms(features, mask, weights=NO_CONTRAST).total.item() == pytest.approx(
        projective_terms(changed, mask, weights=NO_CONTRAST).total.item(), abs=1e-12)


def test_images_without_entities_and_module_form() -> None:
    features = torch.full((1, 2, 4, 4), 0.5, dtype=torch.float64, requires_grad=True)
    empty = torch.full((1, 4, 4), 255, dtype=torch.long)
    terms = projective_terms(features, empty)
    assert terms.total.item() == 0.0 and terms.num_entities.tolist() == [0]
    terms.total.backward()  # still has a graph
    loss = ProjectiveLoss()
    value = loss(torch.randn(2, 4, 8, 8), torch.randint(0, 3, (2, 8, 8)))
    assert torch.isfinite(value) and loss.last_terms is not None and "gram_eps" in repr(loss)


def test_argument_errors_name_the_argument() -> None:
    features = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="mask must have shape"):
        projective_terms(features, torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="gram_eps"):
        projective_terms(features, torch.zeros(1, 4, 4, dtype=torch.long), gram_eps=2.0)
    with pytest.raises(TypeError, match="features must be a floating-point"):
        projective_terms(torch.zeros(1, 2, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight unit"):
        ProjectiveWeights(unit=-1.0)
