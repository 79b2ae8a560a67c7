"""The projective mean-shift kernel's bandwidth angle as a cosine threshold or a chord radius (Dille et al.
Sec. 4; see :mod:`lofiseg.infer.meanshift`). Stdlib only: settings validate the angle without torch.
"""

from __future__ import annotations

import math


def cosine_threshold(degrees: float) -> float:
    """Flat projective kernel: neighbours have ``|f . m| >= cos(degrees)`` (45 degrees -> sqrt(2)/2)."""
    _check_degrees(degrees)
    return math.cos(math.radians(degrees))


def chord_bandwidth(degrees: float) -> float:
    """The same kernel as a Euclidean radius between sign-aligned unit vectors: 2 sin(theta / 2)."""
    _check_degrees(degrees)
    return 2.0 * math.sin(math.radians(degrees) / 2.0)


def _check_degrees(degrees: float) -> None:
    if not 0.0 < degrees < 90.0:
        raise ValueError(f"bandwidth angle must lie in (0, 90) degrees, got {degrees}")
