"""Cross-entropy and class-agnostic cross-entropy (CACE, Sharma et al. Sec. 4.2), and the loss factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lofiseg.losses import (
    CASLoss,
    ClassAgnosticCrossEntropyLoss,
    CrossEntropyLoss,
    build_loss,
    cas_loss,
    class_agnostic_cross_entropy_loss,
    cross_entropy_loss,
)


def logits_from_probs(probs: list[list[float]], height: int, width: int) -> torch.Tensor:
    """(B*H*W pixel rows of M probabilities) -> logits (1, M, H, W) with softmax(logits) == probs."""
    p = torch.tensor(probs, dtype=torch.float64)  # (H*W, M)
    return p.log().t().reshape(1, p.shape[1], height, width)


# ----------------------------------------------------------------------------------------------- CE
def test_ce_hand_value_with_ignored_pixel() -> None:
    # Pixel 1: s = (1/2, 1/2), label 0 -> -ln(1/2) = ln 2.
    # Pixel 2: s = (3/4, 1/4), label 1 -> -ln(1/4) = ln 4.
    # Pixel 3: ignored (255).  Mean over the 2 labelled pixels: (ln 2 + ln 4) / 2 = 1.5 ln 2.
    logits = logits_from_probs([[0.5, 0.5], [0.75, 0.25], [0.1, 0.9]], 1, 3)
    mask = torch.tensor([[[0, 1, 255]]])
    assert cross_entropy_loss(logits, mask).item() == pytest.approx(1.5 * math.log(2.0), rel=1e-12)


def test_ce_matches_torch_and_accepts_uint8() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    mask = torch.randint(0, 4, (3, 5, 6))
    mask[0, :2] = 255
    expected = F.cross_entropy(logits, mask, ignore_index=255)
    torch.testing.assert_close(cross_entropy_loss(logits, mask), expected)
    torch.testing.assert_close(cross_entropy_loss(logits, mask.to(torch.uint8)), expected)
    torch.testing.assert_close(CrossEntropyLoss()(logits, mask), expected)


def test_ce_all_ignored_is_zero_with_gradient() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mask = torch.full((2, 4, 4), 255, dtype=torch.uint8)
    loss = cross_entropy_loss(logits, mask)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_gradcheck() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.randint(0, 3, (2, 3, 4))
    mask[1, 0] = 255
    assert torch.autograd.gradcheck(lambda x: cross_entropy_loss(x, mask), (logits,))


@pytest.mark.parametrize(
    ("logits", "mask", "error", "needle"),
    [
        (torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long), ValueError, "logits"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4), TypeError, "mask"),
        (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), ValueError, "(2, 4, 4)"),
        (torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 3, dtype=torch.long), ValueError, "[0, 2]"),
        (torch.randint(0, 3, (2, 3, 4, 4)), torch.zeros(2, 4, 4, dtype=torch.long), TypeError, "floating"),
    ],
)
def test_ce_rejects_bad_input(logits: torch.Tensor, mask: torch.Tensor, error: type, needle: str) -> None:
    with pytest.raises(error, match=None) as info:
        cross_entropy_loss(logits, mask)
    assert needle in str(info.value)


# --------------------------------------------------------------------------------------------- CACE
def test_cace_hand_value() -> None:
    # Image 0: both pixels s = (3/4, 1/4), mask (1, 1).
    #   CE(s, y)     = -ln(1/4) = ln 4;  CE(s, 1 - y) = -ln(3/4) = ln(4/3);  min = ln(4/3).
    # Image 1: pixel s = (1/2, 1/2) label 0, pixel s = (4/5, 1/5) label 0.
    #   CE(s, y)     = (ln 2 + ln(5/4)) / 2 = ln(2.5) / 2;  CE(s, 1 - y) = (ln 2 + ln 5) / 2 = ln(10) / 2.
    #   min = ln(2.5) / 2.
    # Image 2: all ignored -> left out of the mean.  Loss = (ln(4/3) + ln(2.5) / 2) / 2.
    probs = torch.tensor(
        [[[0.75, 0.25], [0.75, 0.25]], [[0.5, 0.5], [0.8, 0.2]], [[0.3, 0.7], [0.6, 0.4]]],
        dtype=torch.float64,
    )  # (B, pixels, M)
    logits = probs.log().permute(0, 2, 1).reshape(3, 2, 1, 2)
    mask = torch.tensor([[[1, 1]], [[0, 0]], [[255, 255]]], dtype=torch.uint8)
    per_image = class_agnostic_cross_entropy_loss(logits, mask, reduction="none")
    torch.testing.assert_close(
        per_image, torch.tensor([math.log(4 / 3), math.log(2.5) / 2, 0.0], dtype=torch.float64)
    )
    expected = (math.log(4 / 3) + math.log(2.5) / 2) / 2
    assert class_agnostic_cross_entropy_loss(logits, mask).item() == pytest.approx(expected, rel=1e-12)


def test_cace_is_flip_invariant_and_bounded_by_ce() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 2, 6, 5, dtype=torch.float64)
    mask = torch.randint(0, 2, (4, 6, 5))
    mask[2, :3] = 255
    flipped = torch.where(mask == 255, mask, 1 - mask)
    loss = class_agnostic_cross_entropy_loss(logits, mask, reduction="none")
    assert torch.equal(loss, class_agnostic_cross_entropy_loss(logits, flipped, reduction="none"))
    # Each image's CACE is at most its plain CE (CE(s, y) is one of the two arguments of the min).
    for b in range(4):
        plain = cross_entropy_loss(logits[b : b + 1], mask[b : b + 1])
        assert loss[b] <= plain + 1e-12


def test_cace_all_ignored_is_zero_with_gradient_and_gradcheck() -> None:
    logits = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    loss = class_agnostic_cross_entropy_loss(logits, torch.full((2, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    torch.manual_seed(3)
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.randint(0, 2, (3, 3, 4))
    mask[0, 1] = 255
    assert torch.autograd.gradcheck(lambda t: class_agnostic_cross_entropy_loss(t, mask), (x,))


def test_cace_rejects_non_binary_masks_and_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"mask must hold labels in \[0, 1\]"):
        class_agnostic_cross_entropy_loss(torch.randn(1, 2, 2, 2), torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match="2 channels"):
        class_agnostic_cross_entropy_loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        ClassAgnosticCrossEntropyLoss(reduction="sum")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ factory
def test_build_loss_makes_the_saliency_losses() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 2, 4, 4)
    mask = torch.randint(0, 2, (2, 4, 4))
    assert isinstance(build_loss("ce"), CrossEntropyLoss)
    assert isinstance(build_loss("cace"), ClassAgnosticCrossEntropyLoss)
    cas = build_loss("CAS", alpha=0.3)
    assert isinstance(cas, CASLoss) and cas.alpha == 0.3
    torch.testing.assert_close(build_loss("ce")(logits, mask), cross_entropy_loss(logits, mask))
    torch.testing.assert_close(
        build_loss("cace")(logits, mask), class_agnostic_cross_entropy_loss(logits, mask)
    )
    torch.testing.assert_close(cas(logits, mask), cas_loss(logits, mask, alpha=0.3))
    assert build_loss("cas")(logits, mask).dim() == 0
    with pytest.raises(ValueError, match="name must be one of"):
        build_loss("dice")
