"""A segmentation network's training augmentation: the settings a bundle records, and their batch transforms."""

from __future__ import annotations

from functools import partial
from typing import Any

from lofiseg.data.loading import Augment, random_blur, random_flip, random_mosaic, random_rescale


def augment_settings(mosaic: float, flip: bool, blur: bool,
                     rescale: tuple[float, float] | None) -> dict[str, Any]:
    """The training augmentation as recorded in a model's info.json (``mosaic``: the chance of a 2x2 mosaic;
    ``rescale``: the (low, high) scale range or None)."""
    return {"mosaic": mosaic, "flip": flip, "blur": blur, "rescale": list(rescale) if rescale else None}


def augmentations(settings: dict[str, Any]) -> list[Augment]:
    """:func:`augment_settings` as the batch transforms, in order: mosaic, flip, blur, rescale."""
    out: list[Augment] = [partial(random_mosaic, prob=settings["mosaic"])] if settings["mosaic"] else []
    out += [random_flip] if settings["flip"] else []
    out += [random_blur] if settings["blur"] else []
    if settings["rescale"]:
        low, high = settings["rescale"]
        out.append(partial(random_rescale, low=low, high=high))
    return out
