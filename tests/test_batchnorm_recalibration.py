"""Precise BN after training: running statistics recomputed over the training images with the final weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lofiseg.models.factory import build_model
from lofiseg.train.batchnorm import recalibrate_batchnorm, trainable_batchnorms


def test_running_statistics_become_the_average_of_the_batch_statistics():
    layer = nn.BatchNorm2d(1)
    model = nn.Sequential(layer)
    # batch 1: values 0 and 2 (mean 1, unbiased var 4/3 over 2 x 1 x 1 x 2 px: 0,0,2,2 -> var 4/3);
    # batch 2: values 4 and 4 (mean 4, var 0): the running mean is their plain average 2.5, the var 2/3
    images = torch.tensor([0.0, 2.0, 4.0, 4.0]).view(4, 1, 1, 1).expand(4, 1, 1, 2).contiguous()
    model.eval()
    assert recalibrate_batchnorm(model, images, batch_size=2) == 1
    assert layer.running_mean.item() == pytest.approx(2.5)
    assert layer.running_var.item() == pytest.approx((4 / 3 + 0) / 2)
    assert layer.momentum == 0.1 and not model.training  # restored


def test_a_frozen_encoder_keeps_its_statistics_and_the_decoder_follows_the_images():
    torch.manual_seed(0)
    model = build_model(num_classes=2, arch="unet", encoder="resnet18", encoder_weights=None, freeze_encoder=True,
                        width=8, encoder_depth=3)
    layers = trainable_batchnorms(model)
    frozen = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert layers and frozen and not set(map(id, layers)) & set(map(id, frozen))
    before = [m.running_mean.clone() for m in frozen]
    images = torch.rand(6, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        stale = model(images)
    assert recalibrate_batchnorm(model, images, batch_size=3, flip=True) == len(layers)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen, strict=True))
    with torch.no_grad():
        assert not torch.allclose(model(images), stale)  # the decoder now normalises with these images' stats
    assert not model.training


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="float"):
        recalibrate_batchnorm(nn.BatchNorm2d(3), torch.zeros(2, 3, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batchnorm(nn.BatchNorm2d(3), torch.zeros(2, 3, 4, 4), 1)
