"""collect_web_images against real servers on 127.0.0.1: an HTTP image server with failure modes, moto's S3."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from lofiseg.config import WebClassSource, WebParams
from lofiseg.data import transfer, web
from lofiseg.data.format import Dataset, DatasetWriter, sha256_bytes
from lofiseg.data.sources import SourceError
from lofiseg.data.synthetic import generate_web
from lofiseg.data.transfer import retry_delays
from lofiseg.data.web import (
    WebReport,
    collect_web_images,
    list_local_images,
    read_url_manifest,
)
from tests import servers
from tests.servers import FileServer, closed_port, isolate_aws_env, put_s3_object, serve_on_loopback

moto_server = servers.moto_server  # the fixture, used by name below
s3_endpoint = servers.s3_endpoint


def encode(width: int, height: int, seed: int, fmt: str = "PNG") -> bytes:
    """A noise image (distinct bytes per seed) encoded in ``fmt``."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


# --- an HTTP server that answers with a Content-Type per file -----------------------------------------------

@dataclass
class ImageServer(FileServer):
    """:class:`tests.servers.FileServer` (hits, 404s, injected statuses, stalls) plus a Content-Type per file."""

    types: dict[str, str] = field(default_factory=dict)

    def serve(self, name: str, data: bytes, content_type: str) -> str:
        with self.lock:
            self.types[name] = content_type
        return self.add(data, name)


def _typed_handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            name = self.path.lstrip("/")
            action, detail, data = server.plan(name)
            if action == "404":
                self.send_error(404, "Not Found")
                return
            if action == "status":
                self.send_error(int(detail), "Injected failure")
                return
            self.send_response(200)
            self.send_header("Content-Type", server.types.get(name, "application/octet-stream"))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                if action == "stall":  # headers sent, then silence longer than the client's timeout
                    self.wfile.flush()
                    time.sleep(float(detail))
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    state = ImageServer()
    with serve_on_loopback(_typed_handler(state), state):
        yield state


# --- the URL manifest scenario ------------------------------------------------------------------------------

FAST = {"workers": 4, "retries": 1, "backoff_seconds": 0.0, "timeout_seconds": 0.5, "min_side": 32}


@dataclass
class UrlRun:
    server: ImageServer
    urls: dict[str, str]
    data: dict[str, bytes]
    params: WebParams
    cache: Path
    out: Path
    report: WebReport
    hits_after_first_run: dict[str, int]


@pytest.fixture(scope="module")
def url_run(image_server: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> UrlRun:
    root = tmp_path_factory.mktemp("web-urls")
    data = {
        "good1.png": encode(40, 36, 1), "good2.jpg": encode(48, 40, 2, "JPEG"), "good3.png": encode(64, 33, 3),
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "page.html": b"<html><body>results</body></html>",
        "slow.png": encode(40, 40, 4), "tiny.png": encode(8, 8, 5), "flaky.png": encode(50, 32, 6),
        "dog1.png": encode(33, 45, 7),
    }
    data["copy-of-good1.png"] = data["good1.png"]  # same bytes, another URL, same class
    data["dog-copy-of-good3.png"] = data["good3.png"]  # same bytes, another URL, another class
    types = {name: "image/jpeg" if name.endswith(".jpg") else "image/png" for name in data}
    types["page.html"] = "text/html; charset=utf-8"
    urls = {name: image_server.serve(name, body, types[name]) for name, body in data.items()}
    urls["missing.png"] = image_server.url("missing.png")  # never added: 404
    image_server.stall(urls["slow.png"], 2, 1.0)  # both attempts of the first run time out after 0.5 s
    image_server.fail(urls["flaky.png"], 503)  # first attempt 503, the retry succeeds

    cat_manifest = root / "cat.txt"
    cat_manifest.write_text("# exported image search: cat\n\n" + "\n".join(urls[n] for n in (
        "good1.png", "good2.jpg", "good3.png", "corrupt.png", "page.html", "missing.png", "slow.png", "tiny.png",
        "copy-of-good1.png", "flaky.png", "good1.png")) + "\n")
    dog_manifest = root / "dog.csv"
    dog_manifest.write_text(f"url,title\n{urls['dog1.png']},a dog\n# a comment line\n"
                            f"{urls['good2.jpg']},same URL as a cat image\n"
                            f"{urls['dog-copy-of-good3.png']},same bytes as a cat image\n")
    params = WebParams(classes={"cat": {"kind": "urls", "path": str(cat_manifest)},
                                "dog": {"kind": "urls", "path": str(dog_manifest)}}, **FAST)
    cache, out = root / "cache", root / "out"
    report = collect_web_images(params, out, cache, progress=False)
    hits = {name: image_server.requests_for(url) for name, url in urls.items()}
    return UrlRun(image_server, urls, data, params, cache, out, report, hits)


def test_urls_accepted_set_is_first_occurrence_of_each_good_image(url_run: UrlRun) -> None:
    dataset = Dataset(url_run.out)
    by_source = {r.source: r for r in dataset}
    u = url_run.urls
    assert set(by_source) == {u["good1.png"], u["good2.jpg"], u["good3.png"], u["flaky.png"], u["dog1.png"]}
    assert url_run.report.accepted == {"cat": 4, "dog": 1}
    for name in ("good1.png", "good2.jpg", "good3.png", "flaky.png", "dog1.png"):
        record = by_source[u[name]]
        cls = "dog" if name.startswith("dog") else "cat"
        digest = sha256_bytes(url_run.data[name])
        assert record.tags == (cls,)
        assert record.id == f"{cls}-{digest[:16]}"
        assert record.split == "train"
        assert not record.has_mask and record.mask == ""
        assert (url_run.out / record.image).read_bytes() == url_run.data[name]  # kept byte for byte
        assert record.image.endswith(".jpg" if name.endswith(".jpg") else ".png")
    dataset.validate()


def test_urls_every_rejection_has_its_reason(url_run: UrlRun) -> None:
    u = url_run.urls
    reasons = {(r.cls, r.source): r.reason for r in url_run.report.rejected}
    assert len(url_run.report.rejected) == 9  # 7 of cat's 11 lines (2 repeat good1) and 2 of dog's 3 rows
    assert reasons[("cat", u["corrupt.png"])].startswith("corrupt image: cannot decode")
    assert reasons[("cat", u["page.html"])] == (
        "not an image: Content-Type 'text/html; charset=utf-8', expected image/*")
    assert reasons[("cat", u["missing.png"])] == "HTTP 404 Not Found"
    assert reasons[("cat", u["slow.png"])] == (
        "timeout: no answer within 0.5 s (2 attempt(s); tried again on the next run)")
    assert reasons[("cat", u["tiny.png"])] == "too small: 8x8 px, both sides must be >= 32"
    assert reasons[("cat", u["copy-of-good1.png"])] == f"duplicate of cat/{u['good1.png']}"
    assert reasons[("dog", u["good2.jpg"])] == f"duplicate of cat/{u['good2.jpg']}"
    assert reasons[("dog", u["dog-copy-of-good3.png"])] == f"duplicate of cat/{u['good3.png']}"
    repeated = [r for r in url_run.report.rejected if r.source == u["good1.png"]]
    assert [(r.cls, r.reason) for r in repeated] == [("cat", f"duplicate of cat/{u['good1.png']}")]


def test_urls_requests_retries_and_report_json(url_run: UrlRun, tmp_path: Path) -> None:
    hits = url_run.hits_after_first_run
    assert hits["good1.png"] == 1  # listed twice in one manifest, fetched once
    assert hits["good2.jpg"] == 2  # once per class (each class has its own cache)
    assert hits["slow.png"] == 2  # retries=1: two attempts, both timed out
    assert hits["flaky.png"] == 2  # 503, then 200
    assert hits["missing.png"] == hits["page.html"] == hits["corrupt.png"] == 1  # permanent: no retry

    doc = json.loads(url_run.report.to_json())
    assert doc["classes"] == {"cat": {"accepted": 4, "rejected": 7}, "dog": {"accepted": 1, "rejected": 2}}
    assert doc["rejected"] == [{"class": r.cls, "source": r.source, "reason": r.reason}
                               for r in url_run.report.rejected]
    path = url_run.report.write(tmp_path / "reports" / "web.json")
    assert json.loads(path.read_text()) == doc
    assert sorted(p.name for p in path.parent.iterdir()) == ["web.json"]  # atomic: no temporary left

    index = json.loads((url_run.cache / "cat" / "index.json").read_text())
    assert url_run.urls["slow.png"] not in index  # transient: not recorded, fetched again next run
    assert index[url_run.urls["missing.png"]] == {"status": "rejected", "reason": "HTTP 404 Not Found"}
    good1 = index[url_run.urls["good1.png"]]
    assert good1["status"] == "ok" and (good1["width"], good1["height"]) == (40, 36)
    assert (url_run.cache / "cat" / f"{good1['sha256']}.png").read_bytes() == url_run.data["good1.png"]


def test_urls_rerun_fetches_only_the_timed_out_url(url_run: UrlRun) -> None:
    before = {name: url_run.server.requests_for(url) for name, url in url_run.urls.items()}
    report = collect_web_images(url_run.params, url_run.out.with_name("out2"), url_run.cache, progress=False)
    after = {name: url_run.server.requests_for(url) for name, url in url_run.urls.items()}
    assert {n: after[n] - before[n] for n in after if after[n] != before[n]} == {"slow.png": 1}
    assert report.accepted == {"cat": 5, "dog": 1}  # the stall is over: slow.png accepted now
    assert {(r.cls, r.source) for r in report.rejected} == (
        {(r.cls, r.source) for r in url_run.report.rejected} - {("cat", url_run.urls["slow.png"])})
    Dataset(url_run.out.with_name("out2")).validate()


def test_urls_max_images_per_class_keeps_the_first_accepted(url_run: UrlRun, tmp_path: Path) -> None:
    u = url_run.urls
    manifest = tmp_path / "owl.txt"
    manifest.write_text("\n".join([u["tiny.png"], u["good3.png"], u["page.html"], u["dog1.png"], u["good1.png"]]))
    params = WebParams(classes={"owl": {"kind": "urls", "path": str(manifest)}}, max_images_per_class=2, **FAST)
    report = collect_web_images(params, tmp_path / "out", tmp_path / "cache", progress=False)
    assert report.accepted == {"owl": 2}
    assert {r.source for r in Dataset(tmp_path / "out")} == {u["good3.png"], u["dog1.png"]}
    assert [(r.source, r.reason.split(":")[0]) for r in report.rejected] == [
        (u["tiny.png"], "too small"), (u["page.html"], "not an image")]  # nothing reported after the cap


# --- local folders ------------------------------------------------------------------------------------------

def _local_folder(root: Path) -> dict[str, bytes]:
    files = {
        "a.png": encode(40, 40, 11), "sub/b.jpg": encode(36, 48, 12, "JPEG"), "sub/C.PNG": encode(32, 32, 13),
        "d.bmp": encode(34, 35, 14, "BMP"), "broken.png": b"not an image at all",
        "tiny.webp": encode(10, 40, 15, "WEBP"), "notes.txt": b"not listed", ".hidden/x.png": encode(40, 40, 16),
    }
    files["sub/again.png"] = files["a.png"]
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return files


def test_local_folder_class(tmp_path: Path) -> None:
    folder = tmp_path / "fish"
    files = _local_folder(folder)
    assert [p.relative_to(folder).as_posix() for p in list_local_images(folder)] == [
        "a.png", "broken.png", "d.bmp", "sub/C.PNG", "sub/again.png", "sub/b.jpg", "tiny.webp"]
    params = WebParams(classes={"fish": {"kind": "local", "path": str(folder)}}, **FAST)
    report = collect_web_images(params, tmp_path / "out", tmp_path / "cache", progress=False)
    assert report.accepted == {"fish": 4}
    assert {(Path(r.source).name, r.reason.split(":")[0]) for r in report.rejected} == {
        ("broken.png", "corrupt image"), ("again.png", f"duplicate of fish/{folder / 'a.png'}"),
        ("tiny.webp", "too small")}
    dataset = Dataset(tmp_path / "out")
    dataset.validate()
    by_name = {Path(r.source).name: r for r in dataset}
    assert set(by_name) == {"a.png", "b.jpg", "C.PNG", "d.bmp"}
    assert (tmp_path / "out" / by_name["b.jpg"].image).read_bytes() == files["sub/b.jpg"]
    bmp = by_name["d.bmp"]  # not png/jpg: re-encoded as PNG, same pixels
    assert bmp.image.endswith(".png") and bmp.id == f"fish-{sha256_bytes(files['d.bmp'])[:16]}"
    assert np.array_equal(dataset.image(bmp), np.asarray(Image.open(io.BytesIO(files["d.bmp"])).convert("RGB")))
    assert all(r.tags == ("fish",) and not r.has_mask for r in dataset)
    assert not (tmp_path / "cache" / "fish").exists()  # local files are read in place


def test_local_cap_and_val_fraction_by_content_hash(tmp_path: Path) -> None:
    folder = tmp_path / "owl"
    bodies = {f"{k}.png": encode(32, 32, 20 + k) for k in range(5)}
    folder.mkdir()
    for name, body in bodies.items():
        (folder / name).write_bytes(body)
    params = WebParams(classes={"owl": {"kind": "local", "path": str(folder)}}, max_images_per_class=4,
                       val_fraction=0.25, **FAST)
    report = collect_web_images(params, tmp_path / "out", tmp_path / "cache", progress=False)
    assert report.accepted == {"owl": 4} and report.rejected == []
    dataset = Dataset(tmp_path / "out")
    assert sorted(Path(r.source).name for r in dataset) == ["0.png", "1.png", "2.png", "3.png"]  # first 4
    # n_val = floor(0.25 * 4 + 0.5) = floor(1.5) = 1: the image whose sha256 sorts first among the four
    first = min(sha256_bytes(bodies[f"{k}.png"]) for k in range(4))
    assert [r.sha256 for r in dataset.split("val")] == [first]
    assert len(dataset.split("train")) == 3


# --- S3 -----------------------------------------------------------------------------------------------------

def test_s3_prefix_class_and_changed_object(s3_endpoint: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fetched: list[str] = []  # the key of every GetObject call
    real_client = web.s3_client

    def counting_client(*args: object, **kwargs: object) -> object:
        client = real_client(*args, **kwargs)
        client.meta.events.register("provide-client-params.s3.GetObject",
                                    lambda params, **_: fetched.append(params["Key"]))
        return client

    monkeypatch.setattr(web, "s3_client", counting_client)
    one, two, new_one = encode(40, 40, 31), encode(44, 33, 32, "JPEG"), encode(40, 40, 33)
    put_s3_object(s3_endpoint, "web-images", "bird/one.png", one)
    put_s3_object(s3_endpoint, "web-images", "bird/sub/two.jpg", two)
    put_s3_object(s3_endpoint, "web-images", "bird/bad.png", b"garbage bytes")
    put_s3_object(s3_endpoint, "web-images", "bird/readme.txt", b"not an image name: not listed")
    put_s3_object(s3_endpoint, "web-images", "other/three.png", encode(40, 40, 34))  # outside the prefix
    params = WebParams(classes={"bird": {"kind": "s3", "path": "s3://web-images/bird/"}}, **FAST)
    report = collect_web_images(params, tmp_path / "out", tmp_path / "cache", progress=False)  # endpoint: env
    assert report.accepted == {"bird": 2}
    assert [(r.source, r.reason.split(":")[0]) for r in report.rejected] == [
        ("s3://web-images/bird/bad.png", "corrupt image")]
    dataset = Dataset(tmp_path / "out")
    dataset.validate()
    assert {r.source: (tmp_path / "out" / r.image).read_bytes() for r in dataset} == {
        "s3://web-images/bird/one.png": one, "s3://web-images/bird/sub/two.jpg": two}

    assert sorted(fetched) == ["bird/bad.png", "bird/one.png", "bird/sub/two.jpg"]

    put_s3_object(s3_endpoint, "web-images", "bird/one.png", new_one)  # new ETag: fetched again
    fetched.clear()
    collect_web_images(params, tmp_path / "out", tmp_path / "cache", progress=False)
    assert fetched == ["bird/one.png"]  # two.jpg cached, bad.png rejected for good
    assert {r.source: (tmp_path / "out" / r.image).read_bytes() for r in Dataset(tmp_path / "out")} == {
        "s3://web-images/bird/one.png": new_one, "s3://web-images/bird/sub/two.jpg": two}


def test_s3_unreachable_endpoint_fails_fast_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_aws_env(monkeypatch)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    params = WebParams(classes={"bird": {"kind": "s3", "path": "s3://web-images/bird/"}}, **FAST)
    started = time.monotonic()
    with pytest.raises(SourceError, match=f"cannot list s3://web-images/bird/ at S3 endpoint {endpoint}"):
        collect_web_images(params, tmp_path / "out", tmp_path / "cache", s3_endpoint_url=endpoint, progress=False)
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out").exists()


# --- synthetic ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "web"
    with DatasetWriter(root) as writer:
        for sample in generate_web(["sun", "leaf"], per_class=2, negatives=1, confuser_prob=0.0,
                                   test_per_class=1, image_size=32, seed=0):
            writer.add(sample)
    return root


def test_synthetic_classes_copy_images_and_masks(synthetic_set: Path, tmp_path: Path) -> None:
    params = WebParams(classes={"sun": {"kind": "synthetic"}, "none": {"kind": "synthetic"}}, **FAST)
    report = collect_web_images(params, tmp_path / "out", tmp_path / "cache", synthetic=synthetic_set,
                                progress=False)
    assert report.accepted == {"sun": 3, "none": 1} and report.rejected == []
    source, out = Dataset(synthetic_set), Dataset(tmp_path / "out")
    out.validate(require_masks=True)
    assert {(r.id, r.split, r.tags) for r in out} == {
        ("web-sun-train-00000", "train", ("sun",)), ("web-sun-train-00001", "train", ("sun",)),
        ("web-sun-test-00000", "test", ("sun",)), ("web-none-train-00000", "train", ("none",))}
    for record in out:
        original = source[record.id]
        assert (out.root / record.image).read_bytes() == (source.root / original.image).read_bytes()
        assert np.array_equal(out.mask(record), source.mask(original))


def test_synthetic_needs_the_data_set_and_the_tag(synthetic_set: Path, tmp_path: Path) -> None:
    params = WebParams(classes={"sun": {"kind": "synthetic"}}, **FAST)
    with pytest.raises(ValueError, match="synthetic must be the synthetic web data set's folder"):
        collect_web_images(params, tmp_path / "out", tmp_path / "cache", progress=False)
    params = WebParams(classes={"tree": {"kind": "synthetic"}}, **FAST)
    with pytest.raises(ValueError, match="no image tagged 'tree'.*'leaf', 'none', 'sun'"):
        collect_web_images(params, tmp_path / "out", tmp_path / "cache", synthetic=synthetic_set, progress=False)
    with pytest.raises(TypeError, match=r"params must be the validated web params \(lofiseg.config.WebParams\), got dict"):
        collect_web_images({"classes": {}}, tmp_path / "out", tmp_path / "cache")  # type: ignore[arg-type]


# --- params, manifests, retries -----------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "message"), [
    ({"classes": {"cat": {"kind": "urls", "path": "m.txt"}}, "colour": 1}, "colour\n  Extra inputs are not permitted"),
    ({"classes": {"cat": {"kind": "urls", "path": "m.txt", "url": "x"}}}, "url\n  Extra inputs are not permitted"),
    ({"classes": {"cat": {"kind": "urls"}}}, "kind 'urls' needs 'path' \\(a URL manifest file\\)"),
    ({"classes": {"cat": {"kind": "local"}}}, "kind 'local' needs 'path' \\(a folder\\)"),
    ({"classes": {"cat": {"kind": "s3", "path": "bucket/cats"}}}, "path must be s3://bucket/prefix"),
    ({"classes": {"cat": {"kind": "synthetic", "path": "x"}}}, "kind 'synthetic' takes no 'path'"),
    ({"classes": {"cat": {"kind": "flickr", "path": "x"}}}, "Input should be 'synthetic', 'local', 's3', 'urls' or 'dataset'"),
    ({"classes": {"cat": {"kind": "dataset", "name": "msrc"}}}, "kind 'dataset' takes 'name' .* and 'tag'"),
    ({"classes": {"cat": {"kind": "local", "path": "x", "tag": "cat"}}}, "\\['tag'\\] go with kind 'dataset' only"),
    ({"classes": {"Cat!": {"kind": "synthetic"}}}, "class name 'Cat!' must match"),
    ({"classes": {}}, "classes\n  Dictionary should have at least 1 item"),
    ({"classes": {"cat": {"kind": "synthetic"}}, "workers": 0}, "workers\n  Input should be greater than or equal to 1"),
    ({"classes": {"cat": {"kind": "synthetic"}}, "workers": 65}, "workers\n  Input should be less than or equal to 64"),
    ({"classes": {"cat": {"kind": "synthetic"}}, "val_fraction": 1.0}, "val_fraction\n  Input should be less than 1"),
])
def test_bad_params_are_clear_errors(raw: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WebParams.model_validate(raw)


def test_good_params_defaults() -> None:
    params = WebParams.model_validate({"classes": {"cat": {"kind": "urls", "path": "cat.csv"},
                                                   "sun": {"kind": "synthetic"}}})
    assert params.classes["sun"] == WebClassSource(kind="synthetic")
    assert (params.workers, params.retries, params.backoff_seconds, params.timeout_seconds, params.min_side,
            params.max_images_per_class, params.val_fraction) == (8, 3, 0.5, 10.0, 32, None, 0.0)


def test_url_manifests_text_and_csv(tmp_path: Path) -> None:
    text = tmp_path / "m.txt"
    text.write_text("# search: cats\n\nhttp://a/1.jpg\n  https://b/2.png?x=1#frag  \n# end\n")
    assert read_url_manifest(text) == ["http://a/1.jpg", "https://b/2.png?x=1#frag"]
    table = tmp_path / "m.csv"
    table.write_text("# exported\ntitle,URL\n\"a, cat\",http://a/1.jpg\n# skipped\nno url,\n")
    assert read_url_manifest(table) == ["http://a/1.jpg"]
    bad = tmp_path / "bad.csv"
    bad.write_text("title,link\nx,http://a/1.jpg\n")
    with pytest.raises(ValueError, match=r"needs a 'url' column, got columns \['title', 'link'\]"):
        read_url_manifest(bad)
    with pytest.raises(ValueError, match="URL manifest .*nowhere.txt does not exist"):
        read_url_manifest(tmp_path / "nowhere.txt")


def test_retries_back_off_exponentially(monkeypatch: pytest.MonkeyPatch) -> None:
    # backoff 0.5 s: retry k waits 0.5 * 2**(k-1) -> 0.5, 1.0, 2.0
    assert retry_delays(3, 0.5) == [0.5, 1.0, 2.0]
    assert retry_delays(2, 100.0) == [100.0, 120.0]  # 200 s capped at 120 s
    slept: list[float] = []
    monkeypatch.setattr(transfer, "_sleep", slept.append)
    outcomes = iter([transfer.TransientError("HTTP 503"), transfer.TransientError("HTTP 503"), b"ok"])

    def attempt() -> bytes:
        result = next(outcomes)
        if isinstance(result, Exception):
            raise result
        return result

    assert transfer.with_retries(attempt, 3, 0.5, what="http://h/a.png") == b"ok"
    assert slept == [0.5, 1.0]
    with pytest.raises(transfer.RetriesExhausted, match=r"^HTTP 503 \(3 attempt\(s\)\)$") as info:
        transfer.with_retries(lambda: (_ for _ in ()).throw(transfer.TransientError("HTTP 503")), 2, 0.0, what="x")
    assert info.value.attempts == 3 and str(info.value.last) == "HTTP 503"


def test_unsupported_url_scheme_is_rejected_without_request() -> None:
    with pytest.raises(transfer.PermanentError, match="unsupported URL: need http:// or https://"):
        web.http_get(None, "ftp://example.org/a.png", 1.0)


def test_decode_check_reads_format_and_size() -> None:
    assert web.decode_check(encode(7, 5, 0, "JPEG")) == ("jpg", 7, 5)
    assert web.decode_check(encode(3, 4, 0, "WEBP")) == ("webp", 3, 4)
    truncated = encode(40, 40, 0)[:-30]
    with pytest.raises(transfer.PermanentError, match="^corrupt image: cannot decode"):
        web.decode_check(truncated)
