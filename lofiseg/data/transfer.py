"""Fetching bytes over HTTP(S) and S3: one retry policy, one transient/permanent error pair, one S3 client.

Every failed attempt is a :class:`TransientError` (the next attempt may succeed: a timeout, a lost connection,
a transfer cut short, HTTP 408/425/429/5xx, S3 throttling and 5xx) or a :class:`PermanentError` (retrying
cannot help: another HTTP 4xx, an invalid URL, a missing S3 object). The messages leave the URL out when the
caller names it, and always name the S3 endpoint.

Retries: HTTP attempts go through :func:`with_retries` (exponential backoff, capped at 120 s); S3 requests are
retried by botocore itself (standard retry mode: connection errors, throttling, 5xx; its own jittered backoff)
in the client of :func:`s3_client`, the same number of times.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 120.0
RETRY_HTTP_STATUS = frozenset({408, 425, 429})  # and every 5xx
RETRY_S3_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                            "ServiceUnavailable", "RequestTimeTooSkewed"})
USER_AGENT = "lofiseg-download/0.1"
_sleep: Callable[[float], None] = time.sleep  # indirection so tests can record the backoff delays
T = TypeVar("T")


class TransientError(Exception):
    """One attempt failed in a way the next may not (timeout, connection, transfer cut short, 5xx)."""


class PermanentError(Exception):
    """Retrying cannot help (HTTP 4xx, an invalid request, a missing object, not an image).

    ``status``: the HTTP status of an answer that was an error, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetriesExhausted(TransientError):
    """Every attempt failed with a transient error; ``last`` is the last one, ``attempts`` how many were made."""

    def __init__(self, last: TransientError, attempts: int) -> None:
        super().__init__(f"{last} ({attempts} attempt(s))")
        self.last, self.attempts = last, attempts


# --- the retry policy ---------------------------------------------------------------------------------------

def retry_delays(retries: int, backoff_seconds: float) -> list[float]:
    """The pause before each retry: ``backoff * 2**(k-1)`` for retry k = 1..retries, capped at 120 s."""
    return [min(backoff_seconds * 2 ** (k - 1), MAX_BACKOFF_SECONDS) for k in range(1, retries + 1)]


def with_retries(attempt: Callable[[], T], retries: int, backoff_seconds: float, *, what: str) -> T:
    """Run ``attempt``; after a :class:`TransientError` pause (:func:`retry_delays`) and run it again, ``retries``
    more times, logging each retry with ``what`` (the URL). :class:`RetriesExhausted` if every attempt failed;
    any other exception, :class:`PermanentError` included, propagates at once."""
    delays = retry_delays(retries, backoff_seconds)
    last: TransientError | None = None
    for k in range(retries + 1):
        if k:
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", what, k, retries + 1, last,
                        delays[k - 1])
            _sleep(delays[k - 1])
        try:
            return attempt()
        except TransientError as exc:
            last = exc
    assert last is not None
    raise RetriesExhausted(last, retries + 1)


# --- HTTP(S) ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def http_response(url: str, timeout_seconds: float, *, session: Any = None,
                  headers: Mapping[str, str] | None = None) -> Iterator[Any]:
    """GET ``url`` as a stream (through ``session``, a ``requests.Session``, if given) and yield the 2xx answer.

    ``timeout_seconds`` bounds connecting and each read. A failure, here or while the ``with`` block reads the
    body, is raised as :class:`TransientError` or :class:`PermanentError` (``HTTP 404 Not Found``, ``timeout:
    no answer within 5 s``, ...).
    """
    import requests

    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise PermanentError("unsupported URL: need http:// or https://")
    get = session.get if session is not None else requests.get
    try:
        with get(url, stream=True, timeout=(timeout_seconds, timeout_seconds), headers=headers) as response:
            if not 200 <= response.status_code < 300:
                raise _status_error(response.status_code, response.reason)
            yield response
    except requests.RequestException as exc:
        raise _request_error(exc, timeout_seconds) from exc


def content_length(response: Any) -> int | None:
    """The byte count an HTTP answer announces (``Content-Length``), None if it does not."""
    length = response.headers.get("Content-Length") or ""
    return int(length) if length.isdigit() else None


def check_complete(received: int, expected: int | None) -> None:
    """:class:`TransientError` if a transfer announced ``expected`` bytes and delivered another count."""
    if expected is not None and received != expected:
        raise TransientError(f"transfer cut short: received {received} of {expected} bytes")


def _status_error(status: int, reason: str | None) -> TransientError | PermanentError:
    message = f"HTTP {status} {reason or ''}".rstrip()
    if status in RETRY_HTTP_STATUS or status >= 500:
        return TransientError(message)
    return PermanentError(message, status)


def _request_error(exc: BaseException, timeout_seconds: float) -> TransientError | PermanentError:
    import requests

    if isinstance(exc, requests.Timeout) or _is_timeout(exc):
        return TransientError(f"timeout: no answer within {timeout_seconds:g} s")
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError
                  | requests.exceptions.ContentDecodingError):
        return TransientError(f"connection error: {type(exc).__name__}: {exc}")
    return PermanentError(f"request error: {type(exc).__name__}: {exc}")  # invalid URL and the like


def _is_timeout(exc: BaseException) -> bool:
    """Whether a timeout is anywhere in the exception's chain (requests wraps urllib3's read timeouts)."""
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    stack, seen = [exc], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Urllib3Timeout | TimeoutError):
            return True
        stack.extend(x for x in (item.__cause__, item.__context__, *item.args) if isinstance(x, BaseException))
    return False


# --- S3 -----------------------------------------------------------------------------------------------------

def s3_client(endpoint_url: str | None = None, *, timeout_seconds: float, retries: int, max_connections: int = 10,
              unsigned_without_credentials: bool = True) -> Any:
    """A boto3 S3 client for ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` (boto3 reads it), else AWS itself.

    botocore retries each request ``retries`` more times after a transient failure (standard retry mode);
    ``timeout_seconds`` bounds connecting and each read; the connection pool holds ``max_connections`` (at least
    10) for threads sharing the client. Without credentials the requests go unsigned (public buckets), unless
    ``unsigned_without_credentials`` is False. ``client.meta.endpoint_url`` is the endpoint it talks to.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(retries={"max_attempts": retries, "mode": "standard"}, connect_timeout=timeout_seconds,
                    read_timeout=timeout_seconds, max_pool_connections=max(max_connections, 10))
    session = boto3.session.Session()
    if unsigned_without_credentials and session.get_credentials() is None:
        config = config.merge(Config(signature_version=UNSIGNED))
    return session.client("s3", endpoint_url=endpoint_url, config=config)


@contextlib.contextmanager
def s3_errors(what: str, endpoint: str) -> Iterator[None]:
    """Raise botocore's errors from inside the ``with`` block as :class:`TransientError` / :class:`PermanentError`
    naming ``what`` (``GET s3://bucket/key``, ``listing s3://bucket/prefix``) and the ``endpoint``."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from urllib3.exceptions import HTTPError as Urllib3Error

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = f"S3 error {code} (HTTP {status}) on {what} at endpoint {endpoint}: {error.get('Message', '')}"
        transient = code in RETRY_S3_CODES or (isinstance(status, int) and status >= 500)
        raise (TransientError if transient else PermanentError)(message.rstrip(": ")) from exc
    except (BotoConnectionError, HTTPClientError, IncompleteReadError, ResponseStreamingError, Urllib3Error,
            ConnectionError, TimeoutError) as exc:
        raise TransientError(f"{type(exc).__name__} on {what} at endpoint {endpoint}: {exc}") from exc
    except BotoCoreError as exc:
        raise PermanentError(f"S3 request {what} to endpoint {endpoint} failed: {exc}") from exc
