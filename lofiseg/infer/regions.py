"""From a region model's per-pixel descriptors to a label map, and the region metrics of a set of label maps.

One routine per method (``cas``, ``ce``, ``projective``, ``discriminative``), then the same post-processing
for all of them, so that a difference in the table comes from the learned descriptors:

* cas, ce (softmax over M channels): argmax over the channels of the ``max_regions`` largest argmax regions
  (all M <= 20 by default; the CAS supplement E's "cluster the descriptors into 20 regions"), or
  ``clustering="kmeans"``: k-means of the softmax vectors into ``max_regions`` clusters
  (:func:`lofiseg.infer.clustering.cluster_descriptors`).
* projective: mean-shift on the projective sphere, 45-degree flat kernel (Dille et al. Sec. 4,
  :mod:`lofiseg.infer.meanshift`), at most ``max_regions`` densest modes; optional multi-resolution refinement
  (``scales`` e.g. (1.0, 2.0): the image is also run up-sampled, clustered, and merged coarse to fine).
* discriminative: Euclidean mean-shift with bandwidth ``delta_d`` (De Brabandere et al.: converged clusters
  lie within delta_v of centres 2 delta_d apart), at most ``max_regions`` modes.
* then (CAS supplement E): regions under ``min_area_fraction`` of the image are absorbed by their
  neighbours with the dense CRF (:func:`lofiseg.infer.clustering.merge_small_regions`); 0 turns it off.

:class:`RegionEvaluator` pools the seven numbers of ``metrics/regions.json``: BSDS covering, probabilistic
Rand index, variation of information and boundary F, and Dille et al.'s recall at IoU > 0.5, mIoU of matched
segments and boundary IoU. With one segmentation per image ODS = OIS; :func:`segment_candidates` gives one per
``max_regions`` of a sweep (the clustering parameter), and the BSDS benchmark's ODS (the count best for the whole
set) and OIS (best per image) then differ (CAS Table 4).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lofiseg.data.loading import TensorSplit, rescale_images
from lofiseg.infer.clustering import cluster_descriptors, merge_small_regions
from lofiseg.infer.meanshift import cosine_threshold, mean_shift, refine_multiresolution
from lofiseg.infer.region_settings import RegionSettings  # importable from here too
from lofiseg.metrics.bsds import RegionMeter
from lofiseg.metrics.segment_matching import AgnosticMeter
from lofiseg.models.descriptor_heads import descriptor_kind, descriptor_model

METRIC_KEYS = ("covering", "rand_index", "vi", "boundary_f", "recall50", "miou_matched", "boundary_iou")
OIS_KEYS = {"covering_ois": "covering_ois", "rand_index_ois": "pri_ois", "vi_ois": "vi_ois",
            "boundary_f_ois": "boundary_f_ois"}  # evaluator key -> RegionMeter key


@torch.no_grad()
def predict_descriptors(model: torch.nn.Module, images: torch.Tensor, method: str, batch_size: int = 32,
                        device: torch.device | str = "cpu", scale: float = 1.0) -> torch.Tensor:
    """Descriptors (N, D, S', S') on the CPU of uint8 images (N, 3, S, S); ``scale`` resizes the input first."""
    head = descriptor_model(model, method).to(device)
    was_training = model.training
    head.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = rescale_images(images[start:start + batch_size].to(device).float().div(255.0), scale)
        out.append(head(batch).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def largest_regions_argmax(probs: torch.Tensor, max_regions: int) -> torch.Tensor:
    """Argmax (H, W) of ``probs`` (M, H, W) over the channels of the ``max_regions`` largest argmax regions
    (ties: the lower channel): the pixels of a dropped region go to their best kept channel."""
    counts = torch.bincount(probs.argmax(0).flatten(), minlength=probs.shape[0])
    if int((counts > 0).sum()) <= max_regions:
        return probs.argmax(0)
    keep = torch.argsort(-counts, stable=True)[:max_regions]
    return keep[probs[keep].argmax(0)]


def cluster(method: str, descriptors: torch.Tensor, settings: RegionSettings) -> np.ndarray:
    """Label map (H, W) int64 of one image's descriptors (D, H, W), before the small-region merge."""
    kind = descriptor_kind(method)
    height, width = descriptors.shape[-2:]
    if kind == "softmax":
        if settings.clustering == "argmax":
            labels = largest_regions_argmax(descriptors, settings.max_regions).numpy()
            return np.unique(labels, return_inverse=True)[1].reshape(height, width).astype(np.int64)
        return cluster_descriptors(descriptors.numpy().astype(np.float64), settings.max_regions, settings.seed)
    points = descriptors.reshape(descriptors.shape[0], -1).T
    if kind == "projective":
        bandwidth, shift_kind = cosine_threshold(settings.bandwidth_degrees), "projective"
    else:
        bandwidth, shift_kind = settings.embedding_bandwidth, "euclidean"
    result = mean_shift(points, bandwidth, kind=shift_kind, max_points=settings.max_points,
                        max_clusters=settings.max_regions, seed=settings.seed)
    return result.labels.reshape(height, width).numpy().astype(np.int64)


def _resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == shape:
        return image
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def segment(method: str, image: np.ndarray, descriptors: Sequence[torch.Tensor],
            settings: RegionSettings) -> np.ndarray:
    """Regions (H, W) int64 of one image from its descriptors at each of ``settings.scales`` (coarse first).

    ``image`` uint8 (H, W, 3) at any size: the small-region CRF runs at the finest descriptors' resolution.
    """
    if len(descriptors) != len(settings.scales):
        raise ValueError(f"need descriptors at {len(settings.scales)} scales {settings.scales}, "
                         f"got {len(descriptors)}")
    levels = [cluster(method, d, settings) for d in descriptors]
    labels = refine_multiresolution(levels) if len(levels) > 1 else levels[0]
    if settings.min_area_fraction > 0:
        labels = merge_small_regions(_resize_image(image, labels.shape), labels, settings.min_area_fraction,
                                     crf=settings.crf)
    return labels


def segment_images(model: torch.nn.Module, method: str, images: torch.Tensor, settings: RegionSettings,
                   batch_size: int = 32, device: torch.device | str = "cpu", desc: str = "segment",
                   extents: torch.Tensor | None = None) -> list[np.ndarray]:
    """Label maps of uint8 images (N, 3, H, W) at the model's input size (before any resize to ground truth).

    ``extents`` (N, 2) (:attr:`lofiseg.data.loading.TensorSplit.extents`): each image's valid (height, width)
    at the top-left; the model sees only that part (images of one extent batched together) and the label map
    has that size."""
    if extents is None:
        extents = torch.tensor(images.shape[-2:]).expand(images.shape[0], 2)
    shapes, inverse = extents.unique(dim=0, return_inverse=True)
    descriptors: list[list[torch.Tensor]] = [[] for _ in range(images.shape[0])]
    for group, (height, width) in enumerate(shapes.tolist()):
        members = (inverse == group).nonzero().flatten()
        crops = images[members, :, :height, :width]
        for scale in settings.scales:
            for member, d in zip(members.tolist(), predict_descriptors(model, crops, method, batch_size, device,
                                                                         scale), strict=True):
                descriptors[member].append(d)
    rgb = images.permute(0, 2, 3, 1).numpy()
    return [segment(method, rgb[i, :extents[i, 0], :extents[i, 1]], descriptors[i], settings)
            for i in tqdm(range(images.shape[0]), desc=desc, unit="img", leave=False, file=sys.stderr)]


def region_counts(settings: RegionSettings, sweep: Sequence[int] = ()) -> list[int]:
    """The ``max_regions`` of each candidate: ``settings``' own first, then the other counts of ``sweep``."""
    if any(k < 1 for k in sweep):
        raise ValueError(f"region counts of the sweep must be >= 1, got {list(sweep)}")
    return [settings.max_regions] + [k for k in dict.fromkeys(sweep) if k != settings.max_regions]


def segment_candidates(model: torch.nn.Module, method: str, images: torch.Tensor, settings: RegionSettings,
                       sweep: Sequence[int] = (), batch_size: int = 32, device: torch.device | str = "cpu",
                       desc: str = "segment", extents: torch.Tensor | None = None) -> list[list[np.ndarray]]:
    """Per image, its label maps at each count of :func:`region_counts` (:func:`segment_images` with that
    ``max_regions``): the candidates of the BSDS benchmark's ODS / OIS."""
    per_count = [segment_images(model, method, images, replace(settings, max_regions=k), batch_size, device,
                                f"{desc} k={k}", extents) for k in region_counts(settings, sweep)]
    return [list(candidates) for candidates in zip(*per_count, strict=True)]


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to the ground truth's (H, W)."""
    if labels.shape == shape:
        return labels
    rows = (np.arange(shape[0]) * labels.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * labels.shape[1]) // shape[1]
    return labels[rows[:, None], cols[None, :]]


class RegionEvaluator:
    """The seven region metrics over a data set (keys :data:`METRIC_KEYS`; the four region metrics at ODS).

    ``update(pred, gts)``: one label map, or a list of candidates (the first is the model's own setting), and
    its ground truth(s) (BSDS: several human segmentations; the region metrics use all of them, the segment
    metrics the first ground truth and candidate). Every ground-truth id is a segment (no background). With
    several candidates per image, ``compute`` adds the OIS keys :data:`OIS_KEYS`.
    """

    def __init__(self) -> None:
        self.regions = RegionMeter()
        self.segments = AgnosticMeter()
        self.candidates = 1

    @property
    def num_images(self) -> int:
        return self.regions.num_images

    def update(self, pred: np.ndarray | Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> None:
        if not gts:
            raise ValueError("gts must hold at least one ground-truth map")
        preds = [pred] if isinstance(pred, np.ndarray) else list(pred)
        preds = [resize_labels(p, gts[0].shape) for p in preds]
        self.regions.update(preds, list(gts))
        self.segments.update(preds[0], gts[0])
        self.candidates = len(preds)

    def compute(self) -> dict[str, float]:
        regions = self.regions.compute()
        segments = self.segments.compute()
        ois = {key: regions[source] for key, source in OIS_KEYS.items()} if self.candidates > 1 else {}
        scores = {
            "covering": regions["covering_ods"],
            "rand_index": regions["pri_ods"],
            "vi": regions["vi_ods"],
            "boundary_f": regions["boundary_f_ods"],
            "recall50": segments["recall"],
            "miou_matched": segments["miou"],
            "boundary_iou": segments["boundary_iou"],
            **ois,
        }
        return {k: (float(v) if math.isfinite(v) else float("nan")) for k, v in scores.items()}


def score_split(model: torch.nn.Module, method: str, split: TensorSplit, settings: RegionSettings, batch_size: int,
                device: torch.device) -> tuple[dict[str, float], list[np.ndarray]]:
    """An in-memory split with masks (training's validation) segmented with ``method``'s inference routine and
    scored against its one ground truth per image; also the label maps."""
    labels = segment_images(model, method, split.images, settings, batch_size, device, desc=f"val {method}",
                            extents=split.extents)
    evaluator = RegionEvaluator()
    for pred, gt in zip(labels, split.masks.numpy(), strict=True):
        evaluator.update(pred, [gt[:pred.shape[0], :pred.shape[1]]])
    return evaluator.compute(), labels
