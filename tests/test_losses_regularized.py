"""Regularized losses (Veksler, Eq. 1-8) and the optional dense-CRF loss: hand values, gradients, schedule,
and the Sec. 3.2 idea that the ground truth has a lower sparse-CRF loss than worse masks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lofiseg.losses import (
    CompleteRegularizedLoss,
    DenseCRFLoss,
    NegativeLoss,
    PositionalLoss,
    RegularizedLossSchedule,
    SparseCRFLoss,
    StageParams,
    VolumetricLoss,
    complete_regularized_loss,
    complete_regularized_terms,
    dense_crf_loss,
    dense_crf_loss_from_foreground,
    edge_weights,
    negative_loss,
    positional_loss,
    sigma_schedule,
    sparse_crf_loss,
    sparse_crf_loss_from_foreground,
    volumetric_loss,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(3, 1, 1)


def logits_of(foreground: torch.Tensor) -> torch.Tensor:
    """Foreground map (B, H, W) in (0, 1) -> 2-channel logits whose softmax foreground channel equals it."""
    return torch.stack([(1 - foreground).log(), foreground.log()], dim=1)


def hard_logits(mask: torch.Tensor) -> torch.Tensor:
    """Binary mask (B, H, W) -> logits with softmax foreground = mask up to 4e-18 (float64)."""
    return torch.stack([-(2 * mask - 1) * 20, (2 * mask - 1) * 20], dim=1).to(torch.float64)


# Two colours at squared distance 0.3^2 + 0.4^2 = 0.25; left column colour A, right column colour B.
TWO_COLOUR_2X2 = torch.tensor(
    [[[0.0, 0.3], [0.0, 0.3]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.4], [0.0, 0.4]]], dtype=torch.float64
).unsqueeze(0)


# --------------------------------------------------------------------------------------------- Eq. 2
def test_edge_weights_hand_value() -> None:
    # ||C_p - C_q||^2 = 0.25 across the columns, 0 down the columns; sigma = 0.5:
    # horizontal w = exp(-0.25 / (2 * 0.25)) = exp(-0.5); vertical w = exp(0) = 1.
    vertical, horizontal = edge_weights(TWO_COLOUR_2X2, sigma=0.5)
    assert vertical.shape == (1, 1, 2) and horizontal.shape == (1, 2, 1)
    assert torch.allclose(vertical, torch.ones_like(vertical))
    assert torch.allclose(horizontal, torch.full_like(horizontal, math.exp(-0.5)), rtol=1e-14)


# ------------------------------------------------------------------------------------------ Eq. 1-3
def test_sparse_crf_hand_value() -> None:
    # x = [[0.2, 0.7], [0.4, 0.9]], sigma = 0.5.
    # horizontal pairs: |0.2 - 0.7| = |0.4 - 0.9| = 0.5, weight exp(-0.5) -> mean 0.5 exp(-0.5)
    # vertical pairs:   |0.2 - 0.4| = |0.7 - 0.9| = 0.2, weight 1 -> mean 0.2
    # loss = (0.5 exp(-0.5) + 0.2) / 2 = 0.2516326...
    x = torch.tensor([[[0.2, 0.7], [0.4, 0.9]]], dtype=torch.float64)
    expected = (0.5 * math.exp(-0.5) + 0.2) / 2
    assert sparse_crf_loss(logits_of(x), TWO_COLOUR_2X2, sigma=0.5).item() == pytest.approx(
        expected, rel=1e-12
    )
    assert sparse_crf_loss_from_foreground(x, TWO_COLOUR_2X2, sigma=0.5).item() == pytest.approx(expected)
    assert SparseCRFLoss(sigma=0.5)(logits_of(x), TWO_COLOUR_2X2).item() == pytest.approx(expected)


def test_sparse_crf_of_binary_masks_is_normalised_potts() -> None:
    # Cut along the colour edge: only the 2 horizontal pairs differ, weight exp(-0.5); mean over the 2
    # horizontal pairs = exp(-0.5), vertical mean 0 -> exp(-0.5) / 2.
    # Cut across the colours (top vs bottom row): 2 vertical pairs of weight 1 -> 1 / 2.
    along = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    across = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    image = TWO_COLOUR_2X2.expand(2, -1, -1, -1)
    values = sparse_crf_loss_from_foreground(torch.cat([along, across]), image, sigma=0.5, reduction="none")
    assert values.tolist() == pytest.approx([math.exp(-0.5) / 2, 0.5], rel=1e-12)


# --------------------------------------------------------------------------------------------- Eq. 4
def test_volumetric_hand_value() -> None:
    # sizes x_bar = 0.1 and 0.6: first term ((0.1 + 0.6) / 2 - 0.5)^2 = 0.0225.
    # only 0.1 < 0.15: (0.1 - 0.15)^2 = 0.0025; batch mean 0.00125 * lambda_s 5 = 0.00625 -> 0.02875.
    # paper's sum: 0.0025 * 5 = 0.0125 -> 0.035.
    x = torch.stack(
        [torch.full((2, 2), 0.1, dtype=torch.float64), torch.full((2, 2), 0.6, dtype=torch.float64)]
    )
    assert volumetric_loss(logits_of(x)).item() == pytest.approx(0.02875, rel=1e-12)
    assert volumetric_loss(logits_of(x), min_size_reduction="sum").item() == pytest.approx(0.035, rel=1e-12)
    assert VolumetricLoss(lambda_s=0.0)(logits_of(x)).item() == pytest.approx(0.0225, rel=1e-12)


# --------------------------------------------------------------------------------------------- Eq. 5
def test_positional_hand_value() -> None:
    # 6 x 6, border_width 1 (20 border pixels), center_size 2 (rows/cols 2..3).
    # Image 0: border 0.1, centre 0.8, rest 0.6 -> 0.1^2 + (0.8 - 1)^2 = 0.01 + 0.04 = 0.05.
    # Image 1: everything 0.5 -> 0.25 + 0.25 = 0.5.  Batch mean 0.275.
    first = torch.full((6, 6), 0.6, dtype=torch.float64)
    first[0, :] = first[-1, :] = first[:, 0] = first[:, -1] = 0.1
    first[2:4, 2:4] = 0.8
    x = torch.stack([first, torch.full((6, 6), 0.5, dtype=torch.float64)])
    per_image = positional_loss(logits_of(x), border_width=1, center_size=2, reduction="none")
    assert per_image.tolist() == pytest.approx([0.05, 0.5], rel=1e-12)
    assert PositionalLoss(1, 2)(logits_of(x)).item() == pytest.approx(0.275, rel=1e-12)


def test_positional_default_sets_are_three_wide_border_and_central_three_by_three() -> None:
    # 9 x 9: border of width 3 leaves the central 3 x 3 (rows/cols 3..5), which is also the centre box C.
    # Foreground exactly on that box: border mean 0, centre mean 1 -> loss 0. Shifting it by one row puts
    # 3 of the 72 border pixels in the foreground and 3 of the 9 centre pixels out:
    # (3/72)^2 + (6/9 - 1)^2 = 1/576 + 1/9.
    x = torch.full((1, 9, 9), 1e-12, dtype=torch.float64)
    x[0, 3:6, 3:6] = 1 - 1e-12
    assert positional_loss(logits_of(x)).item() == pytest.approx(0.0, abs=1e-10)
    shifted = torch.roll(x, 1, dims=1)
    assert positional_loss(logits_of(shifted)).item() == pytest.approx(1 / 576 + 1 / 9, rel=1e-9)


# --------------------------------------------------------------------------------------------- Eq. 7
def test_negative_hand_value() -> None:
    # mean foreground 0.3 -> lambda_neg 2 * 0.09 = 0.18; image with mean 0.1 -> 0.02; batch mean 0.1.
    x = torch.stack(
        [torch.full((3, 3), 0.3, dtype=torch.float64), torch.full((3, 3), 0.1, dtype=torch.float64)]
    )
    assert negative_loss(logits_of(x), reduction="none").tolist() == pytest.approx([0.18, 0.02], rel=1e-12)
    assert NegativeLoss()(logits_of(x)).item() == pytest.approx(0.1, rel=1e-12)


# --------------------------------------------------------------------------------------------- Eq. 6
def test_complete_loss_hand_value() -> None:
    # 4 x 4, one colour (every w_pq = 1); x = 0.2 except the central 2 x 2 block (rows/cols 1..2) = 0.8.
    # sparse-CRF: vertical pairs 3 x 4 = 12; columns 0 and 3 are constant, columns 1 and 2 read
    #   0.2, 0.8, 0.8, 0.2 -> |diffs| 0.6 + 0 + 0.6 = 1.2 each -> mean 2.4 / 12 = 0.2; horizontal the same;
    #   L_reg = (0.2 + 0.2) / 2 = 0.2.
    # volumetric: x_bar = (12 * 0.2 + 4 * 0.8) / 16 = 0.35 -> (0.35 - 0.5)^2 = 0.0225 (0.35 >= 0.15).
    # positional (w = 1, c = 2): border = the 12 outer pixels, 0.2 -> 0.04; centre 0.8 -> 0.04; L_p = 0.08.
    # normal stage: 100 * 0.2 + 0.0225 + 0.08 = 20.1025; annealing weights (1, 1, 1): 0.3025.
    x = torch.full((1, 4, 4), 0.2, dtype=torch.float64)
    x[0, 1:3, 1:3] = 0.8
    image = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    terms = complete_regularized_terms(logits_of(x), image, border_width=1, center_size=2)
    assert terms.sparse_crf.item() == pytest.approx(0.2, rel=1e-12)
    assert terms.volumetric.item() == pytest.approx(0.0225, rel=1e-12)
    assert terms.positional.item() == pytest.approx(0.08, rel=1e-12)
    assert terms.total.item() == pytest.approx(20.1025, rel=1e-12)
    annealing = CompleteRegularizedLoss(lambda_reg=1.0, border_width=1, center_size=2)
    assert annealing(logits_of(x), image).item() == pytest.approx(0.3025, rel=1e-12)


def test_complete_loss_is_the_weighted_sum_and_handles_negatives() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    image = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    params = {"sigma": 0.3, "lambda_reg": 7.0, "lambda_v": 2.0, "lambda_p": 3.0}
    terms = complete_regularized_terms(logits, image, **params)
    reg, vol, pos = sparse_crf_loss(logits, image, 0.3), volumetric_loss(logits), positional_loss(logits)
    assert terms.sparse_crf.item() == pytest.approx(reg.item(), rel=1e-12)
    assert terms.total.item() == pytest.approx(7 * reg.item() + 2 * vol.item() + 3 * pos.item(), rel=1e-12)
    assert terms.negative.item() == 0.0
    assert complete_regularized_loss(logits, image, **params).item() == pytest.approx(terms.total.item())

    # Negative images are left out of Eq. 6 and get Eq. 7 (lambda_neg = 2) instead.
    negative = torch.tensor([False, True, False, True])
    with_neg = complete_regularized_terms(logits, image, negative, **params)
    keep = ~negative
    expected = (
        7 * sparse_crf_loss(logits[keep], image[keep], 0.3).item()
        + 2 * volumetric_loss(logits[keep]).item()
        + 3 * positional_loss(logits[keep]).item()
        + negative_loss(logits[negative]).item()
    )
    assert with_neg.total.item() == pytest.approx(expected, rel=1e-12)
    only_negatives = complete_regularized_terms(logits, image, torch.ones(4, dtype=torch.bool))
    assert only_negatives.total.item() == pytest.approx(negative_loss(logits).item(), rel=1e-12)


def test_complete_loss_module_follows_the_schedule() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    image = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    loss = CompleteRegularizedLoss()
    loss.set_stage(sigma_schedule(0))
    assert (loss.sigma, loss.lambda_reg, loss.lambda_v, loss.lambda_p) == (0.05, 1.0, 1.0, 1.0)
    expected = complete_regularized_loss(logits, image, sigma=0.05, lambda_reg=1.0)
    assert loss(logits, image).item() == pytest.approx(expected.item(), rel=1e-12)
    loss.set_stage(sigma_schedule(15))
    assert (loss.sigma, loss.lambda_reg) == (0.15, 100.0)


# --------------------------------------------------------------------------------------------- Eq. 8
def test_schedule_values() -> None:
    schedule = RegularizedLossSchedule()
    assert schedule.total_epochs == 65
    # Author's code: sigma = 0.05 + (i - 1) / 14 * 0.1 for steps i = 1..15 -> epoch 0: 0.05, epoch 7: 0.10,
    # epoch 14: 0.15.
    assert schedule.at(0) == StageParams("annealing", 0, 0.05, 1.0, 1.0, 1.0, 0.0)
    assert schedule.at(7).sigma == pytest.approx(0.10, abs=1e-15)
    assert schedule.at(14).sigma == pytest.approx(0.15, abs=1e-15)
    sigmas = [p.sigma for p in schedule.stages()[:15]]
    assert all(b > a for a, b in itertools.pairwise(sigmas))
    assert schedule.at(15) == StageParams("normal", 15, 0.15, 100.0, 1.0, 1.0, 0.0)
    assert schedule.at(64).stage == "normal"
    # Eq. 8 as printed: sigma(i) = 0.05 + i / 15 * 0.1 -> epoch 0 (i = 1): 0.05666..., epoch 14: 0.15.
    paper = RegularizedLossSchedule(sigma_rule="paper")
    assert paper.at(0).sigma == pytest.approx(0.05 + 0.1 / 15, abs=1e-15)
    assert paper.at(14).sigma == pytest.approx(0.15, abs=1e-15)
    # Optional negative stage after the normal one (lambda_neg = 2, Sec. 3.4).
    with_negative = RegularizedLossSchedule(negative_epochs=200)
    assert with_negative.at(65) == StageParams("negative", 65, 0.15, 100.0, 1.0, 1.0, 2.0)
    assert with_negative.total_epochs == 265
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 65\), got 65"):
        schedule.at(65)
    with pytest.raises(ValueError, match="sigma_rule"):
        RegularizedLossSchedule(sigma_rule="linear")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ Sec. 3.2
def synthetic_disc_image(
    size: int = 48, radius: float = 14.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A striped orange disc on a blue background with pixel noise, ImageNet-normalised (1, 3, S, S)."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.arange(size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    centre = (size - 1) / 2
    disc = (rows - centre) ** 2 + (cols - centre) ** 2 <= radius**2
    inside = torch.tensor([0.80, 0.35, 0.20], dtype=torch.float64).view(3, 1, 1) + 0.04 * torch.sin(
        cols / 1.5 + rows / 3.0
    )
    outside = torch.tensor([0.25, 0.45, 0.70], dtype=torch.float64).view(3, 1, 1)
    noise = 0.02 * torch.randn(3, size, size, generator=generator, dtype=torch.float64)
    rgb = torch.where(disc, inside, outside) + noise
    return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).unsqueeze(0), disc.to(torch.float64)


def worse_masks(truth: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    size = truth.shape[-1]
    coords = torch.arange(size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    centre = (size - 1) / 2
    generator = torch.Generator().manual_seed(seed)
    return {
        "shifted": torch.roll(truth, shifts=(4, 4), dims=(0, 1)),
        "eroded": ((rows - centre) ** 2 + (cols - centre) ** 2 <= 11.0**2).to(torch.float64),
        "dilated": ((rows - centre) ** 2 + (cols - centre) ** 2 <= 17.0**2).to(torch.float64),
        "random": (torch.rand(size, size, generator=generator) < 0.5).to(torch.float64),
        "random_same_area": (torch.rand(size, size, generator=generator) < truth.mean()).to(torch.float64),
    }


@pytest.mark.parametrize("sigma", [0.05, 0.10, 0.15])
def test_ground_truth_has_the_lowest_sparse_crf_loss(sigma: float) -> None:
    image, truth = synthetic_disc_image()
    others = worse_masks(truth)
    masks = torch.stack([truth, *others.values()])
    values = sparse_crf_loss_from_foreground(masks, image.expand(len(masks), -1, -1, -1), sigma, "none")
    for name, value in zip(others, values[1:], strict=True):
        assert values[0] < value, f"ground truth {values[0].item():.3g} not below {name} {value.item():.3g}"


def test_complete_loss_prefers_ground_truth_to_the_trivial_solutions() -> None:
    # The sparse-CRF alone is 0 for the empty and the full mask; Eq. 6's helpers rule them out.
    image, truth = synthetic_disc_image()
    masks = torch.stack([truth, torch.zeros_like(truth), torch.ones_like(truth)])
    images = image.expand(3, -1, -1, -1)
    totals = [complete_regularized_loss(hard_logits(m[None]), image).item() for m in masks]
    assert totals[0] < totals[1] and totals[0] < totals[2]
    assert sparse_crf_loss(hard_logits(masks), images, reduction="none")[1:].tolist() == pytest.approx([0, 0])


def test_dense_crf_ranks_ground_truth_lowest_too() -> None:
    image, truth = synthetic_disc_image()
    others = worse_masks(truth)
    masks = torch.stack([truth, *others.values()])
    values = dense_crf_loss_from_foreground(masks, image.expand(len(masks), -1, -1, -1), reduction="none")
    assert bool((values[0] < values[1:]).all())


# ------------------------------------------------------------------------------------ dense-CRF values
def test_dense_crf_hand_value_and_pooling() -> None:
    # Two pixels (1 x 2), colours at squared distance 0.25, centres (0.5, 0.5) and (0.5, 1.5): distance^2 1.
    # sigma_color 0.5, sigma_xy 1: w = exp(-0.25 / 0.5 - 1 / 2) = exp(-1); x = (0.2, 0.7).
    # Ordered pairs p != q: 2, each w * 0.5 -> mean 0.5 exp(-1).
    image = TWO_COLOUR_2X2[:, :, :1, :]
    x = torch.tensor([[[0.2, 0.7]]], dtype=torch.float64)
    value = dense_crf_loss(logits_of(x), image, sigma_color=0.5, sigma_xy=1.0, factor=1)
    assert value.item() == pytest.approx(0.5 * math.exp(-1), rel=1e-12)
    # The same scene at twice the resolution, pooled by 2: cell centres (1, 1) and (1, 3), distance^2 4;
    # with sigma_xy 2 the weight is again exp(-0.25 / 0.5 - 4 / 8) = exp(-1).
    big_image = image.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    big_x = x.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    module = DenseCRFLoss(sigma_color=0.5, sigma_xy=2.0, factor=2)
    assert module(logits_of(big_x), big_image).item() == pytest.approx(0.5 * math.exp(-1), rel=1e-12)


# -------------------------------------------------------------------------------------------- gradients
def test_gradcheck_each_term() -> None:
    torch.manual_seed(2)
    image = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    logits = torch.randn(2, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    small = logits.detach().clone()
    small[:, 1] -= 3.0  # foreground sizes well below 0.15: the min-size term of Eq. 4 is active
    small.requires_grad_(True)
    negative = torch.tensor([False, True])
    checks = {
        "sparse_crf": (lambda x: sparse_crf_loss(x, image, 0.5, "none"), logits),
        "volumetric": (volumetric_loss, logits),
        "volumetric_min_size": (lambda x: volumetric_loss(x, min_size_reduction="sum"), small),
        "positional": (lambda x: positional_loss(x, 2, 3, "none"), logits),
        "negative": (lambda x: negative_loss(x, 2.0, "none"), logits),
        "complete": (lambda x: complete_regularized_loss(x, image, negative, sigma=0.5), logits),
        "dense_crf": (lambda x: dense_crf_loss(x, image, 0.5, 2.0, 1, "none"), logits),
    }
    for name, (function, inputs) in checks.items():
        assert torch.autograd.gradcheck(function, (inputs,)), name


# ---------------------------------------------------------------------------------------------- errors
def test_rejects_bad_input() -> None:
    logits = torch.randn(2, 2, 4, 4)
    image = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="logits must have 2 channels"):
        sparse_crf_loss(torch.randn(2, 3, 4, 4), image)
    with pytest.raises(ValueError, match=r"image must have shape \(B, 3, H, W\) = \(2, 3, 4, 4\)"):
        sparse_crf_loss(logits, torch.randn(2, 1, 4, 4))
    with pytest.raises(TypeError, match="image must be a floating-point"):
        sparse_crf_loss(logits, torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        SparseCRFLoss(sigma=0.0)
    with pytest.raises(ValueError, match="center_size"):
        positional_loss(logits, center_size=5)
    with pytest.raises(ValueError, match="min_size_reduction"):
        volumetric_loss(logits, min_size_reduction="max")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="negative must be a torch.bool tensor"):
        complete_regularized_loss(logits, image, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"negative must have shape \(2,\)"):
        complete_regularized_loss(logits, image, torch.tensor([True]))
    with pytest.raises(ValueError, match="factor"):
        DenseCRFLoss(factor=0)
