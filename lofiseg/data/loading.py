"""From a data set folder to in-memory tensors and seeded mini-batches for training and evaluation.

The default data sets are small, so a split is decoded once, resized and kept as uint8 tensors. Batches stay
uint8 until they are on the training device (:func:`batch_to_device` converts them there: a quarter of the bytes
to copy), except where an augmentation computes new pixel values (blur, rescale, mosaic convert their batch to
float first). Masks are never opened unless asked for (``with_masks=False`` for image-level supervision).

Resizing (``load_split``'s ``resize``): ``shorter_side`` (default) scales each image so its shorter side is
``size``, keeping its aspect ratio, as the papers do; ``square`` squashes it to ``size`` x ``size``. Images of
different shapes share one uint8 canvas (top-left aligned, image 0 and mask 255 = ignore in the rest), with each
image's valid extent (height, width) in ``TensorSplit.extents``: one tensor keeps batching and indexing as fast
as the square case, at the cost of the padding (at most the longest side squared per image). Shuffled (training)
batches of such a split are random ``size`` x ``size`` crops inside each image; ordered (evaluation) batches are
the whole canvas. A square image at ``size`` is the same under both modes, and a split whose images all end up
``size`` x ``size`` has no extents: then batches are exactly those of ``square``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from lofiseg.data.format import IGNORE, Dataset, Record

Augment = Callable[[dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]
Resize = Literal["square", "shorter_side"]
RESIZE_MODES: tuple[Resize, ...] = ("square", "shorter_side")


@dataclass
class TensorSplit:
    """A decoded split: images (N, 3, H, W) uint8, masks (N, H, W) uint8 or None, ids, tags; ``extents``
    (N, 2) long: each image's valid (height, width) at the canvas' top-left, None when every image fills it."""

    images: torch.Tensor
    masks: torch.Tensor | None
    ids: list[str]
    tags: list[tuple[str, ...]]
    extents: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def crop_size(self) -> int:
        """The side of a training crop: the shortest valid side (the load size under ``shorter_side``)."""
        return int(self.extents.min()) if self.extents is not None else min(self.images.shape[-2:])

    def extent(self, index: int) -> tuple[int, int]:
        """The valid (height, width) of image ``index``."""
        if self.extents is None:
            return tuple(self.images.shape[-2:])
        height, width = self.extents[index].tolist()
        return height, width

    def subset(self, index: Sequence[int]) -> TensorSplit:
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return TensorSplit(self.images[idx], None if self.masks is None else self.masks[idx],
                           [self.ids[i] for i in idx.tolist()], [self.tags[i] for i in idx.tolist()],
                           None if self.extents is None else self.extents[idx])


def resized_shape(height: int, width: int, size: int, resize: Resize) -> tuple[int, int]:
    """(height, width) of an image once resized: ``size`` x ``size``, or its shorter side to ``size``."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if resize == "square":
        return size, size
    return shorter_side_shape(height, width, size)


def shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is ``size``, each side rounded half up in integer arithmetic,
    so that the TorchScript served model (which compiles this function) sizes an image exactly as here."""
    short = min(height, width)
    return max(size, (2 * height * size + short) // (2 * short)), max(size, (2 * width * size + short) // (2 * short))


def _resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize(shape[::-1], Image.BILINEAR))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.NEAREST))


def _canvas(arrays: list[np.ndarray], shape: tuple[int, int], fill: int) -> np.ndarray:
    """``arrays`` stacked at the top-left of a (N, *shape, ...) canvas filled with ``fill``."""
    out = np.full((len(arrays), *shape, *arrays[0].shape[2:]), fill, dtype=np.uint8)
    for i, array in enumerate(arrays):
        out[i, :array.shape[0], :array.shape[1]] = array
    return out


def load_split(dataset: Dataset, records: Sequence[Record], size: int, with_masks: bool = True,
               desc: str | None = None, resize: Resize = "shorter_side") -> TensorSplit:
    """Decode ``records`` of ``dataset`` resized by ``resize`` to ``size`` (bilinear images, nearest masks; see
    the module docstring for the canvas and extents)."""
    if not records:
        raise ValueError(f"{dataset.root}: no samples selected")
    images, masks = [], []
    for record in tqdm(records, desc=desc or f"load {dataset.root.name}", unit="img", leave=False, file=sys.stderr):
        image = dataset.image(record)
        shape = resized_shape(*image.shape[:2], size, resize)
        images.append(_resize_image(image, shape))
        if with_masks:
            masks.append(_resize_mask(dataset.mask(record), shape))
    extents = torch.tensor([image.shape[:2] for image in images], dtype=torch.long)
    canvas = tuple(extents.max(dim=0).values.tolist())
    return TensorSplit(
        images=torch.from_numpy(_canvas(images, canvas, 0)).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(_canvas(masks, canvas, IGNORE)) if with_masks else None,
        ids=[r.id for r in records],
        tags=[r.tags for r in records],
        extents=None if bool((extents == size).all()) else extents,
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


def random_crops(split: TensorSplit, idx: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (B, 3, C, C) and masks (B, C, C) of samples ``idx``: one random C x C window
    (C = ``split.crop_size``) inside each image's valid extent, offsets uniform, images and masks alike."""
    side = split.crop_size
    room = split.extents[idx] - side + 1  # (B, 2): number of valid offsets along rows, columns
    offsets = (torch.rand(room.shape, generator=generator) * room).long()
    steps = torch.arange(side)
    rows = (offsets[:, 0, None] + steps)[:, :, None]  # (B, C, 1)
    cols = (offsets[:, 1, None] + steps)[:, None, :]  # (B, 1, C)
    sample = idx[:, None, None]
    images = split.images[sample, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: (B, C, C, 3)
    masks = None if split.masks is None else split.masks[sample, rows, cols]
    return images, masks


def iterate_batches(split: TensorSplit, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = False, augment: Sequence[Augment] = (),
                    extra: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches ``{"image": uint8 (B,3,H,W), "mask": long (B,H,W), "index": long (B,)}``.

    The image stays uint8 (float after a blur, rescale or mosaic): :func:`batch_to_device` makes it float on the
    device. Shuffled batches of a split with extents are :func:`random_crops` (drawn from ``generator`` after the
    order, before ``augment``); ordered batches are whole canvases. ``extra`` holds per-sample tensors (first
    dim N) sliced along with the batch.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    crop = shuffle and split.extents is not None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if crop:
            images, masks = random_crops(split, idx, generator if generator is not None else torch.Generator().manual_seed(0))
        else:
            images, masks = split.images[idx], None if split.masks is None else split.masks[idx]
        batch: dict[str, torch.Tensor] = {"image": images, "index": idx}
        if masks is not None:
            batch["mask"] = masks.long()
        for key, value in (extra or {}).items():
            batch[key] = value[idx]
        for aug in augment:
            batch = aug(batch, generator if generator is not None else torch.Generator().manual_seed(0))
        yield batch
