"""The region inference settings of :mod:`lofiseg.infer.regions` (stdlib only: the params schema builds them
without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lofiseg.infer.bandwidth import cosine_threshold
from lofiseg.infer.crf_params import CRFParams
from lofiseg.losses.discriminative_margins import DELTA_D


@dataclass(frozen=True)
class RegionSettings:
    """Inference settings shared by every method, see the module docstring. These defaults are the ones of
    params ``train_regions``; ``embedding_bandwidth`` comes from the trained model (its delta_d)."""

    max_regions: int = 20
    min_area_fraction: float = 0.02
    bandwidth_degrees: float = 45.0
    embedding_bandwidth: float = DELTA_D  # discriminative: mean-shift radius delta_d
    clustering: Literal["argmax", "kmeans"] = "argmax"  # cas / ce
    scales: tuple[float, ...] = (1.0,)  # projective / discriminative multi-resolution refinement
    max_points: int = 4096  # mean-shift subsample
    seed: int = 0
    crf: CRFParams = field(default_factory=CRFParams)

    def __post_init__(self) -> None:
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {self.max_regions}")
        if not 0.0 <= self.min_area_fraction < 1.0:
            raise ValueError(f"min_area_fraction must lie in [0, 1), got {self.min_area_fraction}")
        if self.clustering not in ("argmax", "kmeans"):
            raise ValueError(f"clustering must be 'argmax' or 'kmeans', got {self.clustering!r}")
        if not self.scales or any(not s > 0 for s in self.scales) or list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must be increasing positive factors, got {self.scales}")
        cosine_threshold(self.bandwidth_degrees)  # checks the angle
