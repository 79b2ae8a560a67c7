"""The step registry: one name per loss, the projective step's degenerate-image fraction."""

from __future__ import annotations

import pytest
import torch

from lofiseg.losses import CASLoss
from lofiseg.losses.regularized import RegularizedLossSchedule
from lofiseg.train.regularized_plan import RegularizedStep, training_plan
from lofiseg.train.steps import ProjectiveStep, build_step


def test_names_give_their_steps_and_unknown_names_are_refused():
    assert isinstance(build_step("cas", alpha=0.3).loss, CASLoss) and build_step("cas", alpha=0.3).loss.alpha == 0.3
    assert isinstance(build_step("projective"), ProjectiveStep)
    plan = training_plan(RegularizedLossSchedule(annealing_epochs=1, normal_epochs=0, negative_epochs=0), 8)
    assert isinstance(build_step("regularized", plan=plan), RegularizedStep)
    with pytest.raises(ValueError, match="name must be one of"):
        build_step("dice")
    with pytest.raises(ValueError, match="region_classes goes with loss 'ce', not 'cas'"):
        build_step("cas", region_classes=4)


def test_projective_step_reports_the_degenerate_fraction_once_per_epoch():
    step = build_step("projective")
    net = torch.nn.Conv2d(3, 2, 1)  # d = 2 dimensions
    mask = torch.zeros(2, 8, 8, dtype=torch.long)  # image 0: one entity (label 0 everywhere)
    mask[1, :4, 4:], mask[1, 4:, :4], mask[1, 4:, 4:] = 1, 2, 3  # image 1: K = 4 quadrants > d: degenerate
    step(net, {"image": torch.rand(2, 3, 8, 8), "mask": mask}, 0)
    assert step.epoch_metrics(0) == {"degenerate_fraction": 0.5}
    assert step.epoch_metrics(1) == {"degenerate_fraction": 0.0}  # reset after reading
