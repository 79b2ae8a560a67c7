"""Batched prediction over an in-memory split, and the saliency map of a trained model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from lofiseg.data.format import Dataset, Record
from lofiseg.data.loading import TensorSplit, batch_to_device, iterate_batches, load_split, rescale_images
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


@torch.no_grad()
def predict_probs(model: torch.nn.Module, split: TensorSplit, batch_size: int = 32,
                  device: torch.device | str = "cpu", scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """Softmax probabilities (N, M, S, S) of ``model`` on every image of ``split``, on the CPU (``scales`` and
    ``flip``: see :func:`multi_scale_probs`)."""
    was_training = model.training
    model.eval()
    out = []
    for batch in iterate_batches(split, batch_size):
        out.append(multi_scale_probs(model, batch_to_device(batch, torch.device(device))["image"], scales, flip).cpu())
    model.train(was_training)
    return torch.cat(out)


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
    """(M, S, S) probabilities -> (M, height, width), bilinear (a convex combination: still sums to 1); the
    same tensor when it already has that size."""
    if probs.shape[-2:] == (height, width):
        return probs
    return F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def predict_native(model: torch.nn.Module, dataset: Dataset, records: Sequence[Record], image_size: int,
                   batch_size: int = 32, device: torch.device | str = "cpu", desc: str = "predict",
                   scales: Sequence[float] = (1.0,), flip: bool = False) -> Iterator[tuple[Record, torch.Tensor]]:
    """Softmax probabilities (M, H, W) of each record's image at the record's own size: the model sees the
    image resized to its training size (times each of ``scales``), the maps are resized back (:func:`resize_probs`)."""
    split = load_split(dataset, records, image_size, with_masks=False, desc=desc)
    probs = predict_probs(model, split, batch_size, device=device, scales=scales, flip=flip)
    for record, prob in zip(records, probs, strict=True):
        with Image.open(dataset.root / record.image) as image:  # the header only: no second decode
            width, height = image.size
        yield record, resize_probs(prob, height, width)
