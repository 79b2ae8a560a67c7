"""Class-agnostic region models scored on a split (test by default; BSDS500 has val): BSDS covering, Rand
index, variation of information, boundary F (against every human segmentation of a BSDS image, at ODS and OIS
over a sweep of region counts) and Dille et al.'s recall at IoU > 0.5, matched mIoU and boundary IoU
(:class:`lofiseg.infer.regions.RegionEvaluator`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import Dataset, Record, read_mask
from lofiseg.data.layouts import ALT_MASKS_FIELD
from lofiseg.evaluate.scored_split import records_to_score
from lofiseg.infer.regions import RegionEvaluator, RegionSettings, resize_labels, segment_candidates
from lofiseg.models.bundle import load_bundle

log = logging.getLogger(__name__)

Scores = dict[str, float]


def ground_truths(dataset: Dataset, record: Record) -> list[np.ndarray]:
    """The record's mask, then its further human segmentations (BSDS ``alt_masks``), as int64 maps."""
    masks = [dataset.mask(record)]
    alt = record.extra.get(ALT_MASKS_FIELD, "")
    masks += [read_mask(dataset.root / rel) for rel in alt.split(";") if rel]
    return [m.astype(np.int64) for m in masks]


def load_region_model(path: Path, method: str) -> tuple[torch.nn.Module, dict]:
    """The bundle at ``path``, checked to hold a model trained with ``method``."""
    model, info = load_bundle(path)
    if info.get("method") != method:
        raise ValueError(f"{path}: holds method {info.get('method')!r}, expected {method!r}")
    return model, info


def score_regions(model: torch.nn.Module, image_size: int, method: str, dataset: Dataset, name: str,
                  settings: RegionSettings, batch_size: int, split: str = "test",
                  sweep: Sequence[int] = ()) -> tuple[Scores, list[np.ndarray]]:
    """The ``split`` of ``dataset`` (called ``name``) segmented with ``method``'s inference routine (shorter
    side at ``image_size``, each whole image) and scored against every human segmentation; with a ``sweep`` of
    region counts, at ODS and OIS over them (:func:`lofiseg.infer.regions.segment_candidates`). Also each
    image's label map at the model's own setting, resized (nearest) to its ground truth."""
    records = records_to_score(dataset, split, name)
    images = cached_load_split(dataset, records, image_size, with_masks=False, desc=f"load {name}")
    candidates = segment_candidates(model, method, images.images, settings, sweep, batch_size,
                                    desc=f"{method} on {name}", extents=images.extents)
    evaluator = RegionEvaluator()
    resized = []
    for record, preds in zip(records, candidates, strict=True):
        gts = ground_truths(dataset, record)
        evaluator.update(preds, gts)
        resized.append(resize_labels(preds[0], gts[0].shape))
    return evaluator.compute(), resized


def score_region_models(models_root: Path, methods: Sequence[str], sets: Mapping[str, Dataset],
                        settings_for: Callable[[dict], RegionSettings], batch_size: int, grid_samples: int,
                        splits: Mapping[str, str] | None = None, sweep: Sequence[int] = (),
                        ) -> tuple[dict[str, dict[str, Scores]], dict[str, list[np.ndarray]]]:
    """Every method's model ``models_root/<method>/model.pt`` on every set: ({set: {method: scores}},
    {method: its first ``grid_samples`` label maps on the first set}). ``settings_for(info)`` gives a model's
    inference settings from its bundle info; ``splits``: the split scored per set (default test); ``sweep``: see
    :func:`score_regions`."""
    by_set: dict[str, dict[str, Scores]] = {name: {} for name in sets}
    grid_labels: dict[str, list[np.ndarray]] = {}
    for method in methods:
        model, info = load_region_model(models_root / method / "model.pt", method)
        for index, (name, dataset) in enumerate(sets.items()):
            scores, labels = score_regions(model, info["image_size"], method, dataset, name, settings_for(info),
                                           batch_size, (splits or {}).get(name, "test"), sweep)
            by_set[name][method] = scores
            if index == 0:
                grid_labels[method] = labels[:grid_samples]
            log.info("regions %s on %s: %s", method, name, ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    return by_set, grid_labels


def metrics_by_method(by_set: Mapping[str, Mapping[str, Scores]]) -> dict[str, dict]:
    """{method: {first set's scores..., "<other set>": {scores}}}: the metrics JSON of ``evaluate_regions``."""
    first, *others = by_set
    return {method: {**by_set[first][method], **{name: by_set[name][method] for name in others}}
            for method in by_set[first]}
