"""From a data set folder to in-memory tensors and seeded mini-batches for training and evaluation.

The default data sets are small, so a split is decoded once, resized to a square side and kept as uint8
tensors. Batches stay uint8 until they are on the training device (:func:`batch_to_device` converts them
there: a quarter of the bytes to copy), except where an augmentation computes new pixel values (blur, rescale,
mosaic convert their batch to float first, as before). Masks are never opened unless asked for
(``with_masks=False`` for image-level supervision).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from lofiseg.data.format import Dataset, Record

Augment = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]


@dataclass
class TensorSplit:
    """A decoded split: images (N, 3, S, S) uint8, masks (N, S, S) uint8 or None, ids, tags."""

    images: torch.Tensor
    masks: torch.Tensor | None
    ids: list[str]
    tags: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int]) -> TensorSplit:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return TensorSplit(self.images[idx], None if self.masks is None else self.masks[idx],
                           [self.ids[i] for i in idx.tolist()], [self.tags[i] for i in idx.tolist()])


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))


def load_split(dataset: Dataset, records: Sequence[Record], size: int, with_masks: bool = True,
               desc: str | None = None) -> TensorSplit:
    """Decode ``records`` of ``dataset`` at ``size`` x ``size`` (bilinear images, nearest masks)."""
    if not records:
        raise ValueError(f"{dataset.root}: no samples selected")
    images, masks = [], []
    for record in tqdm(records, desc=desc or f"load {dataset.root.name}", unit="img", leave=False, file=sys.stderr):
        images.append(_resize_image(dataset.image(record), size))
        if with_masks:
            masks.append(_resize_mask(dataset.mask(record), size))
    return TensorSplit(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(np.stack(masks)) if with_masks else None,
        ids=[r.id for r in records],
        tags=[r.tags for r in records],
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1]; models normalise inside."""
    return images.float().div_(255.0)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """:func:`to_float` of uint8 images; float images as they are."""
    return to_float(images) if images.dtype == torch.uint8 else images


def batch_to_device(batch: dict[str, torch.Tensor], device: torch.device,
                    channels_last: bool = False) -> dict[str, torch.Tensor]:
    """``batch`` on ``device``, its uint8 ``image`` converted to float in [0, 1] there (after the copy).

    On CUDA the copies come from pinned memory and do not block the host (``non_blocking``), so the next
    batch is prepared while this one trains. ``channels_last``: the image in NHWC memory order.
    """
    cuda = device.type == "cuda"
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            value = (value.pin_memory() if cuda and value.device.type == "cpu" else value).to(device, non_blocking=cuda)
        out[key] = value
    if "image" in out:
        out["image"] = as_float(out["image"])
        if channels_last:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def _where(pick: torch.Tensor, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Per sample: ``changed`` where ``pick`` (B,) is True, else ``original`` (a plain tensor either way)."""
    pick = pick.to(original.device).view(-1, *[1] * (original.ndim - 1))
    return torch.where(pick, changed.as_subclass(torch.Tensor), original)


def random_flip(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Horizontal flip of half the batch, images and masks together."""
    flip = torch.rand(batch["image"].shape[0], generator=generator) < 0.5
    out = dict(batch)
    out["image"] = _where(flip, TF.horizontal_flip(tv_tensors.Image(batch["image"])), batch["image"])
    if "mask" in batch:
        out["mask"] = _where(flip, TF.horizontal_flip(tv_tensors.Mask(batch["mask"])), batch["mask"])
    return out


def random_blur(batch: dict[str, torch.Tensor], generator: torch.Generator, prob: float = 0.5,
                sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """Gaussian blur (3x3 kernel, border pixels repeated) of each image with probability ``prob``."""
    x = as_float(batch["image"])
    # torchvision's blur pads by reflection: pad by repeating the border first and cut that ring off after.
    padded = TF.pad(tv_tensors.Image(x), [1], padding_mode="edge")
    blurred = TF.gaussian_blur(padded, kernel_size=[3, 3], sigma=[sigma, sigma])[..., 1:-1, 1:-1]
    pick = torch.rand(x.shape[0], generator=generator) < prob
    out = dict(batch)
    out["image"] = _where(pick, blurred, x)
    return out


def _rescaled_size(height: int, width: int, scale: float) -> list[int]:
    return [max(8, round(height * scale)), max(8, round(width * scale))]


def rescale_images(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``images`` (N, C, H, W) resized by ``scale`` (bilinear, each side at least 8 px); as they are at 1."""
    if scale == 1.0:
        return images
    size = _rescaled_size(*images.shape[-2:], scale)
    resized = TF.resize(tv_tensors.Image(images), size, interpolation=InterpolationMode.BILINEAR, antialias=False)
    return resized.as_subclass(torch.Tensor)


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Label masks (N, H, W) resized to ``size`` x ``size`` by nearest-exact: every value (255 too) kept as is."""
    resized = TF.resize(tv_tensors.Mask(masks), [size, size], interpolation=InterpolationMode.NEAREST_EXACT)
    return resized.as_subclass(torch.Tensor)


def random_rescale(batch: dict[str, torch.Tensor], generator: torch.Generator, low: float = 0.75,
                   high: float = 1.25) -> dict[str, torch.Tensor]:
    """Rescale the whole (square) batch by one random factor in [low, high), then cut a random window of the
    original size out of it, or place it at a random spot of a canvas of that size (image 0, mask 255 = ignore).

    One factor and one (row, column) offset per batch, each offset drawn independently in [0, |new - size|].
    """
    x = as_float(batch["image"])
    size = x.shape[-1]
    factor = low + (high - low) * torch.rand((), generator=generator).item()
    image = tv_tensors.Image(rescale_images(x, factor))
    new = image.shape[-1]
    mask = tv_tensors.Mask(resize_masks(batch["mask"], new)) if "mask" in batch else None
    top, left = torch.randint(0, abs(new - size) + 1, (2,), generator=generator).tolist()
    if new >= size:
        image = TF.crop(image, top, left, size, size)
        mask = None if mask is None else TF.crop(mask, top, left, size, size)
    else:
        padding = [left, top, size - new - left, size - new - top]  # left, top, right, bottom
        image = TF.pad(image, padding, fill=0)
        mask = None if mask is None else TF.pad(mask, padding, fill=255)
    out = dict(batch)
    out["image"] = image.as_subclass(torch.Tensor)
    if mask is not None:
        out["mask"] = mask.as_subclass(torch.Tensor)
    return out


def random_mosaic(batch: dict[str, torch.Tensor], generator: torch.Generator,
                  prob: float = 0.5) -> dict[str, torch.Tensor]:
    """Replace each image with probability ``prob`` by a 2x2 mosaic of four images of the batch (drawn with
    replacement) at half size, masks alike: scene-like layouts, several smaller objects of several classes, made
    from one-object web images. Beyond Veksler's training; the mosaic of YOLOv4 (Bochkovskiy et al., 2020)."""
    x = as_float(batch["image"])
    b, c, size, _ = x.shape
    if size % 2:
        raise ValueError(f"random_mosaic: image size {size} is odd; a 2x2 mosaic needs an even size")
    half = size // 2
    pick = torch.rand(b, generator=generator) < prob
    sources = torch.randint(0, b, (b, 4), generator=generator)

    def tile(small: torch.Tensor) -> torch.Tensor:  # (B, C, h, h) -> (B, C, 2h, 2h), tiles row by row
        tiles = small[sources].view(b, 2, 2, small.shape[1], half, half)
        return tiles.permute(0, 3, 1, 4, 2, 5).reshape(b, small.shape[1], size, size)

    out = dict(batch)
    small = TF.resize(tv_tensors.Image(x), [half, half], interpolation=InterpolationMode.BILINEAR, antialias=True)
    out["image"] = _where(pick, tile(small.as_subclass(torch.Tensor)), x)
    if "mask" in batch:
        out["mask"] = _where(pick, tile(resize_masks(batch["mask"], half)[:, None])[:, 0], batch["mask"])
    return out


def iterate_batches(split: TensorSplit, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = False, augment: Sequence[Augment] = (),
                    extra: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches ``{"image": uint8 (B,3,S,S), "mask": long (B,S,S), "index": long (B,)}``.

    The image stays uint8 (float after a blur, rescale or mosaic): :func:`batch_to_device` makes it float
    on the device. ``extra`` holds per-sample tensors (first dim N) sliced along with the batch.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        batch: dict[str, torch.Tensor] = {"image": split.images[idx], "index": idx}
        if split.masks is not None:
            batch["mask"] = split.masks[idx].long()
        for key, value in (extra or {}).items():
            batch[key] = value[idx]
        for aug in augment:
            batch = aug(batch, generator if generator is not None else torch.Generator().manual_seed(0))
        yield batch
