"""The one dataset format every stage reads and writes.

A data set is a folder::

    images/<id>.<ext>     RGB images (png/jpg)
    masks/<id>.png        uint8 label maps: 0 background, 1..K regions or classes, 255 ignore
    manifest.csv          one row per sample: id, split, tags, image, mask, source, sha256, mask_sha256
                          (+ extra columns)

``manifest.csv`` is written last, inside a temporary folder that is renamed into place, so a folder with a
manifest is always complete. ``tags`` holds image-level labels separated by ``;`` (e.g. a web image's class).
``sha256`` / ``mask_sha256`` are the digests of the image and mask files, so the manifest names the data set's
content (:func:`dataset_digest`); a manifest written before ``mask_sha256`` existed is still read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lofiseg.atomic import atomic_dir

IGNORE = 255
MANIFEST = "manifest.csv"
BASE_FIELDS = ("id", "split", "tags", "image", "mask", "source", "sha256")  # required in a manifest
MASK_SHA256 = "mask_sha256"  # written by DatasetWriter; optional when reading (older manifests lack it)
WRITTEN_FIELDS = (*BASE_FIELDS, MASK_SHA256)
SPLITS = ("train", "val", "test")


class DatasetFormatError(ValueError):
    """A data set on disk does not follow the format; the message names the file."""


@dataclass
class Sample:
    """One image with its optional mask, in memory."""

    id: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) uint8, or None when the sample has image-level tags only
    split: str = "train"
    tags: tuple[str, ...] = ()
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """One manifest row; paths are relative to the data set root."""

    id: str
    split: str
    tags: tuple[str, ...]
    image: str
    mask: str
    source: str
    sha256: str
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    mask_sha256: str = ""  # empty: no mask, or a manifest from before the column

    @property
    def has_mask(self) -> bool:
        return bool(self.mask)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks (same digest as :func:`sha256_bytes` of its bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Decode image bytes to (H, W, 3) uint8; corrupt bytes raise a :class:`DatasetFormatError` naming ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"{where}: unreadable or corrupt image ({exc})") from exc


def read_image(path: str | os.PathLike, where: str | None = None) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8; a missing or corrupt file raises naming ``where`` (default: the
    path)."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise DatasetFormatError(f"{where}: image file is missing")
    return decode_image(path.read_bytes(), where)


def read_mask(path: str | os.PathLike, where: str | None = None) -> np.ndarray:
    """Decode a label map to (H, W) uint8 without any palette conversion; errors name ``where`` (default: the
    path)."""
    path = Path(path)
    where = where or str(path)
    if not path.is_file():
        raise DatasetFormatError(f"{where}: mask file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P"):
                raise DatasetFormatError(
                    f"{where}: mask must be a single-channel uint8 PNG (mode L or P), got mode {im.mode}"
                )
            return np.asarray(im).astype(np.uint8)  # mode P: the palette indices are the labels
    except DatasetFormatError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(f"{where}: unreadable or corrupt mask ({exc})") from exc


def check_mask(mask: np.ndarray, where: str, image_shape: tuple[int, int] | None = None,
               max_label: int | None = None, allow_empty: bool = False) -> None:
    """Validate one label map: 2-D uint8, same size as its image, labels in {0..max_label, 255}."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DatasetFormatError(f"{where}: mask must be 2-D uint8, got shape {mask.shape} dtype {mask.dtype}")
    if image_shape is not None and tuple(mask.shape) != tuple(image_shape):
        raise DatasetFormatError(
            f"{where}: mask size {mask.shape[1]}x{mask.shape[0]} != image size {image_shape[1]}x{image_shape[0]}"
        )
    if max_label is not None:
        values = np.unique(mask)
        bad = values[(values > max_label) & (values != IGNORE)]
        if bad.size:
            raise DatasetFormatError(
                f"{where}: unexpected mask values {bad.tolist()[:10]}; allowed 0..{max_label} and {IGNORE} (ignore)"
            )
    if not allow_empty and not (mask != IGNORE).any():
        raise DatasetFormatError(f"{where}: mask has no labelled pixel (all {IGNORE} = ignore)")


def _check_id(sample_id: str) -> None:
    if not sample_id or any(c in sample_id for c in "/\\;,\n") or sample_id.startswith("."):
        raise DatasetFormatError(f"invalid sample id {sample_id!r}: use letters, digits, '-', '_' and '.'")


class DatasetWriter:
    """Build a data set in a temporary folder; it appears under ``root`` only when the block succeeds.

    >>> with DatasetWriter("data/raw/x") as w:
    ...     w.add(sample)
    """

    def __init__(self, root: str | os.PathLike, extra_fields: Sequence[str] = ()):
        self.root = Path(root)
        self.extra_fields = tuple(extra_fields)
        self._ctx = None
        self._tmp: Path | None = None
        self._rows: list[dict[str, str]] = []
        self._ids: set[str] = set()

    def __enter__(self) -> DatasetWriter:
        self._ctx = atomic_dir(self.root)
        self._tmp = self._ctx.__enter__()
        (self._tmp / "images").mkdir()
        (self._tmp / "masks").mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._write_manifest()
            except BaseException as err:  # manifest failed: roll the folder back too
                self._ctx.__exit__(type(err), err, err.__traceback__)
                raise
        return bool(self._ctx.__exit__(exc_type, exc, tb))

    def _claim(self, sample_id: str) -> None:
        _check_id(sample_id)
        if sample_id in self._ids:
            raise DatasetFormatError(f"{self.root}: duplicate sample id {sample_id!r}")
        self._ids.add(sample_id)

    def add(self, sample: Sample, image_ext: str = "png") -> None:
        """Encode and add an in-memory sample."""
        if sample.image.ndim != 3 or sample.image.shape[2] != 3 or sample.image.dtype != np.uint8:
            raise DatasetFormatError(
                f"sample {sample.id!r}: image must be (H, W, 3) uint8, got {sample.image.shape} {sample.image.dtype}"
            )
        if image_ext not in ("png", "jpg"):
            raise ValueError(f"image_ext must be 'png' or 'jpg', got {image_ext!r}")
        if image_ext == "png":
            data = encode_png(sample.image)
        else:
            buf = io.BytesIO()
            Image.fromarray(sample.image).save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
        self.add_encoded(sample.id, data, image_ext, sample.mask, split=sample.split, tags=sample.tags,
                         source=sample.source, extra=sample.extra, image_shape=sample.image.shape[:2])

    def add_encoded(self, sample_id: str, image_bytes: bytes, image_ext: str, mask: np.ndarray | None,
                    split: str, tags: Iterable[str] = (), source: str = "", extra: dict[str, str] | None = None,
                    image_shape: tuple[int, int] | None = None, image_origin: str | None = None,
                    mask_origin: str | None = None) -> None:
        """Add an already-encoded image (kept byte for byte) with an optional label map.

        ``image_origin`` / ``mask_origin``: where the image bytes and the mask came from (the source file, its
        data set and id), named by the errors instead of the temporary copy; default ``sample <id>``.
        """
        assert self._tmp is not None, "use DatasetWriter as a context manager"
        self._claim(sample_id)
        if split not in SPLITS:
            raise DatasetFormatError(f"sample {sample_id!r}: split {split!r} not in {list(SPLITS)}")
        image_rel = f"images/{sample_id}.{image_ext.lower().lstrip('.')}"
        mask_rel, mask_bytes = "", b""
        if mask is not None:
            if image_shape is None:
                image_shape = decode_image(image_bytes, image_origin or f"sample {sample_id!r}").shape[:2]
            check_mask(mask, mask_origin or f"sample {sample_id!r}", image_shape, allow_empty=True)
            mask_rel, mask_bytes = f"masks/{sample_id}.png", encode_png(mask)
            (self._tmp / mask_rel).write_bytes(mask_bytes)
        (self._tmp / image_rel).write_bytes(image_bytes)
        row = {
            "id": sample_id, "split": split, "tags": ";".join(tags), "image": image_rel, "mask": mask_rel,
            "source": source, "sha256": sha256_bytes(image_bytes),
            MASK_SHA256: sha256_bytes(mask_bytes) if mask_rel else "",
        }
        extra = extra or {}
        unknown = set(extra) - set(self.extra_fields)
        if unknown:
            raise ValueError(f"sample {sample_id!r}: extra fields {sorted(unknown)} not declared in "
                             f"extra_fields={list(self.extra_fields)}")
        row.update({k: str(extra.get(k, "")) for k in self.extra_fields})
        self._rows.append(row)

    def copy(self, source: Dataset, record: Record, mask: np.ndarray | None, extra: dict[str, str] | None = None,
             image_shape: tuple[int, int] | None = None) -> None:
        """Add ``record`` of the data set ``source``: its image byte for byte, its split, tags and source, with
        ``mask`` (its own mask, or one derived from it) as the label map. A missing or corrupt image, or a mask
        that does not fit it, raises naming the source file, the data set and the id."""
        image_path = source.root / record.image
        image_origin = source.describe(record, "image")
        if not image_path.is_file():
            raise DatasetFormatError(f"{image_origin}: image file is missing")
        self.add_encoded(record.id, image_path.read_bytes(), image_path.suffix.lstrip("."), mask,
                         split=record.split, tags=record.tags, source=record.source, extra=extra,
                         image_shape=image_shape, image_origin=image_origin,
                         mask_origin=source.describe(record, "mask" if record.has_mask else "image"))

    def add_file(self, rel_path: str, data: bytes) -> None:
        """Add a side file (e.g. extra human segmentations) under the data set root."""
        assert self._tmp is not None, "use DatasetWriter as a context manager"
        target = (self._tmp / rel_path).resolve()
        if self._tmp.resolve() not in target.parents or rel_path.startswith(MANIFEST):
            raise ValueError(f"side file {rel_path!r} must be a relative path inside the data set")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def _write_manifest(self) -> None:
        assert self._tmp is not None
        rows = sorted(self._rows, key=lambda r: (SPLITS.index(r["split"]), r["id"]))
        with open(self._tmp / MANIFEST, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(WRITTEN_FIELDS) + list(self.extra_fields))
            writer.writeheader()
            writer.writerows(rows)


class Dataset:
    """Read access to a data set folder; the manifest is parsed and checked on open."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise DatasetFormatError(f"{manifest}: manifest is missing (not a lofiseg data set, or incomplete)")
        with open(manifest, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [f for f in BASE_FIELDS if f not in (reader.fieldnames or [])]
            if missing:
                raise DatasetFormatError(f"{manifest}: missing columns {missing}")
            self.extra_fields = tuple(f for f in reader.fieldnames if f not in WRITTEN_FIELDS)
            rows = list(reader)
        counts = Counter(r["id"] for r in rows)
        dupes = sorted(i for i, n in counts.items() if n > 1)
        if dupes:
            raise DatasetFormatError(f"{manifest}: duplicate ids {dupes[:10]}")
        self.records: list[Record] = []
        for line, r in enumerate(rows, start=2):
            if r["split"] not in SPLITS:
                raise DatasetFormatError(f"{manifest}:{line}: split {r['split']!r} not in {list(SPLITS)}")
            self.records.append(Record(
                id=r["id"], split=r["split"], tags=tuple(t for t in r["tags"].split(";") if t),
                image=r["image"], mask=r["mask"], source=r["source"], sha256=r["sha256"],
                extra={k: r[k] for k in self.extra_fields}, mask_sha256=r.get(MASK_SHA256) or "",
            ))
        self._by_id = {r.id: r for r in self.records}

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, sample_id: str) -> Record:
        try:
            return self._by_id[sample_id]
        except KeyError:
            raise KeyError(f"{self.root}: no sample {sample_id!r}") from None

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {name!r}")
        return [r for r in self.records if r.split == name]

    def describe(self, record: Record, part: str = "image") -> str:
        """``<file> (data set <root>, sample <id>)``: how errors name a sample's ``part`` ("image" or "mask")."""
        return f"{self.root / getattr(record, part)} (data set {self.root}, sample {record.id!r})"

    def image(self, record: Record | str) -> np.ndarray:
        record = self[record] if isinstance(record, str) else record
        return read_image(self.root / record.image, self.describe(record, "image"))

    def mask(self, record: Record | str) -> np.ndarray:
        record = self[record] if isinstance(record, str) else record
        if not record.has_mask:
            raise DatasetFormatError(f"{self.root / MANIFEST}: sample {record.id!r} has no mask")
        return read_mask(self.root / record.mask, self.describe(record, "mask"))

    def validate(self, max_label: int | None = None, require_masks: bool = False, allow_empty: bool = False,
                 check_sha256: bool = True) -> None:
        """Decode every file and check it against the manifest; the first problem raises naming the file."""
        for record in self.records:
            image_path = self.root / record.image
            if check_sha256 and record.sha256:
                if not image_path.is_file():
                    raise DatasetFormatError(f"{image_path}: image file is missing")
                check_sha256_of(image_path, record.sha256)
            image = read_image(image_path)
            if not record.has_mask:
                if require_masks:
                    raise DatasetFormatError(f"{self.root / MANIFEST}: sample {record.id!r} has no mask")
                continue
            mask_path = self.root / record.mask
            mask = read_mask(mask_path)
            check_mask(mask, str(mask_path), image.shape[:2], max_label, allow_empty)
            if check_sha256 and record.mask_sha256:
                check_sha256_of(mask_path, record.mask_sha256)


def check_sha256_of(path: Path, expected: str) -> None:
    """The file at ``path`` has the sha256 its manifest records, else DatasetFormatError naming it."""
    digest = sha256_file(path)
    if digest != expected:
        raise DatasetFormatError(f"{path}: sha256 {digest[:12]}... does not match the manifest")


def dataset_digest(root: str | os.PathLike) -> str:
    """The sha256 of a data set's content: its manifest (which holds every image's and mask's sha256) and, by
    relative path, the sha256 of every other file under ``root`` (side files such as alternative annotations
    or classes.json, and the masks of a manifest without ``mask_sha256``). Changing only a mask changes it."""
    data = Dataset(root)
    hashed = {MANIFEST} | {r.image for r in data if r.sha256} | {r.mask for r in data if r.mask_sha256}
    digest = hashlib.sha256((data.root / MANIFEST).read_bytes())
    for path in sorted(p for p in data.root.rglob("*") if p.is_file()):
        rel = path.relative_to(data.root).as_posix()
        if rel not in hashed and not any(part.startswith(".") for part in rel.split("/")):
            digest.update(f"\n{rel} {sha256_file(path)}".encode())
    return digest.hexdigest()
