"""CAS loss (Sharma et al., Eq. 1): hand values, invariance, sparsity, gradients, class imbalance."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lofiseg.losses import CASLoss, cas_loss, cas_loss_from_probs, cas_terms, cross_entropy_loss


def probs_tensor(rows: list[list[list[float]]]) -> torch.Tensor:
    """Nested [row][col][channel] probabilities of one image -> (1, M, H, W) float64."""
    return torch.tensor(rows, dtype=torch.float64).permute(2, 0, 1).unsqueeze(0)


def reference_cas(probs: torch.Tensor, mask: torch.Tensor, alpha: float) -> list[float]:
    """Eq. 1 written as plainly as possible, one image and one region at a time."""
    values = []
    for b in range(probs.shape[0]):
        labels = [v for v in mask[b].unique().tolist() if v != 255]
        means, uniformer = [], 0.0
        for label in labels:
            pixels = probs[b][:, mask[b] == label]  # (M, |r|)
            mean = pixels.mean(1)
            uniformer += float(((pixels - mean[:, None]) ** 2).sum()) / pixels.shape[1]
            means.append(mean)
        discriminator = sum(float(((a - c) ** 2).sum()) for a, c in itertools.permutations(means, 2))
        values.append(alpha * uniformer - (1 - alpha) * discriminator)
    return values


# 2 x 2 mask, 2 regions, M = 2.
#   region 0 = top row:    s = (0.8, 0.2), (0.6, 0.4); mean (0.7, 0.3); deviations +-(0.1, -0.1) -> 0.02 each
#                          uniformer part (0.02 + 0.02) / 2 = 0.02
#   region 1 = bottom row: s = (0.1, 0.9), (0.3, 0.7); mean (0.2, 0.8); likewise 0.02
#   uniformer = 0.04; ||(0.7, 0.3) - (0.2, 0.8)||^2 = 0.25 + 0.25 = 0.5, ordered pairs: discriminator = 1.0
#   CAS = 0.1 * 0.04 - 0.9 * 1.0 = -0.896
PROBS_2X2 = probs_tensor([[[0.8, 0.2], [0.6, 0.4]], [[0.1, 0.9], [0.3, 0.7]]])
MASK_2X2 = torch.tensor([[[0, 0], [1, 1]]])


def test_hand_value_2x2() -> None:
    terms = cas_terms(PROBS_2X2, MASK_2X2)
    assert terms.uniformer.item() == pytest.approx(0.04, abs=1e-12)
    assert terms.discriminator.item() == pytest.approx(1.0, abs=1e-12)
    assert terms.num_regions.tolist() == [2]
    assert cas_loss_from_probs(PROBS_2X2, MASK_2X2).item() == pytest.approx(-0.896, abs=1e-12)
    # Same value through the logits path: softmax(log p) = p.
    assert cas_loss(PROBS_2X2.log(), MASK_2X2).item() == pytest.approx(-0.896, abs=1e-12)


def test_hand_value_3x3_sparse_labels_single_pixel_region_and_ignore() -> None:
    # mask (labels 7, 200, 42 are not contiguous; 255 ignored):
    #   7   7   200
    #   7   255 200
    #   42  200 200
    # region 7 (3 px):   (0.9,0.1,0), (0.6,0.3,0.1), (0.6,0.2,0.2); mean (0.7,0.2,0.1)
    #                    squared deviations 0.06, 0.02, 0.02 -> 0.10 / 3
    # region 200 (4 px): (0.1,0.8,0.1), (0.3,0.6,0.1), (0.1,0.6,0.3), (0.1,0.8,0.1); mean (0.15,0.7,0.15)
    #                    squared deviations 0.015, 0.035, 0.035, 0.015 -> 0.10 / 4
    # region 42 (1 px):  (0.2,0.2,0.6); deviation 0
    # uniformer = 0.1/3 + 0.025 = 0.058333...
    # ||a-b||^2 = 0.55^2 + 0.5^2 + 0.05^2 = 0.555, ||a-c||^2 = 0.5, ||b-c||^2 = 0.455
    # -> sum 1.51, over ordered pairs 3.02
    # CAS = 0.1 * 0.0583333 - 0.9 * 3.02 = -2.7121666...
    probs = probs_tensor(
        [
            [[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]],
            [[0.6, 0.2, 0.2], [0.0, 0.0, 1.0], [0.3, 0.6, 0.1]],
            [[0.2, 0.2, 0.6], [0.1, 0.6, 0.3], [0.1, 0.8, 0.1]],
        ]
    )
    mask = torch.tensor([[[7, 7, 200], [7, 255, 200], [42, 200, 200]]], dtype=torch.uint8)
    terms = cas_terms(probs, mask)
    assert terms.uniformer.item() == pytest.approx(0.1 / 3 + 0.025, abs=1e-12)
    assert terms.discriminator.item() == pytest.approx(3.02, abs=1e-12)
    assert terms.num_regions.tolist() == [3]
    expected = 0.1 * (0.1 / 3 + 0.025) - 0.9 * 3.02
    assert cas_loss_from_probs(probs, mask).item() == pytest.approx(expected, abs=1e-12)
    # The ignored pixel's value does not matter.
    changed = probs.clone()
    changed[0, :, 1, 1] = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    assert cas_loss_from_probs(changed, mask).item() == pytest.approx(expected, abs=1e-12)


def test_batch_mean_skips_ignore_only_images_and_one_region_has_no_discriminator() -> None:
    # Image 0: the 2 x 2 example above, -0.896.
    # Image 1: one region (label 5) over the same probabilities: mean (0.45, 0.55);
    #   squared deviations 2*0.35^2 = 0.245, 2*0.15^2 = 0.045, 0.245, 0.045 -> 0.58 / 4 = 0.145
    #   CAS = 0.1 * 0.145 - 0 = 0.0145 (discriminator is 0 with a single region).
    # Image 2: all ignored -> contributes nothing; batch mean = (-0.896 + 0.0145) / 2 = -0.44075.
    probs = PROBS_2X2.expand(3, -1, -1, -1)
    mask = torch.stack([MASK_2X2[0], torch.full((2, 2), 5), torch.full((2, 2), 255)])
    per_image = cas_loss_from_probs(probs, mask, reduction="none")
    assert per_image.tolist() == pytest.approx([-0.896, 0.0145, 0.0], abs=1e-12)
    assert cas_terms(probs, mask).num_regions.tolist() == [2, 1, 0]
    assert cas_loss_from_probs(probs, mask).item() == pytest.approx(-0.44075, abs=1e-12)


def test_all_ignored_batch_is_zero_with_gradient() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = CASLoss()(logits, torch.full((2, 4, 4), 255, dtype=torch.uint8))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_matches_per_region_reference_with_varying_region_counts() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(4, 5, 7, 6, dtype=torch.float64), dim=1)
    mask = torch.stack(
        [
            torch.randint(0, 2, (7, 6)) * 3,  # 2 regions (0, 3)
            torch.randint(0, 6, (7, 6)) * 40 + 10,  # up to 6 regions, labels 10 .. 210
            torch.full((7, 6), 254),  # 1 region
            torch.randint(0, 4, (7, 6)),  # 4 regions
        ]
    )
    mask[1, 0, 0] = 99  # a one-pixel region
    mask[3, 2:4] = 255
    expected = torch.tensor(reference_cas(probs, mask, 0.1), dtype=torch.float64)
    assert torch.allclose(
        cas_loss_from_probs(probs, mask, reduction="none"), expected, rtol=1e-12, atol=1e-12
    )
    expected_03 = torch.tensor(reference_cas(probs, mask, 0.3), dtype=torch.float64)
    assert torch.allclose(
        cas_loss_from_probs(probs, mask, alpha=0.3, reduction="none"), expected_03, atol=1e-12
    )


def test_invariant_to_any_permutation_of_region_labels() -> None:
    # Eq. 1 only sees the partition into regions, never the label values: flipping a binary mask or
    # relabelling regions gives the same loss (up to floating-point summation order).
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    mask = torch.randint(0, 2, (3, 8, 8))
    mask[0, :2] = 255
    flipped = torch.where(mask == 255, mask, 1 - mask)
    base = cas_loss(logits, mask, reduction="none")
    assert torch.allclose(base, cas_loss(logits, flipped, reduction="none"), rtol=1e-13, atol=1e-15)

    many = torch.randint(0, 5, (3, 8, 8))
    many[2, 5:] = 255
    relabel = torch.tensor([201, 3, 77, 0, 254])  # a permutation of the ids onto arbitrary label values
    relabelled = torch.where(many == 255, many, relabel[many.clamp(max=4)])
    base = cas_loss(logits, many, reduction="none")
    assert torch.allclose(base, cas_loss(logits, relabelled, reduction="none"), rtol=1e-13, atol=1e-15)
    single = logits.float()
    assert torch.allclose(
        cas_loss(single, many, reduction="none"), cas_loss(single, relabelled, reduction="none"), atol=1e-6
    )


@pytest.mark.parametrize("regions", [2, 3])
def test_sparsity_one_hot_distinct_outputs_reach_the_lower_bound(regions: int) -> None:
    # With one-hot, distinct, region-constant outputs the uniformer is 0 and every ordered pair of region
    # means is at squared distance 2, so CAS = -(1 - alpha) * 2 * N (N - 1): for N = 2, -0.9 * 2 * 2 = -3.6;
    # for N = 3, -0.9 * 2 * 6 = -10.8. This is the lower bound (Sec. 3.3 / supplement B.1).
    alpha, channels = 0.1, 3
    bound = -(1 - alpha) * 2 * regions * (regions - 1)
    mask = (torch.arange(36).reshape(1, 6, 6) % regions).to(torch.long)
    one_hot = torch.nn.functional.one_hot(mask, channels).permute(0, 3, 1, 2).to(torch.float64)
    assert cas_loss_from_probs(one_hot, mask, alpha).item() == pytest.approx(bound, abs=1e-12)

    # Any perturbation inside the simplex raises the loss.
    generator = torch.Generator().manual_seed(2)
    for eps in (1e-3, 0.05, 0.5):
        other = torch.softmax(torch.randn(1, channels, 6, 6, generator=generator, dtype=torch.float64), dim=1)
        perturbed = (1 - eps) * one_hot + eps * other
        assert cas_loss_from_probs(perturbed, mask, alpha).item() > bound
    # Random outputs never go below the bound.
    randoms = torch.softmax(4 * torch.randn(64, channels, 6, 6, generator=generator, dtype=torch.float64), 1)
    assert bool(
        (cas_loss_from_probs(randoms, mask.expand(64, -1, -1), alpha, reduction="none") > bound).all()
    )

    # Descending the loss from random logits drives the outputs to that sparse minimum.
    logits = torch.randn(1, channels, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.5)
    for _ in range(150):
        optimizer.zero_grad()
        loss = cas_loss(logits, mask, alpha)
        loss.backward()
        optimizer.step()
    assert loss.item() == pytest.approx(bound, abs=1e-2)
    probs = torch.softmax(logits.detach(), dim=1)
    assert bool((probs.amax(1) > 0.99).all())  # one-hot everywhere
    winners = probs.argmax(1)[0]
    per_region = [winners[mask[0] == r].unique().tolist() for r in range(regions)]
    assert all(len(w) == 1 for w in per_region)  # constant on each region
    assert len({w[0] for w in per_region}) == regions  # distinct between regions


def test_gradcheck_on_probs_and_logits() -> None:
    torch.manual_seed(3)
    mask = torch.tensor([[[3, 3, 9], [3, 255, 9], [120, 9, 9]], [[1, 1, 1], [1, 1, 1], [255, 255, 0]]])
    probs = torch.rand(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: cas_loss_from_probs(p, mask, reduction="none"), (probs,))
    assert torch.autograd.gradcheck(lambda x: cas_loss(x, mask, alpha=0.25), (logits,))


def imbalanced_points(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Appendix B.2: 10000 points around (1, 0) (class 0 here) and 10 around (0, 1), variance 0.2."""
    std = 0.2**0.5
    large = torch.tensor([1.0, 0.0]) + std * torch.randn(10000, 2, generator=generator)
    small = torch.tensor([0.0, 1.0]) + std * torch.randn(10, 2, generator=generator)
    labels = torch.cat([torch.zeros(10000, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    return torch.cat([large, small]), labels


def train_mlp(loss_name: str, points: torch.Tensor, labels: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """2-layer MLP (10 hidden units), full batch as one "image" of N x 1 pixels, Adam lr 1e-3 (paper's)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 2))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    mask = labels.view(1, -1, 1)
    for _ in range(steps):
        logits = net(points).t().reshape(1, 2, -1, 1)
        loss = cross_entropy_loss(logits, mask) if loss_name == "ce" else cas_loss(logits, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def test_class_imbalance_toy_appendix_b2() -> None:
    # Same data, initialisation and budget (300 full-batch Adam steps, lr 1e-3) for both losses; evaluated
    # on a second, independent draw. CE labels every test point as the large class. CAS is
    # label-permutation invariant, so "separates" means the small class's points get a different argmax
    # from the large class's. (Trained much longer, CE does flag a few of the 10 points, as a Bayes rule
    # with a 1000:1 prior would; CAS weighs both regions equally from the start.)
    generator = torch.Generator().manual_seed(0)
    train_points, train_labels = imbalanced_points(generator)
    test_points, test_labels = imbalanced_points(generator)
    ce_net = train_mlp("ce", train_points, train_labels, steps=300, seed=0)
    cas_net = train_mlp("cas", train_points, train_labels, steps=300, seed=0)
    with torch.no_grad():
        ce_pred = ce_net(test_points).argmax(1)
        cas_pred = cas_net(test_points).argmax(1)
    assert bool((ce_pred == 0).all())  # everything labelled as the large class
    large_label = int(cas_pred[test_labels == 0].mode().values)
    small_separated = int((cas_pred[test_labels == 1] != large_label).sum())
    large_kept = float((cas_pred[test_labels == 0] == large_label).float().mean())
    assert small_separated >= 9  # of 10
    assert large_kept >= 0.9  # classes overlap: with variance 0.2 a balanced rule errs on ~6 % of points


def test_rejects_bad_arguments() -> None:
    logits = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="alpha must be in"):
        cas_loss(logits, torch.zeros(1, 3, 3, dtype=torch.long), alpha=1.5)
    with pytest.raises(ValueError, match=r"labels in \[0, 255\].*got labels \[300\]"):
        cas_loss(logits, torch.full((1, 3, 3), 300))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, H, W\) = \(1, 3, 3\)"):
        cas_loss(logits, torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="mask must be an integer label map"):
        cas_loss(logits, torch.zeros(1, 3, 3))
    with pytest.raises(TypeError, match="probs must be a floating-point"):
        cas_loss_from_probs(torch.zeros(1, 2, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="ignore_index"):
        CASLoss(ignore_index=-1)


def test_half_precision_logits_are_computed_in_float32() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 5, 5).to(torch.bfloat16)
    mask = torch.randint(0, 3, (2, 5, 5))
    loss = cas_loss(logits, mask)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(cas_loss(logits.float(), mask).item(), abs=1e-7)
