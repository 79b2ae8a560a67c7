"""Real servers on 127.0.0.1 for the download tests: an HTTP file server with failure modes, and moto's S3.

Import the fixtures into a test module: ``from tests.servers import http_server, s3_endpoint  # noqa: F401``.
Both servers bind port 0 (a free port) and stop when the module's tests are done.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class FileServer:
    """Files served at ``/<name>``, each with optional failure modes for its next requests."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cuts: Counter = field(default_factory=Counter)  # next n requests: full Content-Length, half the body, close
    failures: dict[str, list[int]] = field(default_factory=dict)  # next statuses to answer, in order
    stalls: dict[str, tuple[int, float]] = field(default_factory=dict)  # next n requests: pause before the body
    hits: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, data: bytes, name: str | None = None) -> str:
        """Serve ``data`` under a fresh (or the given) name; return its URL."""
        name = name or f"{uuid.uuid4().hex[:8]}.bin"
        with self.lock:
            self.files[name] = data
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def cut(self, url: str, times: int) -> None:
        with self.lock:
            self.cuts[self._name(url)] = times

    def fail(self, url: str, *statuses: int) -> None:
        with self.lock:
            self.failures[self._name(url)] = list(statuses)

    def stall(self, url: str, times: int, seconds: float) -> None:
        with self.lock:
            self.stalls[self._name(url)] = (times, seconds)

    def requests_for(self, url: str) -> int:
        with self.lock:
            return self.hits[self._name(url)]

    def _name(self, url: str) -> str:
        return url.rsplit("/", 1)[-1]

    def plan(self, name: str) -> tuple[str, int | float | None, bytes | None]:
        """What to do for one request: ("404"|"status"|"cut"|"stall"|"ok", detail, body)."""
        with self.lock:
            self.hits[name] += 1
            data = self.files.get(name)
            if data is None:
                return "404", None, None
            if self.failures.get(name):
                return "status", self.failures[name].pop(0), data
            if self.cuts[name] > 0:
                self.cuts[name] -= 1
                return "cut", None, data
            times, seconds = self.stalls.get(name, (0, 0.0))
            if times > 0:
                self.stalls[name] = (times - 1, seconds)
                return "stall", seconds, data
            return "ok", None, data


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            action, detail, data = server.plan(self.path.lstrip("/"))
            if action == "404":
                self.send_error(404, "Not Found")
                return
            if action == "status":
                self.send_error(int(detail), "Injected failure")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                if action == "cut":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if action == "stall":
                    self.wfile.flush()
                    time.sleep(float(detail))
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): expected for stalls

    return Handler


@contextlib.contextmanager
def serve_on_loopback(handler: type[BaseHTTPRequestHandler], state: Any) -> Iterator[Any]:
    """Serve ``handler`` on 127.0.0.1 (a free port) in a thread; ``state.base_url`` is set; stops on exit."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def http_server() -> Iterator[FileServer]:
    state = FileServer()
    with serve_on_loopback(_handler(state), state):
        yield state


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    """moto's S3-compatible server in a thread on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


S3_ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE")


@pytest.fixture
def s3_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Dummy credentials and ``AWS_ENDPOINT_URL_S3`` pointing at the moto server, for one test."""
    isolate_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    return moto_server


def isolate_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, no profile, no config file, no instance metadata look-up."""
    for key in S3_ENV_CLEARED + ("AWS_ENDPOINT_URL_S3",):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def put_s3_object(endpoint: str, bucket: str, key: str, data: bytes) -> str:
    """Create ``bucket`` if needed, upload ``data`` with boto3, return ``s3://bucket/key``."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
