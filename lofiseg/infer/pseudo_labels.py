"""Pseudo ground truth from a single-class model (Veksler Sec. 4.3).

The class-X CNN runs on the X web images; a pixel it labels salient (object) gets X's id in the multi-class
label space, the rest stays background 0. Optionally the two-class probabilities are refined with a dense CRF
first, and pixels whose (refined) decision is less sure than ``confidence`` become 255 (ignore), so the
multi-class network is not trained on them. :func:`label_images` does it for a list of images, batched.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import IGNORE, Dataset, Record
from lofiseg.infer.dense_crf import CRFParams, dense_crf
from lofiseg.infer.predict import predict_probs, resize_probs


def _foreground(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs_fg must be a float array, got dtype {probs.dtype}")
    if probs.ndim == 3 and probs.shape[0] == 2:
        probs = probs[1]  # (2, H, W): channel 1 is the object
    if probs.ndim != 2:
        raise ValueError(f"probs_fg must have shape (H, W) or (2, H, W), got {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError("probs_fg must hold finite probabilities in [0, 1]")
    return probs if probs.dtype in (np.float32, np.float64) else probs.astype(np.float32)


def pseudo_label(probs_fg: np.ndarray | torch.Tensor, class_id: int, confidence: float = 0.5,
                 image: np.ndarray | None = None, crf: CRFParams | None = None) -> np.ndarray:
    """The pseudo label map (H, W) uint8 with values {0, ``class_id``, 255} of one image.

    ``probs_fg`` is the object probability p (H, W), or the two-class softmax (2, H, W) with the object in
    channel 1. With ``crf`` the pair (1 - p, p) is first refined by a dense CRF over ``image`` (uint8
    (H, W, 3)), and p is read back from the CRF's marginals. Then, per pixel:
    label = ``class_id`` if p > 1 - p (i.e. p > 0.5; a tie stays background), else 0; and 255 (ignore) where
    max(p, 1 - p) < ``confidence`` (so ``confidence`` 0.5 ignores nothing).
    """
    if isinstance(class_id, bool) or not isinstance(class_id, int | np.integer) or not 1 <= class_id < IGNORE:
        raise ValueError(f"class_id must be an int in [1, {IGNORE - 1}], got {class_id!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not 0.5 <= confidence <= 1.0:
        raise ValueError(f"confidence must be a number in [0.5, 1], got {confidence!r}")
    p = _foreground(probs_fg)
    if crf is not None:
        if image is None:
            raise ValueError("image is required for the CRF refinement (crf is set)")
        refined = dense_crf(image, np.stack([1.0 - p, p]), **dataclasses.asdict(crf))
        p = refined[1] / refined.sum(axis=0)
    q = 1.0 - p
    labels = np.where(p > q, np.uint8(class_id), np.uint8(0))
    # compared in p's precision: p = 0.7 stored in float32 is exactly as confident as `confidence` 0.7
    labels[np.maximum(p, q) < p.dtype.type(confidence)] = IGNORE
    return labels.astype(np.uint8, copy=False)


def label_images(model: torch.nn.Module, dataset: Dataset, records: Sequence[Record], image_size: int,
                 channel: int, class_id: int, confidence: float = 0.5, crf: CRFParams | None = None,
                 batch_size: int = 32, device: torch.device | str = "cpu",
                 name: str = "") -> Iterator[tuple[Record, np.ndarray]]:
    """Each record's pseudo label map (:func:`pseudo_label`) at its image's own size: ``model`` sees
    ``batch_size`` images at a time at its training ``image_size``, and its object probability (output
    ``channel``) is resized back to the image (:func:`lofiseg.infer.predict.resize_probs`)."""
    bar = tqdm(total=len(records), desc=f"pseudo_label {name}", unit="img", file=sys.stderr)
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        split = cached_load_split(dataset, chunk, image_size, with_masks=False, desc=f"load {name}")
        probs = predict_probs(model, split, batch_size=batch_size, device=device)
        for index, (record, sample_probs) in enumerate(zip(chunk, probs, strict=True)):
            image = dataset.image(record)
            height, width = image.shape[:2]
            valid_height, valid_width = split.extent(index)
            foreground = resize_probs(sample_probs[channel:channel + 1, :valid_height, :valid_width], height,
                                      width)[0]
            yield record, pseudo_label(foreground.clamp(0.0, 1.0), class_id, confidence, image=image, crf=crf)
            bar.update(1)
    bar.close()
