"""The registered model is the model the gate scored, and serves without lofiseg: lofiseg.infer.served,
Tracker.log_served_model, and the real ``mlflow models serve`` in an environment where ``import lofiseg`` fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from lofiseg.data.format import read_mask
from lofiseg.infer.predict import multi_scale_probs
from lofiseg.infer.served import export_segmenter
from lofiseg.models.bundle import save_bundle
from lofiseg.models.channel import ChannelSelected
from lofiseg.models.factory import build_model
from lofiseg.track import models as track_models
from lofiseg.track.registry import Registry
from lofiseg.viz.images import save_png
from tests.servers import closed_port
from tests.test_registry import register, registry, store  # noqa: F401  (fixtures)

SCALES, FLIP = [1.0, 1.5, 0.5], True
BLOCK_LOFISEG = '''import sys


class BlockLofiseg:
    """sitecustomize of the serving test: the editable install of lofiseg is not importable."""

    def find_spec(self, name, path=None, target=None):
        if name == "lofiseg" or name.startswith("lofiseg."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the serving test)", name=name)
        return None


sys.meta_path.insert(0, BlockLofiseg())
'''


def image(height: int = 27, width: int = 41, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def varied_model(classes: int, seed: int = 0) -> torch.nn.Module:
    """A tiny U-Net whose argmax changes across an image (the head scaled up: a random init is nearly flat)."""
    torch.manual_seed(seed)
    model = build_model(arch="tiny_unet", num_classes=classes, width=4).eval()
    with torch.no_grad():
        model.net.head.weight.mul_(30.0)
    return model


def test_served_deeplab_predicts_the_masks_of_commands_predict(tmp_path: Path) -> None:
    from commands import predict

    model = varied_model(3)
    served = export_segmenter(model, 32, SCALES, FLIP)
    picture = image()
    labels = served(torch.from_numpy(picture)[None])
    assert labels.dtype == torch.uint8 and labels.shape == (1, 27, 41)
    expected = predict.predict_labels(model, picture, 32, torch.device("cpu"), SCALES, FLIP)
    assert len(np.unique(expected)) >= 2  # not one flat class: a real comparison
    np.testing.assert_array_equal(labels[0].numpy(), expected)
    as_float = served(torch.from_numpy(picture)[None].float() / 255)  # float RGB in [0, 1]: the same image
    np.testing.assert_array_equal(as_float.numpy(), labels.numpy())
    one_pass = predict.predict_labels(model, picture, 32, torch.device("cpu"))  # the bare network differs
    assert (one_pass != expected).any()
    with pytest.raises(torch.jit.Error, match=r"\(N, H, W, 3\)"):
        served(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_served_saliency_is_the_channel_probability(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = ChannelSelected(build_model(arch="tiny_unet", num_classes=2, width=4), 0).eval()
    served = export_segmenter(model, 0)  # 0: each image at its own size
    picture = torch.from_numpy(image(24, 40))[None]
    probability = served(picture)
    x = picture.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = multi_scale_probs(model, x, to_probs=lambda p: p)[:, 0]  # CAS Sec. 4.2: channel 0's softmax
    assert probability.dtype == torch.float32
    torch.testing.assert_close(probability, expected)


def test_export_refuses_a_model_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="SegmentationModel"):
        export_segmenter(torch.nn.Conv2d(3, 2, 1), 32)


def free_port() -> int:
    return closed_port()  # bound once and released: free for the server


def wait_until_up(process: subprocess.Popen, url: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise AssertionError(f"mlflow models serve exited with {process.returncode}:\n{output[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer {url}/ping within {deadline_s:.0f} s")


def test_champion_serves_without_lofiseg(registry: Registry, store: str, tmp_path: Path) -> None:  # noqa: F811
    from commands import predict

    name = "served-deeplab"
    bundle = tmp_path / "bundle"
    save_bundle(bundle / "model.pt", varied_model(3), {"image_size": 32})  # tiny_unet, trained at 32 px
    result = register(registry, name, bundle, 0.5, scales=SCALES, flip=FLIP)
    assert result.champion == "1"
    champion = track_models.load_served(f"models:/{name}@champion")
    assert (list(champion.scales), bool(champion.flip), int(champion.image_size)) == (SCALES, FLIP, 32)

    picture = image(40, 56, seed=3)
    save_png(tmp_path / "images/x.png", picture)
    predict.main(["--model", str(bundle), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "masks"),
                  "--scales", *map(str, SCALES), "--flip"])
    expected = read_mask(tmp_path / "masks/x.png")
    assert len(np.unique(expected)) >= 2

    isolated = tmp_path / "isolated"  # the server's cwd and PYTHONPATH: no lofiseg there, and the finder of
    isolated.mkdir()  # the editable install is blocked by a sitecustomize
    (isolated / "sitecustomize.py").write_text(BLOCK_LOFISEG)
    venv_bin = str(Path(sys.executable).parent)  # as an activated venv: MLflow runs `uvicorn` from PATH
    env = {**os.environ, "PATH": os.pathsep.join([venv_bin, os.environ.get("PATH", "")]),
           "PYTHONPATH": str(isolated), "PYTHONNOUSERSITE": "1", "MLFLOW_TRACKING_URI": store,
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    hidden = subprocess.run([sys.executable, "-c", "import lofiseg"], cwd=isolated, env=env, capture_output=True,
                            text=True, timeout=60)
    assert hidden.returncode != 0 and "No module named 'lofiseg'" in hidden.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=isolated, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(server, url, deadline_s=180)
        body = json.dumps({"inputs": picture[None].tolist()}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.loads(response.read())["predictions"])
    finally:
        stop_server(server)
    assert served.shape == (1, 40, 56)
    np.testing.assert_array_equal(served[0], expected)


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server and its workers (its own process group): SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()
