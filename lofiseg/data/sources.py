"""Fetch one data set file from a local path, an http(s) URL or ``s3://bucket/key``, atomically and verified.

A download streams into a temporary sibling of its final name and is renamed into place only when it is
complete (the byte count matches the server's length) and its sha256 matches the expected digest, so the
final name never holds a partial or wrong file. Transient failures (connection errors, timeouts, a transfer
cut short, HTTP 408/425/429/5xx, S3 throttling and 5xx) are retried (:mod:`lofiseg.data.transfer`: HTTP with
exponential backoff, S3 requests by botocore); a 4xx answer and a checksum mismatch are not, and raise at once.
Every error is a :class:`SourceError` naming the URI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from lofiseg.atomic import atomic_write_json
from lofiseg.data.format import sha256_file
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

CHUNK_BYTES = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class SourceError(ValueError):
    """A data set file could not be fetched; the message names the URI."""


class ChecksumError(SourceError):
    """The fetched file's sha256 differs from the expected one; the file was deleted."""


class HTTPStatusError(SourceError):
    """The server answered with an HTTP status that retrying cannot fix (e.g. 404)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class TransferError(SourceError):
    """Every attempt of a transfer failed with a transient error."""


# --- helpers ----------------------------------------------------------------------------------------------

def uri_scheme(uri: str) -> str:
    """``"http"`` (also https), ``"s3"`` or ``"local"`` (a path or ``file://`` URI)."""
    lower = uri.lower()
    if lower.startswith(("http://", "https://")):
        return "http"
    if lower.startswith("s3://"):
        return "s3"
    if lower.startswith("file://"):
        return "local"
    if re.match(r"^[a-z][a-z0-9+.-]*://", lower):
        raise SourceError(f"{uri}: unsupported URI scheme; use a local path, file://, http(s):// or s3://")
    return "local"


def local_path(uri: str) -> Path:
    if uri.lower().startswith("file://"):
        return Path(unquote(urlsplit(uri).path))
    return Path(uri).expanduser()


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key or key.endswith("/"):
        raise SourceError(f"{uri}: an S3 URI must be s3://bucket/key naming one object")
    return bucket, key


def file_name(uri: str) -> str:
    """The name a fetched file gets in the destination folder: the last path component of the URI.

    A URI without one (``https://host/`` or ``?id=...`` download links) gets ``download-<hash of the URI>``.
    """
    scheme = uri_scheme(uri)
    if scheme == "local":
        name = local_path(uri).name
    elif scheme == "s3":
        name = posixpath.basename(split_s3_uri(uri)[1])
    else:
        name = posixpath.basename(unquote(urlsplit(uri).path))
    if name in ("", ".", "..") or name.startswith(".") or "\\" in name:
        name = f"download-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    return name


def _record_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.source.json")


def _check_args(uri: object, sha256: object, retries: object, backoff_seconds: object,
                timeout_seconds: object) -> None:
    if not isinstance(uri, str) or not uri:
        raise TypeError(f"uri must be a non-empty str, got {uri!r}")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
        raise ValueError(f"sha256 must be 64 lowercase hex digits or None, got {sha256!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if isinstance(backoff_seconds, bool) or not isinstance(backoff_seconds, int | float) or backoff_seconds < 0:
        raise ValueError(f"backoff_seconds must be a number >= 0, got {backoff_seconds!r}")
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int | float) or timeout_seconds <= 0:
        raise ValueError(f"timeout_seconds must be a number > 0, got {timeout_seconds!r}")


# --- the entry point --------------------------------------------------------------------------------------

def fetch(uri: str, dest_dir: str | os.PathLike, *, sha256: str | None = None, retries: int = 4,
          backoff_seconds: float = 1.0, timeout_seconds: float = 60.0, s3_endpoint_url: str | None = None,
          progress: bool = True) -> Path:
    """Fetch ``uri`` to ``dest_dir/<file name>`` (see :func:`file_name`) and return that path.

    A local folder is returned in place (no copy). A file already there is reused, without any transfer,
    when its sha256 matches ``sha256``, or, with no ``sha256`` given, when it was fetched from the same URI
    (recorded in a hidden ``.<name>.source.json`` beside it). ``retries`` more attempts follow a transient
    failure: over HTTP after ``backoff_seconds * 2**k`` seconds (k = 0, 1, ...; at most 120 s), over S3 per
    request, by botocore with its own backoff. ``timeout_seconds`` bounds connecting and each read. S3 uses
    ``s3_endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` (boto3 reads it itself), and the usual boto3 credentials;
    with none configured the requests go unsigned (public buckets).
    """
    _check_args(uri, sha256, retries, backoff_seconds, timeout_seconds)
    dest_dir = Path(dest_dir)
    scheme = uri_scheme(uri)
    if scheme == "local":
        return _fetch_local(uri, dest_dir, sha256, progress)
    dest = dest_dir / file_name(uri)
    if _reusable(dest, uri, sha256):
        log.info("%s: already fetched, reusing %s", uri, dest)
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        if scheme == "http":
            def attempt(tmp: Path) -> str:
                return _http_attempt(uri, tmp, dest.name, timeout_seconds, progress)

            with_retries(lambda: _atomic_fetch(dest, uri, sha256, attempt), retries, backoff_seconds, what=uri)
        else:
            _atomic_fetch(dest, uri, sha256, lambda tmp: _s3_attempt(s3_endpoint_url, uri, tmp, timeout_seconds,
                                                                     retries, progress))
    except RetriesExhausted as exc:
        raise TransferError(f"{uri}: transfer failed after {exc.attempts} attempt(s); last error: {exc.last}") from exc
    except TransientError as exc:  # S3, after botocore's retries
        raise TransferError(f"{uri}: transfer failed, with up to {retries + 1} attempt(s) per request; "
                            f"last error: {exc}") from exc
    except PermanentError as exc:
        if exc.status is not None:
            raise HTTPStatusError(f"{uri}: {exc}", exc.status) from exc
        raise SourceError(f"{uri}: {exc}") from exc
    return dest


def _reusable(dest: Path, uri: str, sha256: str | None) -> bool:
    if not dest.is_file():
        return False
    if sha256 is not None:
        actual = sha256_file(dest)
        if actual == sha256:
            return True
        log.warning("%s: cached %s has sha256 %s, expected %s; deleting it and fetching again",
                    uri, dest, actual, sha256)
        dest.unlink()
        _record_path(dest).unlink(missing_ok=True)
        return False
    try:
        record = json.loads(_record_path(dest).read_text())
    except (OSError, ValueError):
        return False
    return record.get("uri") == uri and record.get("size") == dest.stat().st_size


def _atomic_fetch(dest: Path, uri: str, sha256: str | None, attempt: Callable[[Path], str],
                  extra_record: dict[str, object] | None = None) -> None:
    """Run one transfer into a temporary sibling; verify it and rename it to ``dest``, or delete it."""
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        actual = attempt(tmp)
        if sha256 is not None and actual != sha256:
            raise ChecksumError(f"{uri}: sha256 mismatch: expected {sha256}, got {actual}; "
                                "the downloaded file was deleted")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(_record_path(dest), {"uri": uri, "sha256": actual, "size": dest.stat().st_size,
                                           **(extra_record or {})})


def _progress_bar(total: int | None, name: str, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not enabled,
                leave=False)


# --- local ------------------------------------------------------------------------------------------------

def _fetch_local(uri: str, dest_dir: Path, sha256: str | None, progress: bool) -> Path:
    source = local_path(uri)
    if source.is_dir():
        if sha256 is not None:
            raise SourceError(f"{uri}: is a folder; sha256 can only be checked for a file")
        return source
    if not source.is_file():
        raise SourceError(f"{uri}: local file or folder not found (resolved to {source.resolve()})")
    dest = dest_dir / source.name
    if dest.exists() and dest.resolve() == source.resolve():  # already in the cache folder
        if sha256 is not None and (actual := sha256_file(dest)) != sha256:
            raise ChecksumError(f"{uri}: sha256 mismatch: expected {sha256}, got {actual}")
        return dest
    stat = source.stat()
    stamp = {"source_mtime_ns": stat.st_mtime_ns}
    if dest.is_file():
        if sha256 is not None:
            if sha256_file(dest) == sha256:
                return dest
        else:
            try:
                record = json.loads(_record_path(dest).read_text())
            except (OSError, ValueError):
                record = {}
            if (record.get("uri") == uri and record.get("size") == stat.st_size == dest.stat().st_size
                    and record.get("source_mtime_ns") == stat.st_mtime_ns):
                return dest

    def copy(tmp: Path) -> str:
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(tmp, "wb") as dst, \
                _progress_bar(stat.st_size, source.name, progress) as bar:
            for block in iter(lambda: src.read(CHUNK_BYTES), b""):
                dst.write(block)
                digest.update(block)
                bar.update(len(block))
        shutil.copystat(source, tmp)
        return digest.hexdigest()

    dest_dir.mkdir(parents=True, exist_ok=True)
    _atomic_fetch(dest, uri, sha256, copy, stamp)
    return dest


# --- http(s) ----------------------------------------------------------------------------------------------

def _http_attempt(url: str, tmp: Path, name: str, timeout: float, progress: bool) -> str:
    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}  # identity: Content-Length = bytes
    with http_response(url, timeout, headers=headers) as resp:
        expected = content_length(resp)
        digest, received = hashlib.sha256(), 0
        with open(tmp, "wb") as fh, _progress_bar(expected, name, progress) as bar:
            for block in resp.iter_content(CHUNK_BYTES):
                fh.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    check_complete(received, expected)
    return digest.hexdigest()


# --- s3 ---------------------------------------------------------------------------------------------------

def _s3_attempt(endpoint_url: str | None, uri: str, tmp: Path, timeout: float, retries: int, progress: bool) -> str:
    bucket, key = split_s3_uri(uri)
    client = s3_client(endpoint_url, timeout_seconds=timeout, retries=retries)
    with s3_errors("GET", client.meta.endpoint_url):
        resp = client.get_object(Bucket=bucket, Key=key)
        expected = resp.get("ContentLength")
        digest, received = hashlib.sha256(), 0
        with open(tmp, "wb") as fh, _progress_bar(expected, posixpath.basename(key), progress) as bar:
            for block in resp["Body"].iter_chunks(CHUNK_BYTES):
                fh.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    check_complete(received, expected)
    return digest.hexdigest()
