"""Salient-object models scored on a held-out test split: MAE, F-beta at T = 2 mean(S), max-F and weighted
F-beta (:class:`lofiseg.metrics.saliency.SaliencyMeter`)."""

from __future__ import annotations

import numpy as np
import torch

from lofiseg.data.format import Dataset
from lofiseg.evaluate.scored_split import records_to_score
from lofiseg.infer.predict import predict_native
from lofiseg.metrics.saliency import SaliencyMeter

SALIENCY_KEYS = ("fbeta_adaptive", "fbeta_weighted", "fbeta_max", "mae")


def score_saliency(model: torch.nn.Module, info: dict, dataset: Dataset, batch_size: int,
                   split: str = "test") -> dict[str, float]:
    """The ``split`` of ``dataset`` scored with the bundle's saliency ``channel``: predict at its training
    ``image_size``, resize each map to its ground truth's size, then score (mask > 0 is salient, 255 ignored)."""
    meter = SaliencyMeter()
    for record, probs in predict_native(model, dataset, records_to_score(dataset, split, dataset.root.name),
                                        info["image_size"], batch_size,
                                        desc=f"load {dataset.root.name}"):
        gt = dataset.mask(record)
        meter.update(probs[info["channel"]].clamp(0, 1).numpy(), np.where(gt == 255, 255, gt > 0).astype(np.uint8))
    scores = meter.compute()
    return {k: float(scores[k]) for k in SALIENCY_KEYS}
