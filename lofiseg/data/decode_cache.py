"""Decode each data set once: :func:`load_split`'s uint8 tensors cached on disk, keyed by what they are made of.

Every training and evaluation stage decodes its images again (PIL decode + resize); with the cache, the first
process to load a split writes its images ``(N, 3, S, S)`` and masks ``(N, S, S)`` as two torch files, and
every later load (another stage, another loss, another noise rate with the same images) reads them back.

The key is content, never a path or a time stamp, so a changed file is never served stale:

* the sha256 of every image (or mask) file's bytes, in record order (hashing costs a small fraction of
  decoding; equal bytes in two data sets, e.g. the noisy copies' images, share one entry);
* the size, and any further :func:`load_split` keyword (a future resize mode enters the key by its value);
* the source of the decoding code (``loading.py``, ``format.py``) and the PIL and numpy versions: a change in
  how images are decoded or resized starts a new entry.

Images and masks are separate entries, so noisy copies with flipped masks still share the decoded images.
Files are written atomically (temporary name, then rename): two processes filling the same entry at once
both write the same bytes and each reader sees a whole file. An unreadable entry is decoded again.

Where: ``$LOFISEG_DECODE_CACHE`` (a folder; ``off`` turns the cache off), else ``.cache/lofiseg/decoded``
under the working directory (the project root for ``dvc repro``; git- and dvc-ignored). Nothing evicts
entries; delete the folder to reclaim the space.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch

from lofiseg.atomic import atomic_write_bytes
from lofiseg.data.format import (
    MANIFEST,
    Dataset,
    DatasetFormatError,
    Record,
    sha256_file,
)
from lofiseg.data.loading import TensorSplit, load_split

log = logging.getLogger(__name__)

CACHE_ENV = "LOFISEG_DECODE_CACHE"
DEFAULT_CACHE = Path(".cache") / "lofiseg" / "decoded"
OFF = ("off", "0", "false", "no", "none")


def decode_cache_dir() -> Path | None:
    """The cache folder (``$LOFISEG_DECODE_CACHE`` or :data:`DEFAULT_CACHE`), None when turned off."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return DEFAULT_CACHE
    return None if value.strip().lower() in OFF or not value.strip() else Path(value)


@functools.cache  # the code this process runs: read once
def decoder_identity() -> str:
    """sha256 of what turns file bytes into tensors and stores them: the modules' source and library versions."""
    digest = hashlib.sha256(f"PIL {PIL.__version__} numpy {np.__version__}".encode())
    # loading.py and format.py decode; this module lays the entries out (a new layout must not read old ones)
    for source in (inspect.getfile(TensorSplit), inspect.getfile(Dataset), __file__):
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def _file_digests(dataset: Dataset, records: Sequence[Record], part: str) -> list[str]:
    """``<suffix>:<sha256 of the bytes>`` of each record's image or mask file; missing files fail naming it."""
    out = []
    for record in records:
        path = dataset.root / getattr(record, part)
        if part == "mask" and not record.has_mask:
            raise DatasetFormatError(f"{dataset.root / MANIFEST}: sample {record.id!r} has no mask")
        if not path.is_file():
            raise DatasetFormatError(f"{dataset.describe(record, part)}: {part} file is missing")
        out.append(f"{path.suffix.lower()}:{sha256_file(path)}")
    return out


def entry_key(part: str, digests: Sequence[str], size: int, options: dict[str, Any]) -> str:
    """The cache entry's name: sha256 of the part, decoder, size, load_split options and file digests."""
    head = json.dumps({"part": part, "decoder": decoder_identity(), "size": size,
                       "options": {k: repr(v) for k, v in sorted(options.items())}}, sort_keys=True)
    digest = hashlib.sha256(head.encode())
    digest.update("\n".join(digests).encode())
    return digest.hexdigest()


def _read(path: Path, leading: tuple[int, ...], ndim: int) -> torch.Tensor | None:
    """The entry's uint8 tensor (memory-mapped), or None: missing, unreadable, or not ``ndim`` dimensions
    starting with ``leading`` (the spatial size is the decoder's business, and the decoder is in the key)."""
    if not path.is_file():
        return None
    try:
        tensor = torch.load(path, mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable entry is a miss, decoded and written again
        log.warning("decode cache: %s unreadable (%s), decoding again", path, exc)
        return None
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.uint8 or tensor.dim() != ndim \
            or tuple(tensor.shape[:len(leading)]) != leading:
        log.warning("decode cache: %s holds an unexpected tensor, decoding again", path)
        return None
    return tensor


def _read_extents(path: Path, count: int) -> torch.Tensor | None | bool:
    """The (N, 2) extents stored beside an images entry, None when there are none (every image size x size),
    False when the file is unreadable (then the entry is decoded again)."""
    if not path.is_file():
        return None
    try:
        extents = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - like an unreadable entry: a miss
        log.warning("decode cache: %s unreadable (%s), decoding again", path, exc)
        return False
    if not isinstance(extents, torch.Tensor) or tuple(extents.shape) != (count, 2):
        log.warning("decode cache: %s holds unexpected extents, decoding again", path)
        return False
    return extents


def _write(path: Path, tensor: torch.Tensor) -> None:
    buffer = io.BytesIO()
    torch.save(tensor.contiguous(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def cached_load_split(dataset: Dataset, records: Sequence[Record], size: int, with_masks: bool = True,
                      desc: str | None = None, **options: Any) -> TensorSplit:
    """:func:`~lofiseg.data.loading.load_split` (same arguments, same result) through the decode cache.

    ``options`` are further keywords of ``load_split``; they are passed on and enter the key.
    """
    root = decode_cache_dir()
    if root is None or not records:
        return load_split(dataset, records, size, with_masks, desc, **options)
    count = len(records)
    image_key = entry_key("images", _file_digests(dataset, records, "image"), size, options)
    mask_key = entry_key("masks", _file_digests(dataset, records, "mask"), size, options) if with_masks else None
    images = _read(root / f"{image_key}.pt", (count, 3), ndim=4)
    masks = _read(root / f"{mask_key}.pt", (count,), ndim=3) if mask_key else None
    extents_path = root / f"{image_key}.extents"  # only for images not all size x size (see load_split)
    extents = _read_extents(extents_path, count) if images is not None else None
    if extents is False:
        images = None  # the images' extents are unreadable: decode again
    if images is None or (mask_key is not None and masks is None):
        split = load_split(dataset, records, size, with_masks, desc, **options)
        if images is None:
            if split.extents is not None:  # before the images: an images entry never lacks its extents
                _write(extents_path, split.extents)
            _write(root / f"{image_key}.pt", split.images)
        if mask_key is not None and masks is None:
            _write(root / f"{mask_key}.pt", split.masks)
        return split
    return TensorSplit(images=images, masks=masks, ids=[r.id for r in records], tags=[r.tags for r in records],
                       extents=extents)
