"""From a data set folder to in-memory tensors and seeded mini-batches for training and evaluation.

The default data sets are small, so a split is decoded once, resized to a square side and kept as uint8
tensors; batches are converted to float on the fly. Masks are never opened unless asked for
(``with_masks=False`` for image-level supervision).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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


def random_flip(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Horizontal flip of half the batch, images and masks together."""
    flip = torch.rand(batch["image"].shape[0], generator=generator) < 0.5
    out = dict(batch)
    out["image"] = torch.where(flip[:, None, None, None], batch["image"].flip(-1), batch["image"])
    if "mask" in batch:
        out["mask"] = torch.where(flip[:, None, None], batch["mask"].flip(-1), batch["mask"])
    return out


def random_blur(batch: dict[str, torch.Tensor], generator: torch.Generator, prob: float = 0.5,
                sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """Gaussian blur (3x3 separable kernel) of a random subset of images."""
    x = batch["image"]
    coords = torch.arange(-1, 2, dtype=x.dtype, device=x.device)
    k = torch.exp(-coords**2 / (2 * sigma**2))
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    pick = (torch.rand(x.shape[0], generator=generator) < prob).to(x.device)
    out = dict(batch)
    out["image"] = torch.where(pick[:, None, None, None], blurred, x)
    return out


def rescale_images(images: torch.Tensor, scale: float) -> torch.Tensor:
    """``images`` (N, C, H, W) resized by ``scale`` (bilinear, each side at least 8 px); as they are at 1."""
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (max(8, round(height * scale)), max(8, round(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Label masks (N, H, W) resized to ``size`` x ``size`` by nearest-exact: every value (255 too) kept as is."""
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].to(masks.dtype)


def random_rescale(batch: dict[str, torch.Tensor], generator: torch.Generator, low: float = 0.75,
                   high: float = 1.25) -> dict[str, torch.Tensor]:
    """Rescale the whole batch by one random factor, then crop or pad (ignore label) back to its size."""
    x = batch["image"]
    size = x.shape[-1]
    factor = low + (high - low) * torch.rand((), generator=generator).item()
    image = rescale_images(x, factor)
    new = image.shape[-1]
    out = dict(batch)
    mask = resize_masks(batch["mask"], new) if "mask" in batch else None
    if new >= size:
        off = int(torch.randint(0, new - size + 1, (2,), generator=generator)[0])
        image = image[..., off:off + size, off:off + size]
        mask = None if mask is None else mask[..., off:off + size, off:off + size]
    else:
        pad = size - new
        image = F.pad(image, (0, pad, 0, pad))
        mask = None if mask is None else F.pad(mask, (0, pad, 0, pad), value=255)
    out["image"] = image
    if mask is not None:
        out["mask"] = mask
    return out


def random_mosaic(batch: dict[str, torch.Tensor], generator: torch.Generator,
                  prob: float = 0.5) -> dict[str, torch.Tensor]:
    """Replace each image with probability ``prob`` by a 2x2 mosaic of four images of the batch (drawn with
    replacement) at half size, masks alike: scene-like layouts, several smaller objects of several classes, made
    from one-object web images. Beyond Veksler's training; the mosaic of YOLOv4 (Bochkovskiy et al., 2020)."""
    x = batch["image"]
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
    small = F.interpolate(x, size=(half, half), mode="bilinear", align_corners=False, antialias=True)
    out["image"] = torch.where(pick[:, None, None, None].to(x.device), tile(small), x)
    if "mask" in batch:
        mask = batch["mask"]
        out["mask"] = torch.where(pick[:, None, None].to(mask.device), tile(resize_masks(mask, half)[:, None])[:, 0], mask)
    return out


def iterate_batches(split: TensorSplit, batch_size: int, generator: torch.Generator | None = None,
                    shuffle: bool = False, augment: Sequence[Augment] = (),
                    extra: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Mini-batches ``{"image": float (B,3,S,S), "mask": long (B,S,S), "index": long (B,)}``.

    ``extra`` holds per-sample tensors (first dim N) sliced along with the batch.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        batch: dict[str, torch.Tensor] = {"image": to_float(split.images[idx]), "index": idx}
        if split.masks is not None:
            batch["mask"] = split.masks[idx].long()
        for key, value in (extra or {}).items():
            batch[key] = value[idx]
        for aug in augment:
            batch = aug(batch, generator if generator is not None else torch.Generator().manual_seed(0))
        yield batch
