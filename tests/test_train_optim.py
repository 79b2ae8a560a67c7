"""The optimiser of a training section: Adam by default, SGD with momentum and weight decay, clear errors."""

from __future__ import annotations

import pytest
import torch
import yaml

from lofiseg.config import ParamsError, parse_params
from lofiseg.train.optim import build_optimizer
from tests.pipeline_repo import PROJECT


def _model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)  # a frozen encoder
    return model


def test_sgd_gets_momentum_and_weight_decay_and_only_trainable_parameters():
    model = _model()
    sgd = build_optimizer("sgd", model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 5e-4)
    assert [p.shape for p in group["params"]] == [(1, 2), (1,)]  # the frozen layer stays out
    # one step by hand: v = g + wd w; w <- w - lr v (first step: momentum buffer = v)
    weight = model[1].weight
    before = weight.detach().clone()
    weight.grad = torch.ones_like(weight)
    model[1].bias.grad = torch.zeros_like(model[1].bias)
    sgd.step()
    assert torch.allclose(weight.detach(), before - 0.01 * (1 + 5e-4 * before))


def test_adam_is_the_default_and_an_unknown_name_is_refused():
    adam = build_optimizer("adam", _model().parameters(), lr=1e-3)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match=r"optimizer.name must be one of \['adam', 'sgd'\], got 'rmsprop'"):
        build_optimizer("rmsprop", _model().parameters(), lr=1e-3)


def test_params_name_the_optimizer_key():
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params = parse_params(raw)
    for section in (params.train_saliency, params.train_single, params.train_deeplab, params.train_regions):
        assert section.optimizer.model_dump() == {"name": "adam", "momentum": 0.9, "weight_decay": 0.0}
    raw["train_deeplab"]["optimizer"] = {"name": "rmsprop"}
    with pytest.raises(ParamsError, match=r"train_deeplab\.optimizer\.name"):
        parse_params(raw)
