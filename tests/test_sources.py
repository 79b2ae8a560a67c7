"""fetch() against real servers on 127.0.0.1: an HTTP server with failure modes and moto's S3 server."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from lofiseg.data import transfer
from lofiseg.data.sources import (
    ChecksumError,
    HTTPStatusError,
    SourceError,
    TransferError,
    fetch,
    file_name,
    split_s3_uri,
)
from tests import servers
from tests.servers import FileServer, closed_port, isolate_aws_env, put_s3_object

# the servers' fixtures, used by name in the tests below
http_server = servers.http_server
moto_server = servers.moto_server
s3_endpoint = servers.s3_endpoint

PAYLOAD = bytes(range(256)) * 40  # 10 240 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 3, "backoff_seconds": 0.0, "timeout_seconds": 5.0, "progress": False}


def leftovers(folder: Path) -> list[str]:
    """Every file in ``folder`` except the fetch records (hidden .*.source.json)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".source.json")) if folder.exists() else []


# --- http -------------------------------------------------------------------------------------------------

def test_http_fetch_writes_file_with_checksum(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD, "data.zip")
    path = fetch(url, tmp_path, sha256=PAYLOAD_SHA, **FAST)
    assert path == tmp_path / "data.zip"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["data.zip"]


def test_http_rerun_with_matching_checksum_does_not_download(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    fetch(url, tmp_path, sha256=PAYLOAD_SHA, **FAST)
    fetch(url, tmp_path, sha256=PAYLOAD_SHA, **FAST)
    fetch(url, tmp_path, **FAST)  # no checksum: the record says this URI was fetched
    assert http_server.requests_for(url) == 1


def test_http_cached_file_with_wrong_checksum_is_fetched_again(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    (tmp_path / file_name(url)).write_bytes(b"stale")
    path = fetch(url, tmp_path, sha256=PAYLOAD_SHA, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert http_server.requests_for(url) == 1


def test_http_404_names_url_and_status_without_retry(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.url("nothing-here.zip")
    with pytest.raises(HTTPStatusError, match=r"nothing-here\.zip: HTTP 404") as info:
        fetch(url, tmp_path, **FAST)
    assert info.value.status == 404
    assert http_server.requests_for(url) == 1
    assert leftovers(tmp_path) == []


def test_http_cut_transfer_is_retried_until_complete(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    http_server.cut(url, 2)  # first two answers: Content-Length 10240, 5120 bytes, connection closed
    path = fetch(url, tmp_path, sha256=PAYLOAD_SHA, **FAST)
    assert path.read_bytes() == PAYLOAD
    assert http_server.requests_for(url) == 3


def test_http_cut_transfer_with_too_few_retries_leaves_no_file(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    http_server.cut(url, 5)
    with pytest.raises(TransferError, match=r"after 2 attempt\(s\)") as info:
        fetch(url, tmp_path, **{**FAST, "retries": 1})
    assert url in str(info.value)
    assert http_server.requests_for(url) == 2
    assert list(tmp_path.iterdir()) == []  # no partial file, no temporary file, no record


def test_http_server_errors_are_retried_with_exponential_backoff(http_server: FileServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(transfer, "_sleep", delays.append)
    url = http_server.add(PAYLOAD)
    http_server.fail(url, 503, 500, 429)
    path = fetch(url, tmp_path, **{**FAST, "retries": 4, "backoff_seconds": 0.5})
    assert path.read_bytes() == PAYLOAD
    # backoff_seconds * 2**k for k = 0, 1, 2 before attempts 2, 3, 4
    assert delays == [0.5, 1.0, 2.0]


def test_every_http_5xx_is_retried(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    http_server.fail(url, 501)  # one policy with the web collector: any 5xx may be gone on the next attempt
    assert fetch(url, tmp_path, **FAST).read_bytes() == PAYLOAD
    assert http_server.requests_for(url) == 2


def test_http_stalled_transfer_times_out_and_is_retried(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    http_server.stall(url, 1, 2.0)  # headers, then 2 s of silence: more than the 0.3 s read timeout
    start = time.monotonic()
    path = fetch(url, tmp_path, **{**FAST, "timeout_seconds": 0.3})
    assert path.read_bytes() == PAYLOAD
    assert time.monotonic() - start < 2.0
    assert http_server.requests_for(url) == 2


def test_http_checksum_mismatch_is_clear_and_deletes_the_file(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        fetch(url, tmp_path, sha256=wrong, **FAST)
    message = str(info.value)
    assert url in message and wrong in message and PAYLOAD_SHA in message
    assert http_server.requests_for(url) == 1  # a checksum mismatch is not retried
    assert list(tmp_path.iterdir()) == []


def test_http_progress_bar_does_not_change_the_result(http_server: FileServer, tmp_path: Path) -> None:
    url = http_server.add(PAYLOAD)
    path = fetch(url, tmp_path, **{**FAST, "progress": True})
    assert path.read_bytes() == PAYLOAD


# --- local ------------------------------------------------------------------------------------------------

def test_local_file_is_copied_and_verified(tmp_path: Path) -> None:
    source = tmp_path / "src" / "a.tar"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    path = fetch(str(source), tmp_path / "cache", sha256=PAYLOAD_SHA, **FAST)
    assert path == tmp_path / "cache" / "a.tar" and path.read_bytes() == PAYLOAD
    assert fetch(source.as_uri(), tmp_path / "cache", **FAST) == path  # file:// URI, same file


def test_local_file_checksum_mismatch(tmp_path: Path) -> None:
    source = tmp_path / "a.zip"
    source.write_bytes(PAYLOAD)
    with pytest.raises(ChecksumError, match="expected f{64}"):
        fetch(str(source), tmp_path / "cache", sha256="f" * 64, **FAST)
    assert leftovers(tmp_path / "cache") == []


def test_local_folder_is_used_in_place(tmp_path: Path) -> None:
    assert fetch(str(tmp_path), tmp_path / "cache", **FAST) == tmp_path
    with pytest.raises(SourceError, match="is a folder"):
        fetch(str(tmp_path), tmp_path / "cache", sha256=PAYLOAD_SHA, **FAST)


def test_local_missing_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="local file or folder not found"):
        fetch(str(tmp_path / "absent.zip"), tmp_path / "cache", **FAST)


# --- argument checks --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "error", "pattern"), [
    ({"uri": 3}, TypeError, "uri must be a non-empty str"),
    ({"sha256": "ABC"}, ValueError, "sha256 must be 64 lowercase hex"),
    ({"retries": -1}, ValueError, "retries must be an int >= 0"),
    ({"backoff_seconds": -0.5}, ValueError, "backoff_seconds must be a number >= 0"),
    ({"timeout_seconds": 0}, ValueError, "timeout_seconds must be a number > 0"),
    ({"uri": "ftp://host/a.zip"}, SourceError, "unsupported URI scheme"),
    ({"uri": "s3://bucket-only"}, SourceError, "s3://bucket/key"),
])
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict, error: type, pattern: str) -> None:
    args = {"uri": "http://127.0.0.1:9/a.zip", **FAST, **kwargs}
    with pytest.raises(error, match=pattern):
        fetch(args.pop("uri"), tmp_path, **args)


def test_file_names() -> None:
    assert file_name("https://h/x/DUTS-TR.zip?dl=1") == "DUTS-TR.zip"
    assert file_name("s3://b/some/key.tar.gz") == "key.tar.gz"
    assert file_name("https://h/").startswith("download-")
    assert split_s3_uri("s3://bucket/a/b.zip") == ("bucket", "a/b.zip")


# --- s3 ---------------------------------------------------------------------------------------------------

def test_s3_fetch_via_env_endpoint(s3_endpoint: str, tmp_path: Path) -> None:
    uri = put_s3_object(s3_endpoint, "lofiseg-data", "sets/ecssd.zip", PAYLOAD)
    path = fetch(uri, tmp_path, sha256=PAYLOAD_SHA, **FAST)
    assert path == tmp_path / "ecssd.zip" and path.read_bytes() == PAYLOAD


def test_s3_fetch_via_explicit_endpoint(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_aws_env(monkeypatch)  # no AWS_ENDPOINT_URL_S3: only the argument points at moto
    uri = put_s3_object(moto_server, "lofiseg-explicit", "a.tar", PAYLOAD)
    path = fetch(uri, tmp_path, s3_endpoint_url=moto_server, **FAST)
    assert path.read_bytes() == PAYLOAD


def test_s3_missing_key_is_clear_and_not_retried(s3_endpoint: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(transfer, "_sleep", delays.append)
    put_s3_object(s3_endpoint, "lofiseg-missing", "present.zip", b"x")
    with pytest.raises(SourceError, match=r"s3://lofiseg-missing/absent\.zip: S3 error NoSuchKey") as info:
        fetch("s3://lofiseg-missing/absent.zip", tmp_path, **FAST)
    assert s3_endpoint in str(info.value)
    assert delays == []
    assert leftovers(tmp_path) == []


def test_s3_unreachable_endpoint_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_aws_env(monkeypatch)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(TransferError) as info:
        fetch("s3://bucket/key.zip", tmp_path, retries=2, backoff_seconds=0.05, timeout_seconds=2.0,
              s3_endpoint_url=endpoint, progress=False)
    assert time.monotonic() - start < 10.0
    message = str(info.value)
    assert "s3://bucket/key.zip" in message and endpoint in message and "3 attempt(s)" in message
    assert leftovers(tmp_path) == []


def test_s3_server_errors_are_retried_by_botocore(http_server: FileServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 endpoint (the file server, path-style ``/<bucket>/<key>``) answering 503, 500, then the object:
    botocore's standard retry mode makes the ``retries`` more attempts, lofiseg's HTTP loop none."""
    isolate_aws_env(monkeypatch)
    delays: list[float] = []
    monkeypatch.setattr(transfer, "_sleep", delays.append)
    http_server.add(PAYLOAD, "lofiseg-flaky/sets/a.zip")
    http_server.failures["lofiseg-flaky/sets/a.zip"] = [503, 500]
    path = fetch("s3://lofiseg-flaky/sets/a.zip", tmp_path, sha256=PAYLOAD_SHA,
                 s3_endpoint_url=http_server.base_url, **{**FAST, "retries": 2})
    assert path.read_bytes() == PAYLOAD
    assert http_server.hits["lofiseg-flaky/sets/a.zip"] == 3 and delays == []

    http_server.add(PAYLOAD, "lofiseg-flaky/sets/b.zip")
    http_server.failures["lofiseg-flaky/sets/b.zip"] = [503, 503]
    with pytest.raises(TransferError, match=r"2 attempt\(s\) per request") as info:
        fetch("s3://lofiseg-flaky/sets/b.zip", tmp_path / "b", s3_endpoint_url=http_server.base_url,
              **{**FAST, "retries": 1})
    assert "s3://lofiseg-flaky/sets/b.zip" in str(info.value) and http_server.base_url in str(info.value)
    assert http_server.hits["lofiseg-flaky/sets/b.zip"] == 2
    assert list((tmp_path / "b").iterdir()) == []
