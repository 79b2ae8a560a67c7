"""Fully connected CRF refinement (Kraehenbuehl & Koltun, via pydensecrf).

:func:`dense_crf` refines a softmax map: unary -log p, a Gaussian (appearance-free smoothness) kernel and a
bilateral (position + colour) kernel, mean-field inference.
"""

from __future__ import annotations

import numpy as np

from lofiseg.infer.crf_params import CRFParams  # importable from here too

PROB_CLIP = 1e-8
SUM_TOLERANCE = 1e-3


def as_numpy(array: object, name: str) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # a torch tensor
        return array.detach().cpu().numpy()
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(array).__name__}")


def check_image(image: object, height: int | None = None, width: int | None = None) -> np.ndarray:
    image = as_numpy(image, "image")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (H, W, 3), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")
    if height is not None and image.shape[:2] != (height, width):
        raise ValueError(f"image must have shape ({height}, {width}, 3) to match the map, got {image.shape}")
    return np.require(image, requirements=["C", "W"])  # pydensecrf needs a writeable buffer (PIL's is read-only)


def _check_probs(probs: object) -> np.ndarray:
    probs = as_numpy(probs, "probs")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be a float array (M, H, W), got dtype {probs.dtype}")
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"probs must have shape (M, H, W) with M >= 2, got {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("probs must be finite")
    sums = probs.sum(axis=0, dtype=np.float64)
    worst = float(np.abs(sums - 1.0).max())
    if worst > SUM_TOLERANCE:
        raise ValueError(f"probs must sum to 1 over the M channels at every pixel; off by up to {worst:.3g}")
    return probs


def crf_inference(image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
    """Mean-field Q (M, H*W) for the unary energy (M, H*W) float32 and the image's pairwise kernels."""
    import pydensecrf.densecrf as dcrf

    num_labels = unary.shape[0]
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=image, compat=params.bilateral_compat
    )
    return np.asarray(crf.inference(params.iterations), dtype=np.float32)


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int = CRFParams.iterations,
    gaussian_sxy: float = CRFParams.gaussian_sxy,
    gaussian_compat: float = CRFParams.gaussian_compat,
    bilateral_sxy: float = CRFParams.bilateral_sxy,
    bilateral_srgb: float = CRFParams.bilateral_srgb,
    bilateral_compat: float = CRFParams.bilateral_compat,
) -> np.ndarray:
    """Refine softmax probabilities (M, H, W) with a fully connected CRF over the uint8 RGB ``image`` (H, W, 3).

    Unary energy -log(clip(p, 1e-8, 1)); Potts pairwise terms with a Gaussian kernel (``gaussian_sxy``) and a
    bilateral kernel (``bilateral_sxy`` px, ``bilateral_srgb`` colour levels). Returns float32 (M, H, W)
    probabilities. Settings from params: ``dense_crf(image, probs, **dataclasses.asdict(crf_params))``.
    """
    params = CRFParams(iterations, gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat)
    probs = _check_probs(probs)
    num_labels, height, width = probs.shape
    image = check_image(image, height, width)
    unary = -np.log(np.clip(probs, PROB_CLIP, 1.0).astype(np.float32)).reshape(num_labels, -1)
    return crf_inference(image, unary, params).reshape(num_labels, height, width)
