"""Veksler's constants and the two-stage schedule of the regularized loss (Sec. 3.4, Eq. 8), stdlib only: the
params schema takes its defaults from here without importing torch. The losses are in
:mod:`lofiseg.losses.regularized`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The paper's constants, the one source of every default below (and of the params schema's defaults).
DEFAULT_SIGMA = 0.15  # Eq. 2 colour scale of the normal stage (Sec. 3.4)
LAMBDA_REG = 100.0  # Eq. 6 weights of the normal stage (Sec. 3.4)
LAMBDA_V = 1.0
LAMBDA_P = 1.0
LAMBDA_NEG = 2.0  # Eq. 7 (Sec. 3.4)
VOLUMETRIC_TARGET = 0.5  # Eq. 4: mean object size per batch
VOLUMETRIC_MIN = 0.15  # Eq. 4: each object at least this size ...
LAMBDA_S = 5.0  # ... with this weight
BORDER_WIDTH = 3  # Eq. 5: w, the border strip
CENTER_SIZE = 3  # Eq. 5: c, the centre box


def check_positive(name: str, value: float) -> None:
    """ValueError naming ``name`` unless ``value`` > 0."""
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class StageParams:
    """Loss parameters in force during one epoch of the two-stage training (Sec. 3.4)."""

    stage: Literal["annealing", "normal", "negative"]
    epoch: int
    sigma: float
    lambda_reg: float
    lambda_v: float
    lambda_p: float
    lambda_neg: float


@dataclass(frozen=True)
class RegularizedLossSchedule:
    """Annealing stage (Eq. 8: sigma rises, ``lambda_reg = lambda_v = lambda_p = 1``), then the normal stage
    (``lambda_reg = 100``, ``sigma = sigma_end = 0.15``), then optionally the negative stage (the normal
    stage plus negative images weighted by ``lambda_neg = 2``; ``lambda_neg`` is 0 before it, Sec. 3.4).

    Epochs are 0-based: epochs ``0 .. annealing_epochs - 1`` anneal (step ``i = epoch + 1`` of Eq. 8).
    ``sigma_rule="code"`` spaces sigma evenly from ``sigma_start`` to ``sigma_end`` inclusive (author's code);
    ``"paper"`` uses Eq. 8 as printed, ``sigma_start + (i / n) (sigma_end - sigma_start)``.

    Defaults are the paper's: 15 annealing and 50 normal epochs (Sec. 4.1); the negative stage (200 more
    epochs with Eq. 7 in Sec. 3.4) is off unless asked for.
    """

    annealing_epochs: int = 15
    normal_epochs: int = 50
    negative_epochs: int = 0
    sigma_start: float = 0.05
    sigma_end: float = DEFAULT_SIGMA
    annealing_lambda_reg: float = 1.0
    normal_lambda_reg: float = LAMBDA_REG
    lambda_v: float = LAMBDA_V
    lambda_p: float = LAMBDA_P
    lambda_neg: float = LAMBDA_NEG
    sigma_rule: Literal["code", "paper"] = "code"

    def __post_init__(self) -> None:
        for name in ("annealing_epochs", "normal_epochs", "negative_epochs"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_positive("sigma_start", self.sigma_start)
        check_positive("sigma_end", self.sigma_end)
        if self.sigma_rule not in ("code", "paper"):
            raise ValueError(f"sigma_rule must be 'code' or 'paper', got {self.sigma_rule!r}")

    @property
    def total_epochs(self) -> int:
        return self.annealing_epochs + self.normal_epochs + self.negative_epochs

    def annealing_sigma(self, step: int) -> float:
        """Sigma at annealing step ``1 <= step <= annealing_epochs`` (Eq. 8)."""
        n = self.annealing_epochs
        if not 1 <= step <= n:
            raise ValueError(f"step must be in [1, {n}], got {step}")
        if self.sigma_rule == "paper":
            fraction = step / n
        else:
            fraction = (step - 1) / (n - 1) if n > 1 else 1.0
        return self.sigma_start + fraction * (self.sigma_end - self.sigma_start)

    def at(self, epoch: int) -> StageParams:
        """The parameters for a 0-based ``epoch`` in ``[0, total_epochs)``."""
        if not 0 <= epoch < self.total_epochs:
            raise ValueError(f"epoch must be in [0, {self.total_epochs}), got {epoch}")
        if epoch < self.annealing_epochs:
            return StageParams(
                "annealing",
                epoch,
                self.annealing_sigma(epoch + 1),
                self.annealing_lambda_reg,
                self.lambda_v,
                self.lambda_p,
                0.0,
            )
        stage: Literal["normal", "negative"] = (
            "normal" if epoch < self.annealing_epochs + self.normal_epochs else "negative"
        )
        lambda_neg = self.lambda_neg if stage == "negative" else 0.0
        return StageParams(
            stage, epoch, self.sigma_end, self.normal_lambda_reg, self.lambda_v, self.lambda_p, lambda_neg
        )

    def stages(self) -> list[StageParams]:
        """Every epoch's parameters, in order (for logging the whole schedule)."""
        return [self.at(epoch) for epoch in range(self.total_epochs)]


def sigma_schedule(epoch: int, schedule: RegularizedLossSchedule | None = None) -> StageParams:
    """Parameters ``(sigma, lambda_reg, lambda_v, lambda_p, ...)`` of a 0-based epoch (default schedule)."""
    return (schedule or RegularizedLossSchedule()).at(epoch)
