"""The dense CRF's settings (stdlib only: the params schema builds them without importing numpy or torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings (pydensecrf names): mean-field iterations, Gaussian and bilateral kernels.

    The defaults are pydensecrf's example values (sxy in pixels, srgb in colour levels); they are the one
    source of the params schema's defaults. At the 64 px default image size the 80 px bilateral kernel spans
    the whole image.
    """

    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {self.iterations!r}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("gaussian_compat", "bilateral_compat"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
