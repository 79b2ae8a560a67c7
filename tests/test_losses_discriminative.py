"""Discriminative loss of De Brabandere et al. (2017): hand values, margins, edge cases, gradients."""

from __future__ import annotations

import pytest
import torch

from lofiseg.losses import DiscriminativeLoss, discriminative_loss, discriminative_terms


def embeddings_1d(values: list[float]) -> torch.Tensor:
    """One image, one row, D = 1: (1, 1, 1, W) float64."""
    return torch.tensor(values, dtype=torch.float64).reshape(1, 1, 1, -1)


def test_hand_value_two_instances_in_one_dimension() -> None:
    # Instance 4: x = 0, 2 -> mean 1, distances 1, 1 -> [1 - 0.5]_+^2 = 0.25 each -> 0.25.
    # Instance 9: x = 3, 3 -> mean 3, distance 0 -> 0.   L_var = (0.25 + 0) / 2 = 0.125.
    # Means 1 and 3: [2 * 1.5 - 2]_+^2 = 1 for each ordered pair, / (C (C - 1)) = 2 -> L_dist = 1.
    # L_reg = (|1| + |3|) / 2 = 2.   L = 0.125 + 1 + 0.001 * 2 = 1.127.
    x = embeddings_1d([0.0, 2.0, 3.0, 3.0])
    mask = torch.tensor([[[4, 4, 9, 9]]])
    terms = discriminative_terms(x, mask)
    assert terms.variance.item() == pytest.approx(0.125, abs=1e-12)
    assert terms.distance.item() == pytest.approx(1.0, abs=1e-12)
    assert terms.regularizer.item() == pytest.approx(2.0, abs=1e-12)
    assert terms.total.item() == pytest.approx(1.127, abs=1e-12)
    assert terms.num_instances.tolist() == [2]
    assert discriminative_loss(x, mask).item() == pytest.approx(1.127, abs=1e-12)


def test_clusters_inside_the_margins_cost_only_the_regulariser() -> None:
    # Points within delta_v = 0.5 of their means (0 and 4, 4 >= 2 delta_d = 3): no pull, no push; L_reg = 2.
    x = embeddings_1d([-0.4, 0.4, 3.6, 4.4])
    terms = discriminative_terms(x, torch.tensor([[[1, 1, 2, 2]]]))
    assert terms.variance.item() == 0.0 and terms.distance.item() == 0.0
    assert terms.total.item() == pytest.approx(0.001 * 2.0, abs=1e-12)


def test_ignore_single_instance_background_and_empty_images() -> None:
    # Ignored pixel (255) is dropped; one instance has no push term: x = 1, 3 -> mean 2, pull 2 * 0.25 / 2.
    x = embeddings_1d([1.0, 3.0, 100.0])
    terms = discriminative_terms(x, torch.tensor([[[6, 6, 255]]]))
    assert terms.variance.item() == pytest.approx(0.25, abs=1e-12)
    assert terms.distance.item() == 0.0
    assert terms.regularizer.item() == pytest.approx(2.0, abs=1e-12)
    with_bg = discriminative_terms(x, torch.tensor([[[6, 6, 0]]]), background_id=0)
    assert with_bg.total.item() == pytest.approx(terms.total.item(), abs=1e-12)
    empty = discriminative_terms(x.requires_grad_(True), torch.full((1, 1, 3), 255))
    assert empty.total.item() == 0.0 and empty.num_instances.tolist() == [0]
    empty.total.backward()
    # A batch: the image without instances does not dilute the mean.
    batch = torch.cat([embeddings_1d([1.0, 3.0, 100.0])] * 2)
    mixed = discriminative_terms(batch, torch.tensor([[[6, 6, 255]], [[255, 255, 255]]]))
    assert mixed.total.item() == pytest.approx(terms.total.item(), abs=1e-12)


def test_gradcheck_double_precision_with_coincident_points() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=generator).requires_grad_(True)
    mask = torch.randint(0, 3, (2, 4, 5), generator=generator)
    mask[0, 0, 0] = 255
    assert torch.autograd.gradcheck(lambda e: discriminative_terms(e, mask).total, (x,))
    # Every pixel at its mean (distance 0) and means apart: finite gradients (no 0/0 in the norm).
    same = embeddings_1d([0.0, 0.0, 5.0, 5.0]).requires_grad_(True)
    discriminative_loss(same, torch.tensor([[[1, 1, 2, 2]]])).backward()
    assert torch.isfinite(same.grad).all()


def test_module_form_and_errors() -> None:
    loss = DiscriminativeLoss(delta_v=0.2, delta_d=1.0)
    assert loss.delta_d == 1.0 and "delta_v=0.2" in repr(loss)
    x = embeddings_1d([0.0, 2.0, 3.0, 3.0])
    assert loss(x, torch.tensor([[[4, 4, 9, 9]]])).item() > 0
    with pytest.raises(ValueError, match="delta_d must be > 0"):
        DiscriminativeLoss(delta_d=0.0)
    with pytest.raises(ValueError, match="mask must have shape"):
        discriminative_terms(x, torch.zeros(1, 2, 2, dtype=torch.long))
