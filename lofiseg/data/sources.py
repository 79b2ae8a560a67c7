"""Fetch one data set file from a local path, an http(s) URL or ``s3://bucket/key``, atomically and verified.

A download streams into a temporary sibling of its final name and is renamed into place only when it is
complete (the byte count matches the server's length) and its sha256 matches the expected digest, so the
final name never holds a partial or wrong file. Transient failures (connection errors, timeouts, a transfer
cut short, HTTP 408/429/5xx, S3 throttling and 5xx) are retried with exponential backoff; a 4xx answer and
a checksum mismatch are not, and raise at once. Every error is a :class:`SourceError` naming the URI.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from lofiseg.atomic import atomic_write_json

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_BACKOFF_SECONDS = 120.0
RETRY_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_S3_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                            "ServiceUnavailable", "RequestTimeTooSkewed"})
USER_AGENT = "lofiseg-download/0.1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_sleep: Callable[[float], None] = time.sleep  # indirection so tests can record the backoff delays


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


class _Retryable(Exception):
    """A transient failure of one attempt."""


# --- helpers ----------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _s3_endpoint_description(endpoint_url: str | None) -> str:
    return (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or "the default AWS endpoint")


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
    failure, after ``backoff_seconds * 2**k`` seconds (k = 0, 1, ...; at most 120 s). ``timeout_seconds``
    bounds connecting and each read. S3 uses ``s3_endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` (boto3 reads
    it itself), and the usual boto3 credentials; with none configured the requests go unsigned (public
    buckets).
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
    if scheme == "http":
        def attempt(tmp: Path) -> str:
            return _http_attempt(uri, tmp, dest.name, timeout_seconds, progress)
        where = uri
    else:
        client = _s3_client(s3_endpoint_url, timeout_seconds)
        bucket, key = split_s3_uri(uri)
        endpoint = _s3_endpoint_description(s3_endpoint_url)

        def attempt(tmp: Path) -> str:
            return _s3_attempt(client, bucket, key, uri, endpoint, tmp, progress)
        where = f"{uri} (endpoint {endpoint})"
    dest_dir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for k in range(retries + 1):
        if k:
            delay = min(backoff_seconds * 2 ** (k - 1), MAX_BACKOFF_SECONDS)
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", where, k, retries + 1, last, delay)
            _sleep(delay)
        try:
            _atomic_fetch(dest, uri, sha256, attempt)
            return dest
        except _Retryable as exc:
            last = exc
    raise TransferError(f"{where}: transfer failed after {retries + 1} attempt(s); last error: {last}")


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
    import requests

    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}  # identity: Content-Length = bytes
    try:
        with requests.get(url, stream=True, timeout=(timeout, timeout), headers=headers) as resp:
            if resp.status_code != 200:
                message = f"{url}: HTTP {resp.status_code} {resp.reason or ''}".rstrip()
                if resp.status_code in RETRY_HTTP_STATUS:
                    raise _Retryable(message)
                raise HTTPStatusError(message, resp.status_code)
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            digest, received = hashlib.sha256(), 0
            with open(tmp, "wb") as fh, _progress_bar(expected, name, progress) as bar:
                for block in resp.iter_content(CHUNK_BYTES):
                    fh.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:  # invalid URL and the like: retrying cannot help
        raise SourceError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if expected is not None and received != expected:
        raise _Retryable(f"transfer cut short: received {received} of {expected} bytes")
    return digest.hexdigest()


# --- s3 ---------------------------------------------------------------------------------------------------

def _s3_client(endpoint_url: str | None, timeout: float):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(retries={"total_max_attempts": 1, "mode": "standard"},  # fetch() retries, with backoff
                    connect_timeout=timeout, read_timeout=timeout)
    session = boto3.session.Session()
    if session.get_credentials() is None:
        config = config.merge(Config(signature_version=UNSIGNED))
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _s3_attempt(client, bucket: str, key: str, uri: str, endpoint: str, tmp: Path, progress: bool) -> str:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from urllib3.exceptions import HTTPError as Urllib3Error

    transient = (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError, Urllib3Error,
                 ConnectionError)
    try:
        resp = client.get_object(Bucket=bucket, Key=key)
        expected = resp.get("ContentLength")
        digest, received = hashlib.sha256(), 0
        with open(tmp, "wb") as fh, _progress_bar(expected, posixpath.basename(key), progress) as bar:
            for block in resp["Body"].iter_chunks(CHUNK_BYTES):
                fh.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"{uri}: S3 error {code} (HTTP {status}) from endpoint {endpoint}: {error.get('Message', '')}"
        if code in RETRY_S3_CODES or (isinstance(status, int) and status >= 500):
            raise _Retryable(message) from exc
        raise SourceError(message.rstrip(": ")) from exc
    except transient as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
    except BotoCoreError as exc:
        raise SourceError(f"{uri}: S3 request to endpoint {endpoint} failed: {exc}") from exc
    if expected is not None and received != expected:
        raise _Retryable(f"transfer cut short: received {received} of {expected} bytes")
    return digest.hexdigest()
