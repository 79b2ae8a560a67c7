"""Batched prediction over an in-memory split, and the saliency map of a trained model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import Dataset, Record
from lofiseg.data.loading import TensorSplit, batch_to_device, rescale_images
from lofiseg.models.channel import choose_foreground_channel


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"test-time scales must be positive factors, got {list(scales)}")
    return scales


def softmax_channels(scores: torch.Tensor) -> torch.Tensor:
    return scores.softmax(dim=1)


def multi_scale_probs(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,),
                      flip: bool = False,
                      to_probs: Callable[[torch.Tensor], torch.Tensor] = softmax_channels) -> torch.Tensor:
    """Probabilities (N, M, H, W) of ``images`` (N, 3, H, W) averaged over inputs resized by each of ``scales``
    (bilinear, the maps resized back) and, with ``flip``, their mirror images: DeepLab's multi-scale + flip
    test-time inference (Chen et al. 2018, Sec. 4.1). ``to_probs`` turns the model's output into
    probabilities (default: softmax over channels, for logits)."""
    height, width = images.shape[-2:]
    total, count = None, 0
    for scale in check_scales(scales):
        scaled = rescale_images(images, scale)
        views = [scaled, scaled.flip(-1)] if flip else [scaled]
        for index, view in enumerate(views):
            probs = to_probs(model(view).float())
            if index == 1:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            count += 1
    return total / count


def extent_groups(split: TensorSplit, batch_size: int) -> Iterator[tuple[torch.Tensor, int, int]]:
    """(indices, height, width): the images of ``split`` of one valid extent, ``batch_size`` at a time, so that
    a model sees each whole image, and nothing but it (the model pads to its stride and crops back)."""
    if split.extents is None:
        height, width = split.images.shape[-2:]
        for start in range(0, len(split), batch_size):
            yield torch.arange(start, min(start + batch_size, len(split))), height, width
        return
    shapes, inverse = split.extents.unique(dim=0, return_inverse=True)
    for group, (height, width) in enumerate(shapes.tolist()):
        members = (inverse == group).nonzero().flatten()
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size], height, width


@torch.no_grad()
def predict_probs(model: torch.nn.Module, split: TensorSplit, batch_size: int = 32,
                  device: torch.device | str = "cpu", scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Softmax probabilities (N, M, H, W) of ``model`` on every image of ``split``, on the CPU, each image
    predicted at its own extent (:func:`extent_groups`; 0 outside it on the canvas). ``scales`` and ``flip``:
    see :func:`multi_scale_probs`."""
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    for idx, height, width in extent_groups(split, batch_size):
        images = batch_to_device({"image": split.images[idx, :, :height, :width]}, torch.device(device))["image"]
        probs = multi_scale_probs(model, images, scales, flip).cpu()
        if out is None:
            out = probs.new_zeros(len(split), probs.shape[1], *split.images.shape[-2:])
        out[idx, :, :height, :width] = probs
    model.train(was_training)
    return out


def saliency_channel(loss: str, probs: torch.Tensor, masks: torch.Tensor | None) -> int:
    """Which output channel is the saliency map.

    CE is supervised with foreground = label 1, so it is channel 1. The class-agnostic losses (CAS, CACE)
    learn regions, not classes: the channel is the one that correlates best with ground truth on the
    validation split (CAS paper Sec. 4.2).
    """
    if loss == "ce":
        return 1
    if masks is None:
        raise ValueError(f"loss {loss!r} needs validation masks to choose the saliency channel")
    return choose_foreground_channel(probs, masks)


def resize_probs(probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(M, h, w) probabilities -> (M, height, width), bilinear (a convex combination: still sums to 1); the
    same tensor when it already has that size."""
    if probs.shape[-2:] == (height, width):
        return probs
    return F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def predict_native(model: torch.nn.Module, dataset: Dataset, records: Sequence[Record], image_size: int,
                   batch_size: int = 32, device: torch.device | str = "cpu", desc: str = "predict",
                   scales: Sequence[float] = (1.0,), flip: bool = False) -> Iterator[tuple[Record, torch.Tensor]]:
    """Softmax probabilities (M, H, W) of each record's image at the record's own size: the model sees the
    whole image with its shorter side resized to its training size (times each of ``scales``), the maps are cut
    to the image's extent and resized back (:func:`resize_probs`)."""
    split = cached_load_split(dataset, records, image_size, with_masks=False, desc=desc)
    probs = predict_probs(model, split, batch_size, device=device, scales=scales, flip=flip)
    for index, (record, prob) in enumerate(zip(records, probs, strict=True)):
        with Image.open(dataset.root / record.image) as image:  # the header only: no second decode
            width, height = image.size
        valid_height, valid_width = split.extent(index)
        yield record, resize_probs(prob[:, :valid_height, :valid_width], height, width)
