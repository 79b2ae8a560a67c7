"""Turn an unpacked public data set into the lofiseg format, per layout kind, and the ``download`` entry point.

Layouts (``LayoutSpec.layout``, a ``download.datasets`` entry), all paths relative to the unpacked tree:

``lofiseg``  a data set already in the format (``manifest.csv`` at the root or in one sub-folder): copied,
             with its tags, extra columns and side files.
``sod``      saliency sets: ``images`` glob + ``masks`` pattern with ``{stem}`` (wildcards allowed, exactly one
             match: ``gt/{stem}.*``); 0/255 masks of any image mode, threshold 128 (e.g. ECSSD
             ``images/*.jpg`` + ``ground_truth_mask/{stem}.png``).
``semantic`` semantic sets with their own class table (``classes``): ``images`` glob + ``masks`` pattern as
             ``sod``; masks hold class indices 0..K-1 (mode L or P), ``void_value`` (MSRC: 0) becomes 255
             (ignore). The names go to ``classes.json`` (also for ``voc``), where evaluation finds them.
``voc``      Pascal VOC: ``JPEGImages/<id>.jpg`` + ``SegmentationClass/<id>.png`` (palette indices 0..20,
             255 void) listed in ``ImageSets/Segmentation/{train,val}.txt`` (else every mask present).
``pet``      Oxford-IIIT Pet: ``images/<id>.jpg`` + ``annotations/trimaps/<id>.png`` (1 pet, 2 background,
             3 border -> ignore), splits from ``annotations/{trainval,test}.txt`` (else all train).
``bsds``     BSDS500: ``images/{train,val,test}/<id>.jpg`` + ``groundTruth/<split>/<id>.mat``; the first
             human segmentation is the mask, the others side files ``masks/alt/<id>_<k>.png`` (k = 1, 2, ...)
             listed, ``;``-separated, in the manifest column ``alt_masks``.

The voc, pet and bsds layouts find their root folder themselves (up to 4 levels down) and take no
``images``/``masks``. Splits: ``split`` puts every sample there; else ``split_files`` (one id per line,
first token, ``#`` comments) keep only the listed ids; else the layout's own split, or ``train``. Then
``val_fraction`` of train moves to val: the train ids ordered by the sha256 of the id, the first
``floor(val_fraction * n + 0.5)`` of them, so the choice is deterministic whatever the file order.
Image-level tags of any layout: ``tags_file``, a CSV in the tree with an ``id`` column and the column
``tags_column`` (``;``-separated tags, blank = none; e.g. MSRC's ``groups.csv`` column ``object``).

:func:`build_dataset` is what the ``download`` stage calls: fetch (:mod:`lofiseg.data.sources`), unpack
(:mod:`lofiseg.data.archives`), walk the layout, write with :class:`DatasetWriter`, atomically.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from lofiseg.atomic import atomic_dir
from lofiseg.data.archives import archive_kind, extract_into
from lofiseg.data.format import (
    MANIFEST,
    SPLITS,
    Dataset,
    DatasetFormatError,
    DatasetWriter,
    encode_png,
    read_mask,
)
from lofiseg.data.holdout import hold_out
from lofiseg.data.labels import CLASSES_FILE, class_names_json
from lofiseg.data.masks import (
    VOC_CLASSES,
    binary_from_0_255,
    from_bsds,
    from_class_indices,
    from_trimap,
    from_voc_palette,
)
from lofiseg.data.sources import fetch, file_name, local_path

log = logging.getLogger(__name__)

ALT_MASKS_FIELD = "alt_masks"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SOD_THRESHOLD = 128
_ROOT_SEARCH_DEPTH = 4
_WILDCARD = re.compile(r"[*?[]")


class LayoutError(DatasetFormatError):
    """An unpacked tree does not have the declared layout; the message names the files involved."""


@dataclass(frozen=True)
class LayoutItem:
    """One sample found in an unpacked tree, with its normalised mask(s)."""

    id: str
    image: Path
    mask: np.ndarray | None  # (H, W) uint8 in the format's labels, None for image-level samples
    split: str
    image_size: tuple[int, int]  # (H, W), read from the image header
    mask_source: Path | None = None
    alt_masks: tuple[np.ndarray, ...] = ()  # further human segmentations (BSDS)
    tags: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


class SourceFile(Protocol):
    """One file of a data set: a local path, http(s):// URL or s3://bucket/key, and its pinned sha256."""

    uri: str
    sha256: str | None


class LayoutSpec(Protocol):
    """What the layouts read of one ``download.datasets`` entry (validated by ``lofiseg.config.DatasetSpec``)."""

    source: str  # synthetic | local | http | s3
    files: Sequence[SourceFile]
    layout: str
    images: str | None  # glob of the images (sod, lofiseg)
    masks: str | None  # pattern of an image's mask, "{stem}" = the image's file stem
    split: str | None  # every sample goes to this split ...
    split_files: Mapping[str, str]  # ... or id lists per split
    val_fraction: float  # of train, carved deterministically
    classes: Sequence[str] | None  # semantic sets: the name of each mask id
    void_value: int | None  # layout semantic: this mask value becomes 255 (ignore)
    tags_file: str | None  # CSV of image-level tags: an ``id`` column and ...
    tags_column: str  # ... this one


MaskLoader = Callable[[Path], list[np.ndarray]]  # mask file -> [mask, alternative masks...]


@dataclass(frozen=True)
class _Entry:
    id: str
    image: Path
    mask_path: Path | None
    load: MaskLoader | None
    own_split: str | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class _Plan:
    entries: list[tuple[_Entry, str]]  # with their final split
    extra_fields: tuple[str, ...] = ()
    side_files: list[tuple[str, Path]] = field(default_factory=list)  # (path in the data set, source file)


# --- mask loaders -----------------------------------------------------------------------------------------

def _open_mask(path: Path) -> Image.Image:
    if not path.is_file():
        raise LayoutError(f"{path}: mask file is missing")
    try:
        im = Image.open(path)
        im.load()
        return im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LayoutError(f"{path}: unreadable or corrupt mask ({exc})") from exc


def load_sod_mask(path: Path) -> list[np.ndarray]:
    """A saliency mask of any PIL mode, as grey levels, thresholded at 128 (:func:`binary_from_0_255`).

    A mask whose only values are 0 and 1 is taken as already 0/1-encoded (some re-distributions store
    them so; thresholding would wipe the object out).
    """
    with _open_mask(path) as im:
        grey = np.asarray(im.convert("L"))
    if grey.max(initial=0) == 1:
        return [grey.astype(np.uint8)]
    return [binary_from_0_255(grey, SOD_THRESHOLD)]


def load_voc_mask(path: Path) -> list[np.ndarray]:
    """A VOC palette PNG (indices, mode P or L) or the same mask decoded to RGB colours."""
    with _open_mask(path) as im:
        arr = np.asarray(im) if im.mode in ("P", "L") else np.asarray(im.convert("RGB"))
    return [from_voc_palette(arr)]


def load_class_indices(path: Path, num_classes: int, void_value: int | None) -> list[np.ndarray]:
    """A class-index mask (mode L or P: the indices, not the palette colours) -> labels, void -> 255."""
    with _open_mask(path) as im:
        if im.mode not in ("P", "L"):
            raise LayoutError(f"{path}: a class-index mask must be a single-channel PNG (mode L or P), "
                              f"got {im.mode}")
        arr = np.asarray(im)
    return [from_class_indices(arr, num_classes, void_value)]


def load_trimap(path: Path) -> list[np.ndarray]:
    with _open_mask(path) as im:
        if im.mode not in ("P", "L"):
            raise LayoutError(f"{path}: a trimap must be a single-channel PNG (mode L or P), got {im.mode}")
        arr = np.asarray(im)
    return [from_trimap(arr)]


def load_lofiseg_mask(path: Path) -> list[np.ndarray]:
    return [read_mask(path)]


# --- finding files ----------------------------------------------------------------------------------------

def _relative_pattern(value: str, what: str) -> str:
    pure = PurePosixPath(value.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise LayoutError(f"{what} {value!r} must be relative to the unpacked tree, without '..'")
    return value


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and "__MACOSX" not in path.parts


def _find_root(tree: Path, markers: Sequence[str], layout: str,
               accept: Callable[[Path], bool] | None = None) -> Path:
    """The shallowest folder under ``tree`` holding every marker sub-folder (breadth first, 4 levels)."""
    level = [tree]
    for _ in range(_ROOT_SEARCH_DEPTH + 1):
        found = [d for d in level if all((d / m).is_dir() for m in markers) and (accept is None or accept(d))]
        if len(found) > 1:
            raise LayoutError(f"{tree}: layout {layout!r} is ambiguous: {[str(f) for f in found]} all hold "
                              f"{list(markers)}")
        if found:
            return found[0]
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and _visible(c)]
    raise LayoutError(f"{tree}: no folder with {list(markers)} found (layout {layout!r}); "
                      "check the archive or the layout")


def read_id_list(path: Path) -> list[str]:
    """Ids from a split list: first token of each non-empty line, ``#`` comments skipped, image suffix cut."""
    if not path.is_file():
        raise LayoutError(f"{path}: split list is missing")
    ids = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        if token.lower().endswith(IMAGE_SUFFIXES):
            token = token.rsplit(".", 1)[0]
        ids.append(token)
    return ids


def _listed_splits(tree: Path, lists: dict[str, Path]) -> dict[str, str]:
    """id -> split from per-split id lists; an id in two lists is an error naming both."""
    where: dict[str, tuple[str, Path]] = {}
    for split, path in lists.items():
        for sample_id in read_id_list(path):
            if sample_id in where and where[sample_id][0] != split:
                raise LayoutError(f"id {sample_id!r} is listed in both {where[sample_id][1]} and {path}")
            where[sample_id] = (split, path)
    return {sample_id: split for sample_id, (split, _) in where.items()}


def _spec_lists(tree: Path, spec: LayoutSpec) -> dict[str, Path]:
    return {split: tree / _relative_pattern(rel, f"split_files.{split}") for split, rel in spec.split_files.items()}


# --- one function per layout ------------------------------------------------------------------------------

def _sod_entries(tree: Path, spec: LayoutSpec, layout: str = "sod", load: MaskLoader = load_sod_mask) -> _Plan:
    if not spec.images or not spec.masks:
        raise LayoutError(f"layout {layout!r} needs 'images' (a glob, e.g. 'images/*.jpg') and 'masks' (a pattern "
                          f"with {{stem}}, e.g. 'masks/{{stem}}.png'); got images={spec.images!r}, "
                          f"masks={spec.masks!r}")
    if "{stem}" not in spec.masks:
        raise LayoutError(f"masks pattern {spec.masks!r} must contain '{{stem}}'")
    pattern = _relative_pattern(spec.images, "images glob")
    masks = _relative_pattern(spec.masks, "masks pattern")
    images = sorted(p for p in tree.glob(pattern) if p.is_file() and _visible(p))
    entries = [_Entry(p.stem, p, _mask_for(tree, masks, p), load) for p in images]
    if not entries:
        raise LayoutError(f"{tree}: no file matches the images glob {spec.images!r}")
    return _Plan([(e, "") for e in entries])


def _semantic_entries(tree: Path, spec: LayoutSpec) -> _Plan:
    if not spec.classes:
        raise LayoutError("layout 'semantic' needs 'classes': the name of each mask id 0, 1, ...")
    return _sod_entries(tree, spec, "semantic", functools.partial(load_class_indices, num_classes=len(spec.classes),
                                                                   void_value=spec.void_value))


def _mask_for(tree: Path, masks: str, image: Path) -> Path:
    """The mask path of an image; a pattern with wildcards (``gt/{stem}.*``) must match exactly one file."""
    if not _WILDCARD.search(masks.replace("{stem}", "")):
        return tree / masks.replace("{stem}", image.stem)
    pattern = masks.replace("{stem}", glob.escape(image.stem))
    found = sorted(p for p in tree.glob(pattern) if p.is_file() and _visible(p))
    if len(found) > 1:
        raise LayoutError(f"image {image} has {len(found)} candidate masks for {masks!r}: "
                          f"{[str(p) for p in found[:5]]}")
    return found[0] if found else tree / pattern


def _own_splits(tree: Path, spec: LayoutSpec, root: Path, default_lists: dict[str, Path],
                fallback: Iterable[Path]) -> dict[str, str | None]:
    """Ids and their split: the spec's id lists, else the layout's own lists that exist, else every file of
    ``fallback`` with no split of its own."""
    default_lists = {s: p for s, p in default_lists.items() if p.is_file()}
    if spec.split_files:
        return {i: None for i in _listed_splits(tree, _spec_lists(tree, spec))}
    if default_lists:
        return _listed_splits(root, default_lists)
    return {p.stem: None for p in fallback if _visible(p)}


def _voc_entries(tree: Path, spec: LayoutSpec) -> _Plan:
    root = _find_root(tree, ("JPEGImages", "SegmentationClass"), "voc")
    default_lists = {s: root / "ImageSets" / "Segmentation" / f"{s}.txt" for s in ("train", "val")}
    own = _own_splits(tree, spec, root, default_lists, (root / "SegmentationClass").glob("*.png"))
    entries = [_Entry(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png",
                      load_voc_mask, own[i]) for i in sorted(own)]
    return _Plan([(e, "") for e in entries])


def _pet_entries(tree: Path, spec: LayoutSpec) -> _Plan:
    root = _find_root(tree, ("images", "annotations/trimaps"), "pet")
    default_lists = {"train": root / "annotations" / "trainval.txt", "test": root / "annotations" / "test.txt"}
    own = _own_splits(tree, spec, root, default_lists, (root / "images").glob("*.jpg"))
    entries = [_Entry(i, root / "images" / f"{i}.jpg", root / "annotations" / "trimaps" / f"{i}.png",
                      load_trimap, own[i]) for i in sorted(own)]
    return _Plan([(e, "") for e in entries])


def _bsds_entries(tree: Path, spec: LayoutSpec) -> _Plan:
    # BSR_bsds500.tgz also holds bench/data/{images,groundTruth} (demo files, no split folders): skip it.
    root = _find_root(tree, ("images", "groundTruth"), "bsds",
                      accept=lambda d: any((d / "images" / s).is_dir() for s in SPLITS))
    entries = []
    for split in SPLITS:
        for image in sorted((root / "images" / split).glob("*.jpg")):
            if _visible(image):
                mat = root / "groundTruth" / split / f"{image.stem}.mat"
                entries.append(_Entry(image.stem, image, mat, from_bsds, split))
    return _Plan([(e, "") for e in entries], extra_fields=(ALT_MASKS_FIELD,))


def _lofiseg_entries(tree: Path, spec: LayoutSpec) -> _Plan:
    root = tree
    if not (tree / MANIFEST).is_file():
        candidates = sorted(p.parent for p in tree.glob(f"*/{MANIFEST}"))
        if len(candidates) != 1:
            raise LayoutError(f"{tree}: layout 'lofiseg' needs one {MANIFEST} at the root or in one sub-folder, "
                              f"found {len(candidates)}")
        root = candidates[0]
    dataset = Dataset(root)
    dataset.validate()
    entries = [_Entry(r.id, root / r.image, root / r.mask if r.has_mask else None,
                      load_lofiseg_mask if r.has_mask else None, r.split, r.tags, dict(r.extra))
               for r in dataset]
    used = {MANIFEST} | {r.image for r in dataset} | {r.mask for r in dataset if r.has_mask}
    side = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    side = [(rel, p) for rel, p in side if rel not in used]
    return _Plan([(e, "") for e in entries], extra_fields=dataset.extra_fields, side_files=side)


_LAYOUTS: dict[str, Callable[[Path, LayoutSpec], _Plan]] = {
    "sod": _sod_entries, "semantic": _semantic_entries, "voc": _voc_entries, "pet": _pet_entries, "bsds": _bsds_entries,
    "lofiseg": _lofiseg_entries,
}


# --- splits -----------------------------------------------------------------------------------------------

def _id_hash(sample_id: str) -> int:
    return int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:8], "big")


def carve_val(train_ids: Sequence[str], val_fraction: float) -> set[str]:
    """The train ids that move to val: the first ``floor(val_fraction * n + 0.5)`` in sha256-of-id order."""
    return set(hold_out(train_ids, val_fraction, key=lambda i: (_id_hash(i), i)))


def _assign_splits(tree: Path, spec: LayoutSpec, plan: _Plan) -> None:
    entries = [e for e, _ in plan.entries]
    if spec.split is not None:
        chosen = {e.id: spec.split for e in entries}
    elif spec.split_files:
        listed = _listed_splits(tree, _spec_lists(tree, spec))
        found = {e.id for e in entries}
        missing = sorted(set(listed) - found)
        if missing:
            raise LayoutError(f"{len(missing)} id(s) listed in split_files have no image in {tree}: {missing[:5]}")
        dropped = len(found) - len(listed)
        if dropped:
            log.info("%d sample(s) are in no split list and are left out", dropped)
        chosen = {e.id: listed[e.id] for e in entries if e.id in listed}
    else:
        chosen = {e.id: e.own_split or "train" for e in entries}
    if spec.val_fraction > 0:
        for sample_id in carve_val(sorted(i for i, s in chosen.items() if s == "train"), spec.val_fraction):
            chosen[sample_id] = "val"
    plan.entries = [(e, chosen[e.id]) for e in entries if e.id in chosen]


def read_tags_file(path: Path, column: str) -> dict[str, tuple[str, ...]]:
    """id -> tags from a CSV with an ``id`` column and ``column`` (``;``-separated tags, blank = none)."""
    if not path.is_file():
        raise LayoutError(f"{path}: tags_file is missing")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "id" not in fields or column not in fields:
            raise LayoutError(f"{path}: tags_file needs the columns 'id' and {column!r} (tags_column); "
                              f"its columns are {fields}")
        return {row["id"]: tuple(t.strip() for t in (row[column] or "").split(";") if t.strip()) for row in reader}


def _attach_tags(tree: Path, spec: LayoutSpec, plan: _Plan) -> None:
    if spec.tags_file is None:
        return
    tags = read_tags_file(tree / _relative_pattern(spec.tags_file, "tags_file"), spec.tags_column)
    plan.entries = [(dataclasses.replace(e, tags=tags.get(e.id, e.tags)), split) for e, split in plan.entries]


def _check_unique(plan: _Plan) -> None:
    seen: dict[str, Path] = {}
    for entry, _ in plan.entries:
        if entry.id in seen:
            raise LayoutError(f"two images have the id {entry.id!r}: {seen[entry.id]} and {entry.image}")
        seen[entry.id] = entry.image


def _plan(tree: Path, spec: LayoutSpec) -> _Plan:
    if spec.layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(_LAYOUTS)}, got {spec.layout!r}")
    tree = Path(tree)
    if not tree.is_dir():
        raise LayoutError(f"{tree}: unpacked tree is not a folder")
    plan = _LAYOUTS[spec.layout](tree, spec)
    _check_unique(plan)
    _attach_tags(tree, spec, plan)
    _assign_splits(tree, spec, plan)
    if not plan.entries:
        raise LayoutError(f"{tree}: layout {spec.layout!r} found no sample")
    return plan


# --- loading one sample -----------------------------------------------------------------------------------

def _image_size(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise LayoutError(f"{path}: image file is missing")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LayoutError(f"{path}: unreadable or corrupt image ({exc})") from exc


def _load_item(entry: _Entry, split: str) -> LayoutItem:
    size = _image_size(entry.image)
    masks: list[np.ndarray] = []
    if entry.mask_path is not None and entry.load is not None:
        if not entry.mask_path.is_file():
            raise LayoutError(f"image {entry.image} has no mask: expected {entry.mask_path}")
        try:
            masks = entry.load(entry.mask_path)
        except LayoutError:
            raise
        except (DatasetFormatError, ValueError, TypeError) as exc:
            raise LayoutError(f"mask {entry.mask_path} of image {entry.image}: {exc}") from exc
        for mask in masks:
            if mask.shape != size:
                raise LayoutError(f"mask {entry.mask_path} is {mask.shape[1]}x{mask.shape[0]} but image "
                                  f"{entry.image} is {size[1]}x{size[0]}")
    return LayoutItem(id=entry.id, image=entry.image, mask=masks[0] if masks else None, split=split,
                      image_size=size, mask_source=entry.mask_path, alt_masks=tuple(masks[1:]),
                      tags=entry.tags, extra=dict(entry.extra))


def iter_layout(tree: str | os.PathLike, spec: LayoutSpec) -> Iterator[LayoutItem]:
    """The samples of an unpacked tree per ``spec.layout``, with final splits, sorted by id.

    File discovery and split assignment happen before the first item; masks are read one item at a time.
    """
    plan = _plan(Path(tree), spec)
    for entry, split in plan.entries:
        yield _load_item(entry, split)


# --- building a data set ----------------------------------------------------------------------------------

class FetchOptions(Protocol):
    """What :func:`build_dataset` needs from ``DownloadParams``."""

    retries: int
    backoff_seconds: float
    timeout_seconds: float
    s3_endpoint_url: str | None


def encoded_image(path: Path) -> tuple[bytes, str, tuple[int, int]]:
    """(bytes, extension, (H, W)): JPEG and PNG files kept byte for byte, other formats re-encoded as PNG."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = (im.height, im.width)
            if im.format == "JPEG":
                return data, "jpg", size
            if im.format == "PNG":
                return data, "png", size
            return encode_png(np.asarray(im.convert("RGB"))), "png", size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LayoutError(f"{path}: unreadable or corrupt image ({exc})") from exc


def _assemble_tree(paths: Sequence[Path], cache: Path) -> Path:
    """One folder holding every fetched file's contents at its root (archives unpacked, folders copied).

    Cached in ``cache/tree-<key>``, the key naming the fetched files, their sizes and times; stale trees
    are removed. Two files placing the same path is an error naming both.
    """
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0]
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    tree = cache / f"tree-{key}"
    if tree.is_dir() and not any(p.is_dir() for p in paths):  # a folder's contents may have changed: re-merge
        return tree
    with atomic_dir(tree) as tmp:
        for path in paths:
            if path.is_dir():
                _merge_folder(path, tmp)
            elif archive_kind(path) is not None:
                extract_into(path, tmp)
            else:
                _copy_new(path, tmp / path.name)
    for stale in cache.glob("tree-*"):
        if stale != tree and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return tree


def _copy_new(source: Path, target: Path) -> None:
    if target.exists():
        raise LayoutError(f"{source} would overwrite {target}, already unpacked from another file of the spec")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _merge_folder(folder: Path, into: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _copy_new(path, into / path.relative_to(folder))


def _check_files(name: str, spec: LayoutSpec) -> None:
    if spec.source == "synthetic":
        raise ValueError(f"data set {name!r}: source 'synthetic' is generated by the download stage, "
                         "not fetched; build_dataset takes local, http or s3 sources")
    names: dict[str, str] = {}
    for f in spec.files:
        # the params schema already checked that every uri matches the source
        if spec.source == "local" and not local_path(f.uri).is_file():
            continue  # folders are used in place, never copied under a name
        base = file_name(f.uri)
        if base in names:
            raise ValueError(f"data set {name!r}: {names[base]!r} and {f.uri!r} would both be saved as {base!r}")
        names[base] = f.uri


def build_dataset(name: str, spec: LayoutSpec, out_dir: str | os.PathLike, cache_dir: str | os.PathLike,
                  download: FetchOptions, *, progress: bool = True) -> Path:
    """Fetch every file of ``spec`` into ``cache_dir/<name>``, unpack, walk the layout, write ``out_dir``.

    ``out_dir`` is written by :class:`DatasetWriter` in a temporary folder renamed into place at the end,
    so any failure (transfer, checksum, archive, layout, mask) leaves no partial data set there; the fetched
    files and the unpacked tree stay in the cache for the next run. Every sample's ``source`` is ``name``.
    """
    _check_files(name, spec)
    cache = Path(cache_dir) / name
    fetched = [fetch(f.uri, cache / "files", sha256=f.sha256, retries=download.retries,
                     backoff_seconds=download.backoff_seconds, timeout_seconds=download.timeout_seconds,
                     s3_endpoint_url=download.s3_endpoint_url, progress=progress) for f in spec.files]
    tree = _assemble_tree(fetched, cache)
    plan = _plan(tree, spec)
    out_dir = Path(out_dir)
    with DatasetWriter(out_dir, extra_fields=plan.extra_fields) as writer:
        for entry, split in plan.entries:
            item = _load_item(entry, split)
            data, ext, size = encoded_image(item.image)
            extra = dict(item.extra)
            if item.alt_masks:
                rels = [f"masks/alt/{item.id}_{k}.png" for k in range(1, len(item.alt_masks) + 1)]
                for rel, alt in zip(rels, item.alt_masks, strict=True):
                    writer.add_file(rel, encode_png(alt))
                extra[ALT_MASKS_FIELD] = ";".join(rels)
            writer.add_encoded(item.id, data, ext, item.mask, split=item.split, tags=item.tags, source=name,
                               extra=extra, image_shape=size)
        for rel, path in plan.side_files:
            writer.add_file(rel, path.read_bytes())
        classes = spec.classes or (VOC_CLASSES if spec.layout == "voc" else None)
        if classes and CLASSES_FILE not in {rel for rel, _ in plan.side_files}:
            writer.add_file(CLASSES_FILE, class_names_json(classes))
    log.info("%s: wrote %d samples to %s", name, len(plan.entries), out_dir)
    return out_dir
