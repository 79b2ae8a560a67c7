"""commands.predict on bundle folders (no MLflow: the registry URI path is tested in test_registry.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from commands import predict
from lofiseg.data.format import read_image, read_mask
from lofiseg.models.bundle import load_bundle, save_bundle
from lofiseg.models.factory import build_model
from lofiseg.viz.images import save_png
from stages.cli import run

CPU = torch.device("cpu")


class RedLogits(nn.Module):
    """3 channels: logits (0.5 - r, r - 0.5, -1), r the red value in [0, 1]: argmax is 1 where r > 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x[:, :1]
        return torch.cat([0.5 - r, r - 0.5, -torch.ones_like(r)], dim=1)


class RedProbability(nn.Module):
    """1 channel, like ChannelSelected: the saliency probability is the red value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def ramp(height: int, width: int) -> np.ndarray:
    """Red grows along x: column j has red round(255 j / (width - 1)); green and blue are 0."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.rint(np.linspace(0, 255, width))[None, :]
    return image


def test_labels_argmax_and_saliency_threshold_by_hand() -> None:
    image = ramp(3, 6)  # red per column: 0, 51, 102, 153, 204, 255
    # argmax: r > 0.5 <=> red > 127.5 -> columns 3..5; threshold: r >= 0.5 -> the same columns
    expected = np.tile(np.array([0, 0, 0, 1, 1, 1], np.uint8), (3, 1))
    np.testing.assert_array_equal(predict.predict_labels(RedLogits(), image, None, CPU), expected)
    np.testing.assert_array_equal(predict.predict_labels(RedProbability(), image, None, CPU), expected)
    resized = predict.predict_labels(RedLogits(), ramp(10, 30), 16, CPU)  # model at 16 px, labels at 10 x 30
    assert resized.shape == (10, 30) and resized.dtype == np.uint8
    assert (resized[:, :12] == 0).all() and (resized[:, 18:] == 1).all()  # away from the 0.5 crossing


class ShapeRecorder(RedLogits):
    """RedLogits that records the shape of every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        return super().forward(x)


def test_the_model_sees_the_shorter_side_at_the_size_and_the_aspect_kept() -> None:
    model = ShapeRecorder()
    labels = predict.predict_labels(model, ramp(40, 56), 32, CPU)
    assert model.seen == [(32, 45)]  # 56 * 32 / 40 = 44.8 -> 45: not squashed to 32 x 32
    assert labels.shape == (40, 56)
    predict.predict_labels(model, ramp(50, 30), 16, CPU)  # portrait: 50 * 16 / 30 = 26.7 -> 27
    assert model.seen[-1] == (27, 16)


def test_test_time_scales_and_flip_average_probabilities_of_either_kind() -> None:
    image = ramp(3, 6)  # pointwise models on a flat-in-y ramp: mirroring in and back changes nothing
    expected = np.tile(np.array([0, 0, 0, 1, 1, 1], np.uint8), (3, 1))
    for model in (RedLogits(), RedProbability()):  # a 1-channel probability must not be softmaxed (all 1)
        np.testing.assert_array_equal(predict.predict_labels(model, image, None, CPU, flip=True), expected)


def test_predict_with_test_time_scales(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_bundle(tmp_path / "bundle/model.pt", build_model(arch="tiny_unet", num_classes=3, width=4),
                {"image_size": 32})
    images = make_images(tmp_path / "images", corrupt=False)
    argv = ["--model", str(tmp_path / "bundle"), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o")]
    predict.main([*argv, "--scales", "1", "1.5", "--flip"])
    loaded, _ = load_bundle(tmp_path / "bundle/model.pt")
    for stem, image in images.items():
        np.testing.assert_array_equal(read_mask(tmp_path / "o" / f"{stem}.png"),
                                      predict.predict_labels(loaded, image, 32, CPU, (1.0, 1.5), True))
    summary = json.loads((tmp_path / "o/predict.json").read_text())
    assert (summary["scales"], summary["flip"]) == ([1.0, 1.5], True)
    with pytest.raises(SystemExit, match=r"--scales: test-time scales must be positive factors, got \[1.0, 0.0\]"):
        predict.main([*argv, "--scales", "1", "0"])


def make_images(folder: Path, corrupt: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = {"a": rng.integers(0, 256, (20, 28, 3), dtype=np.uint8),
              "b": rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)}
    for stem, image in images.items():
        save_png(folder / f"{stem}.png", image)
    if corrupt:
        (folder / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image: ignored")
    return images


def test_predict_folder_with_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = build_model(arch="tiny_unet", num_classes=3, width=4)
    save_bundle(tmp_path / "bundle/model.pt", model, {"image_size": 32})
    images = make_images(tmp_path / "images", corrupt=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous results")
    argv = ["--model", str(tmp_path / "bundle"), "--images", str(tmp_path / "images"), "--out", str(out)]

    assert run(predict.main, argv) == 2  # the corrupt image stops the run ...
    assert "c.jpg" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # ... and the folder is as it was
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left behind

    (tmp_path / "images/c.jpg").unlink()
    assert run(predict.main, argv) == 0
    loaded, _ = load_bundle(tmp_path / "bundle/model.pt")
    for stem, image in images.items():
        mask = read_mask(out / f"{stem}.png")
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 1, 2}
        np.testing.assert_array_equal(mask, predict.predict_labels(loaded, image, 32, CPU))  # training size
        assert read_image(out / "preview" / f"{stem}.png").shape == image.shape
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "predict.json", "preview"]
    summary = json.loads((out / "predict.json").read_text())
    assert (summary["images"], summary["size"]) == (2, 32)


def test_saliency_bundle_gives_the_salient_channel(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model(arch="tiny_unet", num_classes=2, width=4)
    save_bundle(tmp_path / "sal/model.pt", model, {"task": "saliency", "channel": 0, "image_size": 32})
    images = make_images(tmp_path / "images", corrupt=False)
    predict.main(["--model", str(tmp_path / "sal"), "--images", str(tmp_path / "images"),
                  "--out", str(tmp_path / "out"), "--size", "0"])  # 0: each image at its own size
    model.eval()
    for stem, image in images.items():
        x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            salient = model(x)[0].argmax(dim=0) == 0  # channel 0 is the salient one: p0 >= 0.5 <=> argmax 0
        np.testing.assert_array_equal(read_mask(tmp_path / "out" / f"{stem}.png"), salient.numpy())


def test_bad_folders_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        predict.list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        predict.list_images(tmp_path / "absent")
    save_png(tmp_path / "twins/x.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "twins/x.jpg", np.zeros((4, 4, 3), np.uint8))  # PNG bytes, but the name counts
    with pytest.raises(SystemExit, match="share the stem 'x'"):
        predict.main(["--model", "unused", "--images", str(tmp_path / "twins"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="must not be the --images folder"):
        predict.main(["--model", "m", "--images", str(tmp_path / "twins"), "--out", str(tmp_path / "twins")])
