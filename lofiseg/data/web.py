"""Per-class web image sets: collect image-level-tagged training images from several kinds of source.

Each class of the ``web`` params (:class:`WebOptions`) names one source: the synthetic per-class web set (the default data), a
local folder, an S3 prefix, a manifest of image URLs (e.g. an exported web image search), or the images of a
downloaded semantic data set carrying a tag (e.g. MSRC's photos taken for one object), with their masks
reduced to that class: ground truth to measure with, which the regularized training never opens. The images that
pass every check form ONE lofiseg data set, each tagged with its class name: the training data of the
regularized-loss weak supervision from image-level tags (web images per class, Veksler's Sec. 4.3).

Checks, in this order: the transfer (:mod:`lofiseg.data.transfer`: HTTP status, retries on transient failures,
a per-request timeout), the Content-Type (``image/*``, URLs only), the decode (``PIL.Image.load`` and RGB
conversion), the size (both sides >= ``min_side``) and de-duplication by the sha256 of the bytes, within and
across classes: the first occurrence in (class order in params, source order) wins. Every rejected item is
reported with its reason.

Downloads (URLs and S3) are cached as ``cache/<class>/<sha256>.<ext>`` with ``cache/<class>/index.json``
mapping each source to its outcome, so a re-run fetches only what is missing: a source already downloaded or
rejected for good (HTTP 4xx, not an image, corrupt) makes no request; timeouts, connection errors and 5xx
answers are tried again. The size check and the de-duplication run on every run from the index, so changing
``min_side`` or the class order needs no download.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from PIL import Image
from tqdm import tqdm

from lofiseg.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from lofiseg.data.format import (
    MANIFEST,
    Dataset,
    DatasetFormatError,
    DatasetWriter,
    decode_image,
    encode_png,
    read_mask,
    sha256_bytes,
)
from lofiseg.data.holdout import hold_out
from lofiseg.data.labels import CLASSES_FILE, read_class_names
from lofiseg.data.masks import one_class_mask
from lofiseg.data.sources import SourceError
from lofiseg.data.transfer import (
    USER_AGENT,
    PermanentError,
    RetriesExhausted,
    TransientError,
    check_complete,
    content_length,
    http_response,
    s3_client,
    s3_errors,
    with_retries,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
INDEX_NAME = "index.json"
MAX_IMAGE_BYTES = 64 << 20  # a larger answer is no web image: rejected without reading it all
CHUNK_BYTES = 1 << 16
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}
_KEPT_EXT = frozenset({"jpg", "png"})  # written byte for byte; other formats are re-encoded as PNG


# --- settings -----------------------------------------------------------------------------------------------

class WebSource(Protocol):
    """Where the images of one class come from (validated by ``lofiseg.config.WebClassSource``).

    ``kind``: synthetic, local, s3 or urls. ``path``: the local folder, ``s3://bucket/prefix``, or the URL
    manifest (a text file with one URL per line, or a CSV with a ``url`` column; lines starting with ``#``
    are comments). None for ``synthetic``.
    """

    kind: str
    path: str | None
    name: str | None  # kind dataset: the data set (a folder under ``datasets``) ...
    tag: str | None  # ... its images tagged so ...
    label: str | None  # ... whose pixels of this class (of its classes.json; None: the web class) are the object


class WebOptions(Protocol):
    """What :func:`collect_web_images` reads: params ``web``, validated by ``lofiseg.config.WebParams``."""

    classes: Mapping[str, WebSource]  # in params order: the first occurrence of a duplicate wins
    workers: int  # concurrent downloads
    retries: int  # more attempts after a transient failure
    backoff_seconds: float  # before retry k (1, 2, ...): backoff * 2**(k-1)
    timeout_seconds: float  # connect, and each read
    min_side: int  # both image sides must be at least this many pixels
    max_images_per_class: int | None  # first N accepted, in source order
    val_fraction: float  # of each class's train images, by sha256


# --- report -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rejection:
    """One item left out: its class, its source (URL, S3 URI or file path) and why."""

    cls: str
    source: str
    reason: str


@dataclass
class WebReport:
    """Per class the number of accepted images, and every rejected item with its reason."""

    accepted: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)

    def rejected_count(self, cls: str) -> int:
        return sum(r.cls == cls for r in self.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "classes": {c: {"accepted": n, "rejected": self.rejected_count(c)} for c, n in self.accepted.items()},
            "rejected": [{"class": r.cls, "source": r.source, "reason": r.reason} for r in self.rejected],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def write(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        return atomic_write_text(path, self.to_json())


# --- one item: fetch, decode ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Candidate:
    source: str  # URL, s3://bucket/key or file path: the report's and the index's key
    etag: str = ""  # S3: the listing's ETag, so a changed object is fetched again


@dataclass(frozen=True)
class _Outcome:
    status: Literal["ok", "rejected", "failed"]  # failed: transient, tried again next run
    reason: str = ""
    sha256: str = ""
    ext: str = ""
    width: int = 0
    height: int = 0
    etag: str = ""

    def to_index(self) -> dict[str, Any]:
        if self.status == "rejected":
            return {"status": "rejected", "reason": self.reason, **({"etag": self.etag} if self.etag else {})}
        return {"status": "ok", "sha256": self.sha256, "ext": self.ext, "width": self.width,
                "height": self.height, **({"etag": self.etag} if self.etag else {})}

    @classmethod
    def from_index(cls, entry: dict[str, Any]) -> _Outcome:
        return cls(**{k: entry[k] for k in ("status", "reason", "sha256", "ext", "width", "height", "etag")
                      if k in entry})


def http_get(session: Any, url: str, timeout_seconds: float) -> bytes:
    """One GET of an image URL: the body, or :class:`~lofiseg.data.transfer.PermanentError` /
    :class:`~lofiseg.data.transfer.TransientError` naming the failure."""
    with http_response(url, timeout_seconds, session=session) as resp:
        content_type = resp.headers.get("Content-Type", "")
        if not content_type.split(";", 1)[0].strip().lower().startswith("image/"):
            raise PermanentError(f"not an image: Content-Type {content_type!r}, expected image/*")
        expected = content_length(resp)
        if expected is not None and expected > MAX_IMAGE_BYTES:
            raise PermanentError(f"too large: {expected} bytes > {MAX_IMAGE_BYTES}")
        chunks, received = [], 0
        for block in resp.iter_content(CHUNK_BYTES):
            received += len(block)
            if received > MAX_IMAGE_BYTES:
                raise PermanentError(f"too large: more than {MAX_IMAGE_BYTES} bytes")
            chunks.append(block)
    check_complete(received, expected)
    return b"".join(chunks)


def decode_check(data: bytes) -> tuple[str, int, int]:
    """(extension, width, height) of image bytes that PIL decodes fully and converts to RGB, else
    :class:`~lofiseg.data.transfer.PermanentError` ``corrupt image: ...``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            width, height, fmt = im.width, im.height, im.format or ""
            im.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise PermanentError(f"too large to decode: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise PermanentError(f"corrupt image: cannot decode ({exc})") from exc
    return _FORMAT_EXT.get(fmt, fmt.lower() or "img"), width, height


# --- listing the sources of a class -----------------------------------------------------------------------

def read_url_manifest(path: str | os.PathLike) -> list[str]:
    """The URLs of a manifest, in file order: one URL per line, or a CSV whose header has a ``url`` column.

    Blank lines and lines starting with ``#`` are skipped in both forms.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"URL manifest {path} does not exist or is not a file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return []
    header = [cell.strip().lower() for cell in next(csv.reader([lines[0]]))]
    if "://" in lines[0] or (len(header) == 1 and header[0] != "url"):
        return lines
    if "url" not in header:
        raise ValueError(f"URL manifest {path}: a CSV manifest needs a 'url' column, got columns {header}")
    column = header.index("url")
    rows = list(csv.reader(lines[1:]))
    return [row[column].strip() for row in rows if len(row) > column and row[column].strip()]


def list_local_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file (jpg/jpeg/png/bmp/webp, any case) under ``folder``, recursive, sorted by relative path;
    hidden files and folders are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"local image folder {folder} does not exist or is not a folder")
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def list_s3_images(client: Any, uri: str) -> list[_Candidate]:
    """The image objects (by suffix, as :func:`list_local_images`) under ``s3://bucket/prefix``, sorted by key.

    botocore retries each page request; the final failure raises :class:`~lofiseg.data.sources.SourceError`
    naming the prefix and the endpoint.
    """
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    endpoint = client.meta.endpoint_url
    try:
        with s3_errors(f"listing {uri}", endpoint):
            paginator = client.get_paginator("list_objects_v2")
            objects = [obj for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                       for obj in page.get("Contents", [])]
    except (PermanentError, TransientError) as exc:
        raise SourceError(f"cannot list {uri} at S3 endpoint {endpoint}: {exc}") from exc
    keys = [(o["Key"], str(o.get("ETag", ""))) for o in objects
            if Path(o["Key"]).suffix.lower() in IMAGE_SUFFIXES and not o["Key"].endswith("/")]
    return [_Candidate(f"s3://{bucket}/{key}", etag) for key, etag in sorted(keys)]


# --- the per-class cache index ----------------------------------------------------------------------------

class _Index:
    """``cache/<class>/index.json``: source -> outcome of its last conclusive fetch (ok or rejected)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / INDEX_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            try:
                self.entries = dict(json.loads(self.path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("%s: unreadable cache index (%s); fetching everything again", self.path, exc)

    def record(self, source: str, outcome: _Outcome) -> None:
        if outcome.status != "failed":
            with self._lock:
                self.entries[source] = outcome.to_index()

    def reusable(self, candidate: _Candidate) -> _Outcome | None:
        """The cached outcome, if it still holds: same S3 ETag, and for an image the cached file unchanged."""
        entry = self.entries.get(candidate.source)
        if not isinstance(entry, dict) or entry.get("etag", "") != candidate.etag:
            return None
        try:
            outcome = _Outcome.from_index(entry)
        except (TypeError, KeyError, AttributeError):  # an entry edited by hand: fetch again
            return None
        if outcome.status not in ("ok", "rejected"):
            return None
        if outcome.status == "ok":
            cached = self.folder / f"{outcome.sha256}.{outcome.ext}"
            if not cached.is_file() or sha256_bytes(cached.read_bytes()) != outcome.sha256:
                return None
        return outcome

    def save(self) -> None:
        with self._lock:
            atomic_write_json(self.path, self.entries)


# --- the collector ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Item:
    """One image of the output data set."""

    id: str
    cls: str
    source: str
    path: Path
    sha256: str
    ext: str
    split: str = "train"
    tags: tuple[str, ...] = ()
    mask: Path | None = None  # synthetic and data set images only
    verbatim: bool = False  # synthetic and data set images: copied byte for byte whatever their format
    object_id: int | None = None  # data set images: the mask is reduced to this class (one_class_mask)

    def describe(self, path: Path | None) -> str:
        """How errors name this item's file ``path`` (image or mask): the file, class, source and id."""
        return f"{path} (web class {self.cls!r}, from {self.source}, sample {self.id!r})"


class _Sessions:
    """One ``requests.Session`` per worker thread, all closed at the end."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            # identity: Content-Length is then the byte count, so a transfer cut short is detected
            session.headers.update({"User-Agent": USER_AGENT, "Accept": "image/*",
                                    "Accept-Encoding": "identity"})
            self._local.session = session
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                session.close()
            self._all.clear()


class _Collector:
    def __init__(self, params: WebOptions, cache: Path, synthetic: Path | None, s3_endpoint_url: str | None,
                 progress: bool, pool: ThreadPoolExecutor, datasets: Path | None = None):
        self.params, self.cache, self.synthetic_root, self.datasets = params, cache, synthetic, datasets
        self.s3_endpoint_url, self.progress, self.pool = s3_endpoint_url, progress, pool
        self.sessions = _Sessions()
        self.report = WebReport()
        self.seen: dict[str, str] = {}  # sha256 of accepted bytes -> "<class>/<source>" of its first occurrence
        self._s3: Any = None
        self._synthetic: Dataset | None = None
        self._copied: set[str] = set()

    # -- sources

    @property
    def s3(self) -> Any:
        if self._s3 is None:  # boto3 clients are thread-safe; creating one is not: done here, once
            p = self.params
            self._s3 = s3_client(self.s3_endpoint_url, timeout_seconds=p.timeout_seconds, retries=p.retries,
                                 max_connections=p.workers)
        return self._s3

    def _candidates(self, name: str, source: WebSource) -> list[_Candidate]:
        assert source.path is not None
        if source.kind == "urls":
            return [_Candidate(url) for url in read_url_manifest(source.path)]
        if source.kind == "local":
            return [_Candidate(str(p)) for p in list_local_images(source.path)]
        return list_s3_images(self.s3, source.path)

    def _download(self, kind: str, candidate: _Candidate) -> bytes:
        p = self.params
        if kind == "urls":
            return with_retries(lambda: http_get(self.sessions.get(), candidate.source, p.timeout_seconds),
                                p.retries, p.backoff_seconds, what=candidate.source)
        if kind == "s3":  # botocore retries the request
            parts = urlsplit(candidate.source)
            with s3_errors(f"GET {candidate.source}", self.s3.meta.endpoint_url):
                body = self.s3.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"]
                try:
                    data = body.read(MAX_IMAGE_BYTES + 1)
                finally:
                    body.close()
            if len(data) > MAX_IMAGE_BYTES:
                raise PermanentError(f"too large: more than {MAX_IMAGE_BYTES} bytes")
            return data
        path = Path(candidate.source)
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise PermanentError(f"too large: {path.stat().st_size} bytes > {MAX_IMAGE_BYTES}")
        return path.read_bytes()

    def _acquire(self, kind: str, candidate: _Candidate, index: _Index | None) -> _Outcome:
        """Worker: fetch, decode-check, cache one item; record a conclusive outcome in the index."""
        try:
            data = self._download(kind, candidate)
            ext, width, height = decode_check(data)
            digest = sha256_bytes(data)
            if index is not None:
                atomic_write_bytes(index.folder / f"{digest}.{ext}", data)
            outcome = _Outcome("ok", sha256=digest, ext=ext, width=width, height=height, etag=candidate.etag)
        except PermanentError as exc:
            outcome = _Outcome("rejected", reason=str(exc), etag=candidate.etag)
        except RetriesExhausted as exc:
            outcome = _Outcome("failed", reason=f"{exc.last} ({exc.attempts} attempt(s); tried again on the next run)")
        except TransientError as exc:  # S3, after botocore's retries
            outcome = _Outcome("failed", reason=f"{exc} (tried again on the next run)")
        except OSError as exc:  # a local file that vanished or cannot be read, a full cache disk
            outcome = _Outcome("failed", reason=f"cannot read or cache: {exc}")
        except Exception as exc:  # one odd item of user-supplied input must not stop the whole collection
            log.warning("%s: unexpected error", candidate.source, exc_info=True)
            outcome = _Outcome("failed", reason=f"unexpected error: {type(exc).__name__}: {exc}")
        if index is not None:
            index.record(candidate.source, outcome)
        return outcome

    def _resolve(self, kind: str, candidates: list[_Candidate],
                 index: _Index | None) -> Iterator[tuple[_Candidate, _Outcome]]:
        """Outcomes in source order, fetching at most ``4 * workers`` items ahead; a source listed twice is
        fetched once. Closing the iterator early cancels what has not started and waits for the rest."""
        window = 4 * self.params.workers
        pending: deque[tuple[_Candidate, Future | _Outcome]] = deque()
        started: dict[str, Future | _Outcome] = {}
        upcoming = iter(candidates)
        try:
            while True:
                while len(pending) < window and (candidate := next(upcoming, None)) is not None:
                    if candidate.source not in started:
                        known = index.reusable(candidate) if index is not None else None
                        started[candidate.source] = (self.pool.submit(self._acquire, kind, candidate, index)
                                                     if known is None else known)
                    pending.append((candidate, started[candidate.source]))
                if not pending:
                    return
                candidate, job = pending.popleft()
                yield candidate, job.result() if isinstance(job, Future) else job
        finally:
            for _, job in pending:
                if isinstance(job, Future) and not job.cancel():
                    job.exception()  # wait: its outcome goes into the index

    def _judge(self, name: str, candidate: _Candidate, outcome: _Outcome, index: _Index | None) -> _Item | None:
        """Apply the size and duplicate checks; report a rejection, or return the accepted item."""
        reason = outcome.reason
        if outcome.status == "ok":
            side = self.params.min_side
            if min(outcome.width, outcome.height) < side:
                reason = f"too small: {outcome.width}x{outcome.height} px, both sides must be >= {side}"
            elif outcome.sha256 in self.seen:
                reason = f"duplicate of {self.seen[outcome.sha256]}"
        if outcome.status != "ok" or reason:
            self.report.rejected.append(Rejection(name, candidate.source, reason))
            return None
        self.seen[outcome.sha256] = f"{name}/{candidate.source}"
        # downloads are read from the cache, local files in place
        path = Path(candidate.source) if index is None else index.folder / f"{outcome.sha256}.{outcome.ext}"
        return _Item(f"{name}-{outcome.sha256[:16]}", name, candidate.source, path, outcome.sha256,
                     outcome.ext, tags=(name,))

    def collect_class(self, name: str, source: WebSource) -> list[_Item]:
        if source.kind == "synthetic":
            return self._synthetic_items(name)
        if source.kind == "dataset":
            return self._dataset_items(name, source)
        candidates = self._candidates(name, source)
        index = _Index(self.cache / name) if source.kind != "local" else None
        cap = self.params.max_images_per_class
        items: list[_Item] = []
        resolved = self._resolve(source.kind, candidates, index)
        bar = tqdm(total=len(candidates), desc=f"web {name}", unit="img", disable=not self.progress, leave=False)
        try:
            for candidate, outcome in resolved:
                bar.update()
                item = self._judge(name, candidate, outcome, index)
                if item is not None:
                    items.append(item)
                    if cap is not None and len(items) >= cap:
                        break
        finally:
            resolved.close()
            bar.close()
            if index is not None:
                index.save()
        return items

    def _synthetic_items(self, name: str) -> list[_Item]:
        """The images tagged ``name`` in the synthetic web set, every split, with their masks; train (and val)
        images capped at ``max_images_per_class``, first by id."""
        if self._synthetic is None:
            if self.synthetic_root is None:
                raise ValueError(f"class {name!r} has kind 'synthetic', so synthetic must be the synthetic web "
                                 "data set's folder, got synthetic=None")
            self._synthetic = Dataset(self.synthetic_root)
        dataset = self._synthetic
        records = [r for r in dataset if name in r.tags]
        if not records:
            raise ValueError(f"class {name!r}: no image tagged {name!r} in the synthetic data set at "
                             f"{dataset.root}; its tags are {sorted({t for r in dataset for t in r.tags})}")
        cap = self.params.max_images_per_class
        trainable = sorted((r for r in records if r.split != "test"), key=lambda r: r.id)
        if cap is not None:
            trainable = trainable[:cap]
        chosen = {r.id for r in trainable} | {r.id for r in records if r.split == "test"}
        items = []
        for record in records:
            if record.id not in chosen or record.id in self._copied:
                continue  # another synthetic class copied it already
            self._copied.add(record.id)
            path = dataset.root / record.image
            digest = record.sha256 or sha256_bytes(path.read_bytes())
            self.seen.setdefault(digest, f"{name}/{record.id}")
            items.append(_Item(record.id, name, record.source, path, digest, path.suffix.lstrip("."),
                               record.split, record.tags, dataset.root / record.mask if record.has_mask else None,
                               verbatim=True))
        return items


    def _dataset_items(self, name: str, source: WebSource) -> list[_Item]:
        """The images of data set ``source.name`` tagged ``source.tag``, every split (train and val to train on,
        test to score), each mask reduced to class ``source.label`` (default ``name``); train (and val) capped
        at ``max_images_per_class``, first by id. An image another class took already is a duplicate."""
        if self.datasets is None:
            raise ValueError(f"class {name!r} has kind 'dataset', so datasets must be the folder of the downloaded "
                             "data sets, got datasets=None")
        root = self.datasets / str(source.name)
        if not (root / MANIFEST).is_file():
            raise DatasetFormatError(f"{root / MANIFEST}: web class {name!r} takes its images from data set "
                                     f"{source.name!r}, which is missing; run the download stage first")
        dataset = Dataset(root)
        label = source.label or name
        classes = read_class_names(dataset.root)
        if classes is None or label not in classes:
            raise ValueError(f"web class {name!r}: data set {source.name!r} at {dataset.root} has no class "
                             f"{label!r} (its {CLASSES_FILE}: {classes}); give it 'classes' in download.datasets "
                             f"or set web.classes.{name}.label")
        records = [r for r in dataset if source.tag in r.tags]
        if not records:
            raise ValueError(f"web class {name!r}: no image tagged {source.tag!r} in {dataset.root}; its tags are "
                             f"{sorted({t for r in dataset for t in r.tags})}")
        missing = [r.id for r in records if not r.has_mask]
        if missing:
            raise ValueError(f"web class {name!r}: {len(missing)} image(s) tagged {source.tag!r} in {dataset.root} "
                             f"have no mask (e.g. {missing[0]!r}); kind 'dataset' needs a semantic data set")
        cap = self.params.max_images_per_class
        trainable = sorted((r for r in records if r.split != "test"), key=lambda r: r.id)[:cap]
        chosen = {r.id for r in trainable} | {r.id for r in records if r.split == "test"}
        items = []
        for record in (r for r in records if r.id in chosen):
            path = dataset.root / record.image
            digest = record.sha256 or sha256_bytes(path.read_bytes())
            if digest in self.seen:
                self.report.rejected.append(Rejection(name, str(path), f"duplicate of {self.seen[digest]}"))
                continue
            self.seen[digest] = f"{name}/{source.name}/{record.id}"
            items.append(_Item(record.id, name, f"{source.name}/{record.id}", path, digest, path.suffix.lstrip("."),
                               record.split, (name,), dataset.root / record.mask, verbatim=True,
                               object_id=classes.index(label)))
        return items


def carve_val_by_hash(items: Iterable[_Item], val_fraction: float) -> set[str]:
    """Ids of the train items moving to val: the first ``floor(val_fraction * n + 0.5)`` in (sha256, id) order."""
    train = (i for i in items if i.split == "train")
    return {i.id for i in hold_out(train, val_fraction, key=lambda i: (i.sha256, i.id))}


def _write_dataset(out: Path, items: list[_Item], val_ids: set[str]) -> None:
    with DatasetWriter(out) as writer:
        for item in items:
            data = item.path.read_bytes()
            ext = item.ext
            if sha256_bytes(data) != item.sha256:
                raise SourceError(f"{item.path}: changed while collecting ({item.source}); run again")
            if not item.verbatim and ext not in _KEPT_EXT:
                data, ext = encode_png(decode_image(data, item.describe(item.path))), "png"
            mask = read_mask(item.mask, item.describe(item.mask)) if item.mask is not None else None
            if mask is not None and item.object_id is not None:
                mask = one_class_mask(mask, item.object_id)
            split = "val" if item.id in val_ids else item.split
            writer.add_encoded(item.id, data, ext, mask, split=split, tags=item.tags, source=item.source,
                               image_origin=item.describe(item.path), mask_origin=item.describe(item.mask))


def collect_web_images(params: WebOptions, out: str | os.PathLike, cache: str | os.PathLike,
                       synthetic: str | os.PathLike | None = None, s3_endpoint_url: str | None = None,
                       progress: bool = True, datasets: str | os.PathLike | None = None) -> WebReport:
    """Build the per-class web data set at ``out`` (atomically) and return the report of what was kept.

    Downloaded, local and S3 images: split ``train`` (``val_fraction`` of each class to ``val`` by content
    hash), tag = class name, no mask, ``source`` = URL / path / S3 URI; id ``<class>-<sha256[:16]>``. JPEG and
    PNG bytes are kept as they are, other formats re-encoded as PNG. Synthetic classes: the images tagged with
    the class in the data set at ``synthetic``, every split, copied byte for byte with their masks, ids and
    tags. Data set classes: the same from ``datasets/<name>``, tagged with the class, masks reduced to it. ``s3_endpoint_url`` overrides ``AWS_ENDPOINT_URL_S3``. See the module docstring for the checks.
    """
    if isinstance(params, Mapping):
        raise TypeError(f"params must be the validated web params (lofiseg.config.WebParams), "
                        f"got {type(params).__name__}")
    out, cache = Path(out), Path(cache)
    synthetic_root = Path(synthetic) if synthetic is not None else None
    with ThreadPoolExecutor(max_workers=params.workers, thread_name_prefix="web") as pool:
        collector = _Collector(params, cache, synthetic_root, s3_endpoint_url, progress, pool,
                               Path(datasets) if datasets is not None else None)
        try:
            per_class = {name: collector.collect_class(name, source) for name, source in params.classes.items()}
        finally:
            collector.sessions.close()
    report = collector.report
    val_ids: set[str] = set()
    for name, items in per_class.items():
        report.accepted[name] = len(items)
        val_ids |= carve_val_by_hash(items, params.val_fraction)
        if not items:
            log.warning("web class %r: no image accepted", name)
        log.info("web class %r: %d accepted, %d rejected", name, len(items), report.rejected_count(name))
    _write_dataset(out, [item for items in per_class.values() for item in items], val_ids)
    return report
