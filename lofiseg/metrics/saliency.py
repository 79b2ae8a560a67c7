"""Salient-object-detection metrics of CAS (Sharma et al., Sec. 5.1 "Evaluation Metrics"; Tables 1-3).

Inputs: a continuous saliency map ``S`` in [0, 1] (float ``[H, W]``, numpy or torch) and a ground-truth label
map ``G`` (integer ``[H, W]``) with 0 = background, 1 = salient, ``ignore_index`` (255) = not evaluated.
pysodmetrics expects uint8 0..255 maps and min-max normalises the prediction; here the float map is passed
unchanged (``normalize=False``) and ``G`` becomes a boolean mask, so no rescaling happens.

* MAE = mean |S - G| over the evaluated pixels (CAS Sec. 5.1).
* Adaptive F-beta: ``B = S > T`` with ``T = min(2 mean(S), 1)`` (CAS Sec. 5.1, strict ``>`` as in the paper;
  pysodmetrics uses ``>=``, which differs only on ties, e.g. an all-zero map: ``S > 0`` is empty, F = 0),
  ``F = (1 + b2) P R / (b2 P + R)`` with ``b2 = beta^2 = 0.3``; F = 0 when no true positive exists.
* F-beta curve / max-F: pysodmetrics' dynamic binarisation, ``B_t = floor(255 S) >= t`` for t = 0..255;
  the dataset max-F is the maximum over t of the per-image F curves averaged over images (pysodmetrics
  ``FmeasureV2`` "dynamic" results, as the SOD toolkits report it).
* Weighted F-beta (Margolin et al. 2014, cited by CAS as [23]) and S-measure (Fan et al. 2017): pysodmetrics
  ``WeightedFmeasure`` / ``Smeasure``; CAS sets b2 = 0.3 for the weighted F too. Empty ``G``: weighted F = 0
  (pysodmetrics' rule), S-measure = 1 - mean(S).

Ignore pixels: MAE and both F-measures are pixel statistics and use the non-ignored pixels only. Weighted F
and S-measure depend on the spatial layout (distance transform, Gaussian filter, quadrants) and are NaN for
an image that contains ignore pixels; ``SaliencyMeter`` averages them over the images where they are defined.
An image without any evaluated pixel raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from py_sod_metrics import MAE, Smeasure, WeightedFmeasure
from py_sod_metrics.fmeasurev2 import FmeasureHandler, FmeasureV2

__all__ = [
    "SaliencyMeter",
    "fbeta_adaptive",
    "fbeta_curve",
    "fbeta_max",
    "fbeta_weighted",
    "mae",
    "saliency_scores",
    "s_measure",
]

MapArray = np.ndarray | torch.Tensor
NUM_THRESHOLDS = 256


def _to_numpy(x: MapArray, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def _prepare(pred: MapArray, gt: MapArray, ignore_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert to (saliency float64 [H, W], foreground bool [H, W], evaluated bool [H, W])."""
    s = _to_numpy(pred, "pred")
    g = _to_numpy(gt, "gt")
    if s.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {s.shape} and gt {g.shape}")
    if s.ndim != 2:
        raise ValueError(f"pred and gt must be single maps [H, W], got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer) or s.dtype == bool):
        raise TypeError(f"pred must be a real-valued saliency map, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if s.size == 0:
        raise ValueError(f"pred must not be empty, got shape {s.shape}")
    if np.isnan(s).any() or s.min() < 0.0 or s.max() > 1.0:
        raise ValueError(
            f"pred values must lie in [0, 1], got min {np.nanmin(s)} and max {np.nanmax(s)}"
            + (" and NaN" if np.isnan(s).any() else "")
        )
    if not (np.issubdtype(g.dtype, np.integer) or g.dtype == bool):
        raise TypeError(
            f"gt must be an integer label map with values in {{0, 1, {ignore_index}}}, got dtype {g.dtype}"
        )
    bad = (g != 0) & (g != 1) & (g != ignore_index)
    if bad.any():
        raise ValueError(
            f"gt values must be 0, 1 or ignore_index={ignore_index}, got {np.unique(g[bad])[:5].tolist()}"
        )
    valid = g != ignore_index
    if not valid.any():
        raise ValueError(f"gt has no evaluated pixel: all {g.size} pixels equal ignore_index={ignore_index}")
    return s, g == 1, valid


def _check_beta2(beta2: float) -> None:
    if not beta2 > 0:
        raise ValueError(f"beta2 (beta squared) must be > 0, got {beta2}")


def _f_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta2: float) -> np.ndarray:
    """F-beta from counts via pysodmetrics' handler (P, R and F set to 0 where a denominator is 0)."""
    handler = FmeasureHandler(with_dynamic=False, with_adaptive=False, beta=beta2)
    return np.asarray(handler(tp=tp, fp=fp, tn=np.zeros_like(tp), fn=fn), dtype=np.float64)


def mae(pred: MapArray, gt: MapArray, *, ignore_index: int = 255) -> float:
    """Mean absolute error between S and G over the evaluated pixels (CAS Sec. 5.1)."""
    s, fg, valid = _prepare(pred, gt, ignore_index)
    return float(MAE().cal_mae(s[valid], fg[valid]))


def _adaptive(s: np.ndarray, fg: np.ndarray, beta2: float) -> float:
    threshold = min(2.0 * float(s.mean()), 1.0)
    binary = s > threshold
    tp = np.count_nonzero(binary & fg)
    fp = np.count_nonzero(binary & ~fg)
    fn = np.count_nonzero(fg) - tp
    return float(_f_from_counts(np.array(tp), np.array(fp), np.array(fn), beta2))


def fbeta_adaptive(pred: MapArray, gt: MapArray, *, beta2: float = 0.3, ignore_index: int = 255) -> float:
    """F-beta of ``B = S > min(2 mean(S), 1)`` (CAS Sec. 5.1), over the evaluated pixels."""
    _check_beta2(beta2)
    s, fg, valid = _prepare(pred, gt, ignore_index)
    return _adaptive(s[valid], fg[valid], beta2)


def _curve(s: np.ndarray, fg: np.ndarray, beta2: float) -> np.ndarray:
    n_fg = int(np.count_nonzero(fg))
    stats = FmeasureV2().dynamically_binarizing(pred=s, gt=fg, FG=n_fg, BG=fg.size - n_fg)
    # pysodmetrics orders thresholds 255, 254, ..., 0; flip so that index t is threshold t / 255.
    return _f_from_counts(stats["tp"], stats["fp"], stats["fn"], beta2)[::-1].copy()


def fbeta_curve(pred: MapArray, gt: MapArray, *, beta2: float = 0.3, ignore_index: int = 255) -> np.ndarray:
    """F-beta at the 256 thresholds ``floor(255 S) >= t``, t = 0..255 (index t), over the evaluated pixels."""
    _check_beta2(beta2)
    s, fg, valid = _prepare(pred, gt, ignore_index)
    return _curve(s[valid], fg[valid], beta2)


def fbeta_max(pred: MapArray, gt: MapArray, *, beta2: float = 0.3, ignore_index: int = 255) -> float:
    """Maximum of this image's F-beta curve (``SaliencyMeter`` maximises the dataset-mean curve instead)."""
    return float(fbeta_curve(pred, gt, beta2=beta2, ignore_index=ignore_index).max())


def _weighted(s: np.ndarray, fg: np.ndarray, valid: np.ndarray, beta2: float) -> float:
    if not valid.all():
        return math.nan
    if not fg.any():
        return 0.0
    return float(WeightedFmeasure(beta=beta2).cal_wfm(s, fg))


def fbeta_weighted(pred: MapArray, gt: MapArray, *, beta2: float = 0.3, ignore_index: int = 255) -> float:
    """Weighted F-beta of Margolin et al. (CAS [23]); 0 for an empty G, NaN if G has ignore pixels."""
    _check_beta2(beta2)
    s, fg, valid = _prepare(pred, gt, ignore_index)
    return _weighted(s, fg, valid, beta2)


def _structure(s: np.ndarray, fg: np.ndarray, valid: np.ndarray, alpha: float) -> float:
    if not valid.all():
        return math.nan
    return float(Smeasure(alpha=alpha).cal_sm(s, fg))


def s_measure(pred: MapArray, gt: MapArray, *, alpha: float = 0.5, ignore_index: int = 255) -> float:
    """S-measure (Fan et al. 2017), alpha weighs object vs region similarity; NaN if G has ignore pixels."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    s, fg, valid = _prepare(pred, gt, ignore_index)
    return _structure(s, fg, valid, alpha)


def _per_image(
    pred: MapArray, gt: MapArray, beta2: float, alpha: float, ignore_index: int
) -> tuple[dict[str, float], np.ndarray]:
    s, fg, valid = _prepare(pred, gt, ignore_index)
    s_valid, fg_valid = s[valid], fg[valid]
    curve = _curve(s_valid, fg_valid, beta2)
    scores = {
        "mae": float(MAE().cal_mae(s_valid, fg_valid)),
        "fbeta_adaptive": _adaptive(s_valid, fg_valid, beta2),
        "fbeta_max": float(curve.max()),
        "fbeta_weighted": _weighted(s, fg, valid, beta2),
        "s_measure": _structure(s, fg, valid, alpha),
    }
    return scores, curve


def saliency_scores(
    pred: MapArray, gt: MapArray, *, beta2: float = 0.3, alpha: float = 0.5, ignore_index: int = 255
) -> dict[str, float]:
    """All saliency metrics of one image: mae, fbeta_adaptive, fbeta_max, fbeta_weighted, s_measure."""
    _check_beta2(beta2)
    return _per_image(pred, gt, beta2, alpha, ignore_index)[0]


class SaliencyMeter:
    """Dataset accumulator following pysodmetrics: per-image MAE, adaptive F, weighted F and S-measure are
    averaged over images; ``fbeta_max`` is the maximum of the image-averaged F curve."""

    def __init__(self, *, beta2: float = 0.3, alpha: float = 0.5, ignore_index: int = 255) -> None:
        _check_beta2(beta2)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.beta2 = beta2
        self.alpha = alpha
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._scores: dict[str, list[float]] = {
            "mae": [],
            "fbeta_adaptive": [],
            "fbeta_weighted": [],
            "s_measure": [],
        }
        self._curve_sum = np.zeros(NUM_THRESHOLDS, dtype=np.float64)
        self.num_images = 0

    def update(self, pred: MapArray, gt: MapArray) -> None:
        """Add one image: ``pred`` float [H, W] in [0, 1], ``gt`` integer [H, W] in {0, 1, ignore_index}."""
        scores, curve = _per_image(pred, gt, self.beta2, self.alpha, self.ignore_index)
        for key, values in self._scores.items():
            values.append(scores[key])
        self._curve_sum += curve
        self.num_images += 1

    @classmethod
    def of(cls, preds: Iterable[MapArray], gts: Iterable[MapArray], **options: Any) -> dict[str, float]:
        """The metrics of a whole set at once: every (pred, gt) pair through :meth:`update`, then :meth:`compute`."""
        meter = cls(**options)
        for pred, gt in zip(preds, gts, strict=True):
            meter.update(pred, gt)
        return meter.compute()

    def compute(self) -> dict[str, float]:
        """Keys mae, fbeta_adaptive, fbeta_max, fbeta_weighted, s_measure; ValueError before any update."""
        if self.num_images == 0:
            raise ValueError("SaliencyMeter.compute() called before any update()")

        def mean_defined(values: list[float]) -> float:
            array = np.asarray(values, dtype=np.float64)
            defined = array[~np.isnan(array)]
            return float(defined.mean()) if defined.size else math.nan

        return {
            "mae": mean_defined(self._scores["mae"]),
            "fbeta_adaptive": mean_defined(self._scores["fbeta_adaptive"]),
            "fbeta_max": float((self._curve_sum / self.num_images).max()),
            "fbeta_weighted": mean_defined(self._scores["fbeta_weighted"]),
            "s_measure": mean_defined(self._scores["s_measure"]),
        }
