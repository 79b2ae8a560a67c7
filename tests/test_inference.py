"""Multi-scale + flip test-time inference (lofiseg.infer.predict.multi_scale_probs), worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lofiseg.infer.predict import multi_scale_probs
from lofiseg.models.factory import build_model
from tests.test_predict import RedLogits


class NextPixelLogits(nn.Module):
    """2 channels: logits (0, r[j + 1]), r the first input channel, 0 past the right edge: not mirror-symmetric."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, :1]
        shifted = torch.cat([r[..., 1:], torch.zeros_like(r[..., :1])], dim=-1)
        return torch.cat([torch.zeros_like(shifted), shifted], dim=1)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_one_scale_without_flip_is_the_plain_softmax():
    model = NextPixelLogits()
    images = torch.rand(2, 3, 5, 7)
    assert torch.allclose(multi_scale_probs(model, images), model(images).softmax(dim=1))


def test_flip_averages_the_mirrored_prediction_mirrored_back():
    # r = [0, 1, 2]: plain logits (1, 2, 0); mirrored input (2, 1, 0) -> (1, 0, 0) -> mirrored back (0, 0, 1)
    images = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3).repeat(1, 3, 1, 1)
    probs = multi_scale_probs(NextPixelLogits(), images, flip=True)
    expected = [(sigmoid(1) + sigmoid(0)) / 2, (sigmoid(2) + sigmoid(0)) / 2, (sigmoid(0) + sigmoid(1)) / 2]
    assert probs[0, 1, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert probs.sum(dim=1).allclose(torch.ones(1, 1, 3))


def test_scales_average_predictions_at_the_input_size():
    torch.manual_seed(0)
    model = build_model("tiny_unet", num_classes=3, width=4).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        per_scale = [multi_scale_probs(model, images, (s,)) for s in (0.5, 1.0, 1.5)]
        both = multi_scale_probs(model, images, (0.5, 1.0, 1.5))
    assert all(p.shape == (2, 3, 32, 32) for p in per_scale)
    assert torch.allclose(both, sum(per_scale) / 3, atol=1e-6)
    assert not torch.allclose(per_scale[0], per_scale[2], atol=1e-3)  # the scales do see different inputs


def test_a_pointwise_model_on_a_flat_image_is_scale_invariant():
    images = torch.full((1, 3, 6, 6), 0.8)
    model = RedLogits()
    plain = model(images).softmax(dim=1)
    assert torch.allclose(multi_scale_probs(model, images, (0.5, 2.0), flip=True), plain, atol=1e-6)


@pytest.mark.parametrize("scales", [(), (0.0,), (1.0, -2.0)])
def test_bad_scales_are_named(scales):
    with pytest.raises(ValueError, match=r"test-time scales must be positive factors"):
        multi_scale_probs(NextPixelLogits(), torch.rand(1, 3, 4, 4), scales)
