"""Saliency metrics (CAS Sec. 5.1) on tiny maps with hand-computed values; beta^2 = 0.3 throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lofiseg.metrics.saliency import (
    SaliencyMeter,
    fbeta_adaptive,
    fbeta_curve,
    fbeta_max,
    fbeta_weighted,
    mae,
    s_measure,
    saliency_scores,
)


def f_beta(precision: float, recall: float, beta2: float = 0.3) -> float:
    return (1 + beta2) * precision * recall / (beta2 * precision + recall)


# Max-F example. floor(255 S) = [[255, 191], [63, 0]] (0.75 * 255 = 191.25, 0.25 * 255 = 63.75).
CURVE_S = np.array([[1.0, 0.75], [0.25, 0.0]])
CURVE_G = np.array([[1, 0], [1, 0]], dtype=np.uint8)
# t = 0       : all 4 pixels   -> TP 2, P 2/4, R 1   -> F = 1.3*0.5/(0.15+1)      = 0.565217
# t = 1..63   : 255, 191, 63   -> TP 2, P 2/3, R 1   -> F = 1.3*(2/3)/(0.2+1)     = 0.722222
# t = 64..191 : 255, 191       -> TP 1, P 1/2, R 1/2 -> F = 0.5
# t = 192..255: 255            -> TP 1, P 1,   R 1/2 -> F = 1.3*0.5/(0.3+0.5)     = 0.8125
CURVE_HAND = {
    0: 0.65 / 1.15,
    1: 1.3 * (2 / 3) / 1.2,
    63: 1.3 * (2 / 3) / 1.2,
    64: 0.5,
    191: 0.5,
    192: 0.8125,
    255: 0.8125,
}

# Second image for the meter. floor(255 * 0.5) = 127.
SECOND_S = np.array([[0.5, 0.0], [0.0, 0.0]])
SECOND_G = np.array([[1, 0], [0, 0]], dtype=np.uint8)
# t = 0: all -> P 1/4, R 1 -> F = 1.3*0.25/(0.075+1) = 0.302326; t = 1..127: {(0,0)} -> F = 1; t >= 128: F = 0


def test_mae_skips_ignore_pixels():
    # Evaluated pixels: |0.2 - 0| + |0.8 - 1| + |1.0 - 1| = 0.4 over 3 pixels; (1, 0) is ignored.
    s = np.array([[0.2, 0.8], [0.4, 1.0]])
    g = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    assert mae(s, g) == pytest.approx(0.4 / 3)


def test_adaptive_fbeta_hand_value():
    s = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.0], [0.1, 0.0, 0.0]])
    g = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)
    # mean(S) = 2.8 / 9 -> T = 0.6222; S > T: 0.9, 0.8, 0.7 (3 pixels), 2 of them salient, |G| = 4
    # P = 2/3, R = 1/2 -> F = 1.3 * (1/3) / (0.3 * 2/3 + 1/2) = 0.4333 / 0.7 = 0.619048
    assert fbeta_adaptive(s, g) == pytest.approx(f_beta(2 / 3, 1 / 2))
    assert fbeta_adaptive(s, g) == pytest.approx(0.619048, abs=1e-6)


def test_adaptive_threshold_is_strict_as_in_the_paper():
    # mean = (0.75 + 3 * 0.25) / 4 = 0.375 -> T = 0.75 exactly; B = S > T is empty -> F = 0.
    # (pysodmetrics' S >= T would keep the salient pixel and give F = 1.)
    s = np.array([[0.75, 0.25], [0.25, 0.25]])
    g = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    assert fbeta_adaptive(s, g) == 0.0


def test_adaptive_threshold_is_capped_at_one():
    # mean = 0.5 -> 2 mean = 1 -> T = 1; nothing is > 1, so F = 0 even for the salient pixel at 1.0.
    assert fbeta_adaptive(CURVE_S, CURVE_G) == 0.0


def test_fbeta_curve_and_max_hand_values():
    curve = fbeta_curve(CURVE_S, CURVE_G)
    assert curve.shape == (256,)
    for t, value in CURVE_HAND.items():
        assert curve[t] == pytest.approx(value), t
    assert fbeta_max(CURVE_S, CURVE_G) == pytest.approx(0.8125)


def test_weighted_fbeta_hand_value():
    # Salient left column; the prediction is exact except 0.5 at background pixel (0, 2), 2 px from G.
    # Errors on G are 0 -> weighted recall R = 1 - 0 = 1, TPw = |G| = 3.
    # Background weight B = 2 - 0.5 ** (dist / 5) = 2 - 0.5 ** 0.4 = 1.242142 -> FPw = 0.5 * B = 0.621071
    # P = 3 / (3 + 0.621071) = 0.828484 -> F = 1.3 P / (1 + 0.3 P) = 0.862627
    g = np.zeros((3, 3), dtype=np.uint8)
    g[:, 0] = 1
    s = g.astype(np.float64)
    s[0, 2] = 0.5
    weight = 2 - 0.5**0.4
    precision = 3 / (3 + 0.5 * weight)
    assert fbeta_weighted(s, g) == pytest.approx(f_beta(precision, 1.0))
    assert fbeta_weighted(s, g) == pytest.approx(0.862627, abs=1e-6)
    assert fbeta_weighted(g.astype(np.float64), g) == pytest.approx(1.0)  # perfect map


def test_s_measure_hand_value():
    s = np.array([[1.0, 0.0], [0.0, 0.5]])
    g = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    # Object: fg {1.0}: 2*1/(1 + 1 + 0) = 1, weight 1/4 -> 0.25.
    #   bg values of 1 - S: {1, 1, 0.5}: mean 5/6, std (ddof 1) = sqrt(1/12) = 0.288675
    #   2 * 5/6 / ((5/6)^2 + 1 + 0.288675) = 1.666667 / 1.983119 = 0.840429, weight 3/4 -> 0.630322
    #   object = 0.880322. Region: the centroid (0, 0) splits into four 1-pixel quadrants, each SSIM = 1.
    # S = 0.5 * 0.880322 + 0.5 * 1 = 0.940161
    mean_bg, std_bg = 5 / 6, math.sqrt(1 / 12)
    object_score = 0.25 * 1.0 + 0.75 * 2 * mean_bg / (mean_bg**2 + 1 + std_bg)
    assert s_measure(s, g) == pytest.approx(0.5 * object_score + 0.5, abs=1e-9)
    assert s_measure(s, g) == pytest.approx(0.940161, abs=1e-6)


def test_empty_prediction():
    # S = 0 everywhere: T = 0 and S > 0 is empty -> adaptive F = 0; MAE = |G| / N = 1/4.
    # Curve: t = 0 keeps every pixel -> P 1/4, R 1 -> F = 0.302326; t >= 1 -> 0. So max-F = 0.302326.
    scores = saliency_scores(np.zeros((2, 2)), SECOND_G)
    assert scores["fbeta_adaptive"] == 0.0
    assert scores["mae"] == pytest.approx(0.25)
    assert scores["fbeta_max"] == pytest.approx(f_beta(0.25, 1.0))


def test_empty_ground_truth():
    # No salient pixel: no true positive -> every F = 0; weighted F = 0 (pysodmetrics rule);
    # S-measure = 1 - mean(S) = 1 - 0.5 / 4 = 0.875; MAE = mean(S) = 0.125.
    scores = saliency_scores(SECOND_S, np.zeros((2, 2), np.uint8))
    assert scores == pytest.approx(
        {"mae": 0.125, "fbeta_adaptive": 0.0, "fbeta_max": 0.0, "fbeta_weighted": 0.0, "s_measure": 0.875}
    )


def test_meter_follows_pysodmetrics_averaging():
    meter = SaliencyMeter()
    meter.update(CURVE_S, CURVE_G)
    meter.update(torch.tensor(SECOND_S), torch.tensor(SECOND_G))
    scores = meter.compute()
    assert set(scores) == {"mae", "fbeta_adaptive", "fbeta_max", "fbeta_weighted", "s_measure"}
    # MAE: image 1 (0 + 0.75 + 0.75 + 0) / 4 = 0.375, image 2 0.5 / 4 = 0.125 -> mean 0.25
    assert scores["mae"] == pytest.approx(0.25)
    # Adaptive F: image 1 T = 1 -> 0 (see above); image 2 T = 0.25 -> B = {(0,0)} = G -> 1. Mean 0.5.
    assert scores["fbeta_adaptive"] == pytest.approx(0.5)
    # Max over t of the mean curve: t = 1..63 gives (0.722222 + 1) / 2 = 0.861111, which beats
    # t = 0 (0.433772), 64..127 (0.75), 128..191 (0.25), 192..255 (0.40625).
    # (The mean of per-image maxima, (0.8125 + 1) / 2 = 0.90625, is NOT what is reported.)
    assert scores["fbeta_max"] == pytest.approx((1.3 * (2 / 3) / 1.2 + 1.0) / 2)
    per_image = [saliency_scores(CURVE_S, CURVE_G), saliency_scores(SECOND_S, SECOND_G)]
    for key in ("fbeta_weighted", "s_measure"):
        assert scores[key] == pytest.approx((per_image[0][key] + per_image[1][key]) / 2)


def test_spatial_metrics_are_nan_with_ignore_pixels_and_skipped_by_the_meter():
    g = np.array([[1, 0], [255, 0]], dtype=np.uint8)
    s = np.array([[0.9, 0.1], [0.3, 0.0]])
    assert math.isnan(fbeta_weighted(s, g)) and math.isnan(s_measure(s, g))
    meter = SaliencyMeter()
    meter.update(s, g)
    meter.update(SECOND_S, SECOND_G)
    scores = meter.compute()
    # Only the second image defines them.
    assert scores["s_measure"] == pytest.approx(saliency_scores(SECOND_S, SECOND_G)["s_measure"])
    # MAE uses both images: image 1 over its 3 evaluated pixels (0.1 + 0.1 + 0) / 3, image 2 0.125.
    assert scores["mae"] == pytest.approx((0.2 / 3 + 0.125) / 2)


def test_float32_tensor_matches_numpy():
    s = np.array([[0.9, 0.8, 0.1], [0.7, 0.2, 0.0], [0.1, 0.0, 0.0]], dtype=np.float32)
    g = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)
    assert saliency_scores(torch.from_numpy(s), torch.from_numpy(g)) == pytest.approx(saliency_scores(s, g))


def test_invalid_inputs_raise_clear_errors():
    g = np.zeros((2, 2), np.uint8)
    with pytest.raises(ValueError, match=r"pred \(2, 2\) and gt \(3, 3\)"):
        mae(np.zeros((2, 2)), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\], got min 0.0 and max 255.0"):
        mae(np.array([[0, 255], [0, 0]], np.uint8), g)
    with pytest.raises(ValueError, match="got min -0.5"):
        mae(np.array([[-0.5, 0.0], [0.0, 0.0]]), g)
    with pytest.raises(ValueError, match="NaN"):
        mae(np.array([[np.nan, 0.0], [0.0, 0.0]]), g)
    with pytest.raises(TypeError, match="gt must be an integer label map"):
        mae(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"gt values must be 0, 1 or ignore_index=255, got \[2\]"):
        mae(np.zeros((2, 2)), np.array([[2, 0], [0, 0]], np.uint8))
    with pytest.raises(ValueError, match="all 4 pixels equal ignore_index=255"):
        saliency_scores(np.zeros((2, 2)), np.full((2, 2), 255, np.uint8))
    with pytest.raises(ValueError, match=r"single maps \[H, W\]"):
        mae(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="beta2"):
        SaliencyMeter(beta2=0.0)
    with pytest.raises(ValueError, match="before any update"):
        SaliencyMeter().compute()
