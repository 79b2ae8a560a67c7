"""Low-fidelity labels: the papers' region-label flips, plus boundary and dropped-region noise.

CAS paper Sec. 5.1 / Appendix C: for each image, with probability p, the region labels are permuted
(foreground <-> background for a binary mask); segment geometry is never changed. Each image draws one
uniform number u from its own stream, and is flipped when u < p, so the images flipped at a lower rate are a
subset of those flipped at a higher rate: the noisy copies differ only by the rate. :func:`make_noisy_copy`
writes such a copy of a whole data set (train split only; val and test stay clean).
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from lofiseg.data.format import IGNORE, Dataset, DatasetWriter

NOISE_FIELDS = ("noise_rate", "noise_flipped", "noise_permutation", "noise_dropped")  # manifest columns


@dataclass(frozen=True)
class NoiseResult:
    mask: np.ndarray
    flipped: bool
    permutation: dict[int, int]  # old label -> new label (empty when not flipped)
    dropped: tuple[int, ...]  # labels set to ignore


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """An independent, order-free stream per sample: the same id always draws the same numbers."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(sample_id.encode())]))


def permute_labels(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, int]]:
    """Relabel the regions of ``mask`` by a random permutation other than the identity (255 stays).

    A binary mask is flipped 0 <-> 1; a mask with one region (e.g. all background) is returned unchanged.
    """
    labels = np.unique(mask[mask != IGNORE])
    if labels.size == 1 and labels[0] in (0, 1):
        labels = np.array([0, 1], dtype=mask.dtype)  # binary: flipping an empty mask gives a full one
    if labels.size < 2:
        return mask.copy(), {}
    order = rng.permutation(labels.size)
    while np.array_equal(order, np.arange(labels.size)):
        order = rng.permutation(labels.size)
    lut = np.arange(256, dtype=np.uint8)
    lut[labels] = labels[order]
    return lut[mask], {int(a): int(b) for a, b in zip(labels, labels[order], strict=True)}


def shift_boundaries(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate (pixels > 0) or erode (pixels < 0) every non-background region by ``|pixels|``.

    Dilation gives each background pixel within the distance the label of its nearest region; erosion turns
    region pixels within the distance of a different label into background. Ignore pixels are kept.
    """
    if pixels == 0:
        return mask.copy()
    out = mask.copy()
    labelled = (mask != 0) & (mask != IGNORE)
    if pixels > 0:
        if not labelled.any():
            return out
        dist, (iy, ix) = ndimage.distance_transform_edt(~labelled, return_indices=True)
        grow = (mask == 0) & (dist <= pixels)
        out[grow] = mask[iy[grow], ix[grow]]
    else:
        size = 2 * (-pixels) + 1
        valid = np.where(mask == IGNORE, 0, mask)
        differs = ndimage.maximum_filter(valid, size=size) != ndimage.minimum_filter(valid, size=size)
        out[differs & labelled] = 0
    return out


def drop_regions(mask: np.ndarray, prob: float, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    """Set each non-background region to ignore with probability ``prob``."""
    labels = np.unique(mask[(mask != IGNORE) & (mask != 0)])
    dropped = labels[rng.random(labels.size) < prob]
    out = mask.copy()
    out[np.isin(mask, dropped)] = IGNORE
    return out, tuple(int(v) for v in dropped)


def corrupt(mask: np.ndarray, rate: float, rng: np.random.Generator, boundary_px: int = 0,
            drop_region_prob: float = 0.0) -> NoiseResult:
    """Apply the noise models in a fixed order: flip with probability ``rate``, boundaries, dropped regions.

    The flip decision is the first draw of ``rng``, so it depends only on the sample's stream and the rate.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    flip = bool(rng.random() < rate)
    noisy, perm = permute_labels(mask, rng) if flip else (mask.copy(), {})
    noisy = shift_boundaries(noisy, boundary_px)
    dropped: tuple[int, ...] = ()
    if drop_region_prob > 0:
        noisy, dropped = drop_regions(noisy, drop_region_prob, rng)
    return NoiseResult(noisy, flip and bool(perm), perm, dropped)


def make_noisy_copy(source: Path, out: Path, rate: float, seed: int, boundary_px: int = 0,
                    drop_region_prob: float = 0.0) -> dict[str, int]:
    """Write ``out``: the data set ``source`` with its train masks corrupted at ``rate`` (:func:`corrupt`, one
    stream per image from ``seed``), the images copied byte for byte, and the manifest columns
    ``noise_*`` (rate as ``str(float(rate))``, like params' rate keys; flipped 0|1; permutation ``a>b;...``;
    dropped labels); returns counts of train images, flipped images and dropped regions."""
    src = Dataset(source)
    extra_fields = tuple(f for f in src.extra_fields if f not in NOISE_FIELDS) + NOISE_FIELDS
    counts = {"train": 0, "flipped": 0, "dropped_regions": 0}
    with DatasetWriter(out, extra_fields=extra_fields) as writer:
        for record in tqdm(src, desc=f"noise {rate:g}", unit="img", file=sys.stderr):
            mask = src.mask(record) if record.has_mask else None
            extra = {k: v for k, v in record.extra.items() if k in extra_fields}
            extra.update(noise_rate=str(float(rate)), noise_flipped="0", noise_permutation="", noise_dropped="")
            if mask is not None and record.split == "train":
                result = corrupt(mask, rate, sample_rng(seed, record.id), boundary_px, drop_region_prob)
                mask = result.mask
                counts["train"] += 1
                counts["flipped"] += int(result.flipped)
                counts["dropped_regions"] += len(result.dropped)
                extra.update(
                    noise_flipped=str(int(result.flipped)),
                    noise_permutation=";".join(f"{a}>{b}" for a, b in result.permutation.items()),
                    noise_dropped=";".join(map(str, result.dropped)),
                )
            writer.copy(src, record, mask, extra)
    return counts
