"""Vectorised drawing primitives for the synthetic data: polar shapes, smooth noise, textures, colours.

A shape is star-shaped about its centre and given by its unit boundary radius ``r(theta)`` (a function of
the direction ``(cos theta, sin theta)``). Rasterising it over a meshgrid gives a soft anti-aliased coverage
(``clip(0.5 - d, 0, 1)`` with ``d`` the radial distance to the boundary in pixels) and the hard ground-truth
mask ``d < 0``, i.e. exactly the pixels whose centre is inside the boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

RadiusFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (cos theta, sin theta) -> unit radius
TWO_PI = 2.0 * np.pi
_THETA = np.linspace(0.0, TWO_PI, 720, endpoint=False)
_COS, _SIN = np.cos(_THETA), np.sin(_THETA)


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only ``(ys, xs)`` float32 (size, size) arrays of pixel-centre coordinates (i + 0.5)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


@dataclass(frozen=True)
class UnitShape:
    """A boundary radius function with its enclosed area (1/2 of the integral of r^2) and largest radius."""

    radius: RadiusFn
    area: float
    extent: float


def unit_shape(radius: RadiusFn) -> UnitShape:
    r = radius(_COS, _SIN)
    return UnitShape(radius=radius, area=float(np.pi * np.mean(r * r)), extent=float(r.max()))


def ellipse_radius(aspect: float) -> RadiusFn:
    """Ellipse of area pi with axis ratio ``aspect`` along the shape's u axis."""
    inv_a2, inv_b2 = 1.0 / aspect, float(aspect)  # semi-axes a = sqrt(aspect), b = 1 / sqrt(aspect)
    return lambda c, s: 1.0 / np.sqrt(c * c * inv_a2 + s * s * inv_b2)


def fourier_radius(aspect: float, harmonics: np.ndarray) -> RadiusFn:
    """Ellipse modulated by ``1 + sum_k Re(h_k z^k)``, ``z = exp(i theta)``; ``harmonics[k-1]`` is h_k."""
    base = ellipse_radius(aspect)
    harmonics = np.asarray(harmonics, np.complex64)

    def radius(c: np.ndarray, s: np.ndarray) -> np.ndarray:
        z = (c + 1j * s).astype(np.complex64)
        power, modulation = np.ones_like(z), np.zeros(z.shape, np.float32)
        for h in harmonics:  # a handful of harmonics, each a whole-image operation
            power = power * z
            if h != 0:
                modulation += (h * power).real
        return base(c, s) * (1.0 + modulation)

    return radius


def polygon_radius(points: np.ndarray) -> RadiusFn:
    """Polygon through ``points`` (n, 2), star-shaped about the origin; vertices are sorted by angle.

    Between vertices (r0, t0) and (r1, t1) the boundary is the straight edge
    ``r(t) = r0 r1 sin(t1 - t0) / (r0 sin(t - t0) + r1 sin(t1 - t))``.
    """
    angles = np.mod(np.arctan2(points[:, 1], points[:, 0]), TWO_PI)
    order = np.argsort(angles)
    angles, radii = angles[order] - angles[order][0], np.hypot(points[order, 0], points[order, 1])
    t_next = np.append(angles[1:], TWO_PI)
    r_next = np.append(radii[1:], radii[0])
    if np.any(t_next - angles >= np.pi):
        raise ValueError("polygon_radius: points must surround the origin (angular gaps < pi)")
    start = float(np.arctan2(points[order[0], 1], points[order[0], 0]))

    def radius(c: np.ndarray, s: np.ndarray) -> np.ndarray:
        t = np.mod(np.arctan2(s, c) - start, TWO_PI)
        j = np.clip(np.searchsorted(angles, t, side="right") - 1, 0, len(angles) - 1)
        t0, t1, r0, r1 = angles[j], t_next[j], radii[j], r_next[j]
        return r0 * r1 * np.sin(t1 - t0) / (r0 * np.sin(t - t0) + r1 * np.sin(t1 - t))

    return radius


@dataclass(frozen=True)
class Raster:
    """A shape drawn on the pixel grid: soft coverage, hard mask, and shape-frame coordinates."""

    alpha: np.ndarray  # (H, W) float32 in [0, 1], anti-aliased edge
    mask: np.ndarray  # (H, W) bool, pixel centre inside the boundary (alpha > 0.5)
    u: np.ndarray  # (H, W) float32, pixels along the shape's rotated u axis from the centre
    v: np.ndarray  # (H, W) float32, pixels along the shape's v axis
    radial: np.ndarray  # (H, W) float32, distance from the centre / boundary radius (1 on the boundary)


def _polar(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radius and unit direction (cos, sin) of each point; the centre itself gets direction (1, 0)."""
    rho = np.sqrt(u * u + v * v)
    at_centre = rho < 1e-6
    inv = 1.0 / np.where(at_centre, 1.0, rho)
    return rho, np.where(at_centre, 1.0, u * inv), v * inv


def rasterise(shape: UnitShape, size: int, cx: float, cy: float, angle: float, scale: float) -> Raster:
    """Draw ``shape`` scaled by ``scale`` pixels, rotated by ``angle`` and centred at (cx, cy)."""
    ys, xs = pixel_grid(size)
    dx, dy = xs - np.float32(cx), ys - np.float32(cy)
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v = dx * ca + dy * sa, dy * ca - dx * sa
    rho, c, s = _polar(u, v)
    boundary = np.float32(scale) * shape.radius(c, s).astype(np.float32)
    distance = rho - boundary
    return Raster(alpha=np.clip(0.5 - distance, 0.0, 1.0), mask=distance < 0, u=u, v=v,
                  radial=rho / np.maximum(boundary, 1e-6))


def _blob_unit_radius(c: np.ndarray, s: np.ndarray, aspect: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """Ellipse radius times ``1 + Re(h2 z^2 + h3 z^3)`` in real arithmetic (cos 2t = c^2 - s^2, sin 2t = 2cs,
    cos 3t = c (4c^2 - 3), sin 3t = s (3 - 4s^2)); parameters broadcast against c and s."""
    cc, ss = c * c, s * s
    h2, h3 = harmonics[..., 0], harmonics[..., 1]
    modulation = (h2.real * (cc - ss) - h2.imag * (2.0 * c * s)
                  + h3.real * c * (4.0 * cc - 3.0) - h3.imag * s * (3.0 - 4.0 * ss))
    return (1.0 + modulation) / np.sqrt(cc / aspect + ss * aspect)


def rasterise_blobs(size: int, centres: np.ndarray, angles: np.ndarray, areas: np.ndarray,
                    aspects: np.ndarray, harmonics: np.ndarray) -> np.ndarray:
    """Soft coverage (M, H, W) of M ellipses modulated by 2nd and 3rd harmonics (``harmonics`` (M, 2)
    complex), all at once; ``areas`` in pixels^2."""
    aspects = np.asarray(aspects, np.float32)
    harmonics = np.asarray(harmonics, np.complex64)
    unit = _blob_unit_radius(_COS[::4], _SIN[::4], aspects[:, None], harmonics[:, None])
    scale = np.sqrt(areas / (np.pi * np.mean(unit * unit, axis=1))).astype(np.float32)
    ys, xs = pixel_grid(size)
    dx = xs[None] - centres[:, 0, None, None].astype(np.float32)
    dy = ys[None] - centres[:, 1, None, None].astype(np.float32)
    ca = np.cos(angles).astype(np.float32)[:, None, None]
    sa = np.sin(angles).astype(np.float32)[:, None, None]
    u, v = dx * ca + dy * sa, dy * ca - dx * sa
    rho, c, s = _polar(u, v)
    unit = _blob_unit_radius(c, s, aspects[:, None, None], harmonics[:, None, None])
    return np.clip(0.5 - rho + scale[:, None, None] * unit, 0.0, 1.0)


@lru_cache(maxsize=32)
def _bilinear_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    position = (np.arange(size) + 0.5) / size * cells
    index = np.minimum(position.astype(np.int64), cells - 1)
    frac = (position - index).astype(np.float32)
    return index, frac * frac * (3.0 - 2.0 * frac)  # smoothstep: no visible lattice creases


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """(channels, size, size) float32 value noise in [0, 1]: a random (cells+1)^2 lattice, interpolated."""
    lattice = rng.random((channels, cells + 1, cells + 1), dtype=np.float32)
    index, w = _bilinear_weights(size, cells)
    rows = lattice[:, index, :] * (1.0 - w)[None, :, None] + lattice[:, index + 1, :] * w[None, :, None]
    return rows[:, :, index] * (1.0 - w) + rows[:, :, index + 1] * w


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(..., 3) HSV in [0, 1] (hue wraps) to RGB in [0, 1]: f(n) = V - V S clip(min(k, 4 - k), 0, 1)."""
    hsv = np.asarray(hsv, np.float32)
    h, s, v = np.mod(hsv[..., 0:1], 1.0), np.clip(hsv[..., 1:2], 0, 1), np.clip(hsv[..., 2:3], 0, 1)
    k = np.mod(np.array([5.0, 3.0, 1.0], np.float32) + h * 6.0, 6.0)
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


TEXTURES = ("flat", "radial", "stripes", "bricks", "veins", "speckle", "checker", "dots", "rings", "cloud")


def texture(kind: str, rng: np.random.Generator, raster: Raster, period: float) -> np.ndarray:
    """A (H, W) float32 pattern in [0, 1] in the shape's own frame (it turns with the shape).

    ``period`` is the pattern's scale in pixels; 0 selects the first colour of a pair, 1 the second.
    """
    u, v = raster.u, raster.v
    if kind == "flat":
        return np.zeros_like(u)
    if kind == "radial":  # bright centre fading to the rim
        return np.clip(1.0 - raster.radial * raster.radial, 0.0, 1.0)
    if kind == "stripes":
        phi = rng.uniform(0, np.pi)
        return 0.5 + 0.5 * np.sin((u * np.cos(phi) + v * np.sin(phi)) * (TWO_PI / period) + rng.uniform(0, TWO_PI))
    if kind == "bricks":  # running bond: rows of height p, bricks 2p long, offset by p on odd rows
        mortar = max(1.0, 0.22 * period)
        row = np.floor(v / period)
        along = u + np.mod(row, 2.0) * period
        return ((np.mod(v, period) < mortar) | (np.mod(along, 2.0 * period) < mortar)).astype(np.float32)
    if kind == "veins":  # midrib along u plus chevron side veins
        width = max(0.6, 0.12 * period)
        side = np.abs(np.mod(u - 1.2 * np.abs(v), period) - 0.5 * period) < width
        return ((np.abs(v) < width * 1.3) | side).astype(np.float32)
    if kind == "speckle":
        return rng.random(u.shape, dtype=np.float32) ** 2
    if kind == "checker":
        return np.mod(np.floor(u / period) + np.floor(v / period), 2.0).astype(np.float32)
    if kind == "dots":
        du, dv = np.mod(u, period) - 0.5 * period, np.mod(v, period) - 0.5 * period
        return (du * du + dv * dv < (0.3 * period) ** 2).astype(np.float32)
    if kind == "rings":
        return 0.5 + 0.5 * np.cos(np.sqrt(u * u + v * v) * (TWO_PI / period))
    if kind == "cloud":
        return smooth_noise(rng, u.shape[0], int(rng.integers(4, 9)))[0]
    raise ValueError(f"texture kind must be one of {TEXTURES}, got {kind!r}")
