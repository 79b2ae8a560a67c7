"""Run a segmentation model on a folder of images and write one label mask per image.

    python -m commands.predict --model models:/lofiseg-deeplab@champion --images photos/ --out masks/
    python -m commands.predict --model models/deeplab/pseudo --images photos/ --out masks/ --size 128

``--model`` is a registry URI (``models:/<name>@<alias>``, ``models:/<name>/<version>``, resolved in
``MLFLOW_TRACKING_URI``, default ``./mlflow.db``) or a bundle folder holding model.pt. A registered model
brings its test-time ``--scales`` / ``--flip`` (those it was evaluated with: ``mlflow models serve`` predicts
the same masks); a bundle defaults to one plain pass. Every image of
``--images`` (jpg, jpeg, png, bmp, tif, tiff; not recursive) is resized so its shorter side is ``--size``
(default: the training image size recorded with the model; 0 keeps each image's own size; the aspect ratio is
kept, as in evaluation), run whole through the model (padded to its stride inside), and its
scores are resized back to the original size before the decision:

- a multi-class model ((N, M, H, W) logits, M >= 2): the label is the argmax channel (0 = background);
- a saliency model (ChannelSelected, (N, 1, H, W) probability of the salient channel, CAS Sec. 4.2, which is
  also what a saliency bundle becomes): 1 where the probability is >= 0.5, else 0. For a two-class softmax this
  is the argmax between salient and non-salient.

Written into ``--out``: ``<stem>.png`` (uint8 label map, original size), ``preview/<stem>.png`` (the labels'
colours over the image) and ``predict.json`` (model, size, rule). The folder is replaced as a whole only when
every image succeeded: a corrupt image stops the run with its name, and ``--out`` is left as it was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lofiseg.atomic import atomic_dir, atomic_write_json
from lofiseg.cli import run
from lofiseg.data.format import read_image
from lofiseg.data.layouts import IMAGE_SUFFIXES
from lofiseg.data.loading import shorter_side_shape
from lofiseg.infer.predict import check_scales, multi_scale_probs
from lofiseg.track.models import load_model as load_logged
from lofiseg.track.registry import TAG_IMAGE_SIZE, Registry, RegistryError, load_registrable
from lofiseg.train.loop import resolve_device
from lofiseg.viz.images import overlay, save_png

SALIENCY_THRESHOLD = 0.5


class Inference(NamedTuple):
    """Test-time inference: the input resized by each of ``scales``, and mirrored with ``flip``."""

    scales: list[float]
    flip: bool


def list_images(folder: Path) -> list[Path]:
    """The images directly in ``folder``, sorted; two files with one stem would write one mask: an error."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--images: {folder} is not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"--images: {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise ValueError(f"--images: {stems[path.stem].name} and {path.name} share the stem {path.stem!r}: "
                             f"their masks would overwrite each other")
        stems[path.stem] = path
    return images


def load_model(spec: str) -> tuple[torch.nn.Module, int | None, str, Inference | None]:
    """(model in eval mode, training image size if recorded, description, the test-time scales and flip it
    was registered with or None) of a registry URI or bundle."""
    if "://" in spec or spec.startswith("models:/") or spec.startswith("runs:/"):
        registry = Registry()  # checks the store: an unreachable one fails fast and says how to fix it
        version = registry.resolve(spec)
        size = int(version.tags[TAG_IMAGE_SIZE]) if version and TAG_IMAGE_SIZE in version.tags else None
        described = f"{spec} (version {version.version})" if version else spec
        model = load_logged(spec, tracking_uri=registry.uri)
        served = getattr(model, "served", None)  # a served segmenter (OnePass): its test-time inference
        test_time = Inference(list(served.scales), bool(served.flip)) if served is not None else None
        return model, size, described, test_time
    model, info = load_registrable(spec)
    size = info.get("image_size")
    return model.eval(), int(size) if size else None, spec, None


@torch.no_grad()
def scores_to_probs(scores: torch.Tensor) -> torch.Tensor:
    """A model's output as probabilities: softmax of M >= 2 logit channels; one channel already is one."""
    if scores.ndim != 4 or scores.shape[0] != 1:
        raise ValueError(f"model: expected a (1, M, H, W) output, got shape {tuple(scores.shape)}")
    return scores if scores.shape[1] == 1 else scores.softmax(dim=1)


def predict_labels(model: torch.nn.Module, image: np.ndarray, size: int | None, device: torch.device,
                   scales: Sequence[float] = (1.0,), flip: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 image -> (H, W) uint8 labels: argmax of M >= 2 channels, or saliency >= 0.5 of one;
    with ``scales`` / ``flip`` the probabilities are averaged as in evaluation (``multi_scale_probs``)."""
    height, width = image.shape[:2]
    x = torch.tensor(image, device=device).permute(2, 0, 1)[None].float().div_(255.0)
    if size:  # the shorter side to ``size``, as in evaluation
        x = F.interpolate(x, size=shorter_side_shape(height, width, size), mode="bilinear", align_corners=False)
    scores = multi_scale_probs(model, x, scales, flip, to_probs=scores_to_probs)
    if scores.shape[-2:] != (height, width):
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    channels = scores.shape[1]
    if channels == 1:
        labels = (scores[0, 0] >= SALIENCY_THRESHOLD).to(torch.uint8)
    elif channels <= 255:  # label 255 means "ignore" in lofiseg masks
        labels = scores[0].argmax(dim=0).to(torch.uint8)
    else:
        raise ValueError(f"model: {channels} output channels do not fit a uint8 label map (at most 255)")
    return labels.cpu().numpy()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="models:/<name>@<alias> | models:/<name>/<version> | "
                                                       "a bundle folder holding model.pt")
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (replaced as a whole)")
    parser.add_argument("--size", type=int, default=None,
                        help="model input side (default: the training size; 0: each image's own size)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="average over the input resized by each factor, as evaluate.semantic_scales "
                             "(default: the registered model's, else 1)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="also average over mirror images (evaluate.semantic_flip; default: the "
                             "registered model's, else no)")
    args = parser.parse_args(argv)
    try:
        check_scales(args.scales or [1.0])
    except ValueError as err:
        raise SystemExit(f"error: --scales: {err}") from None
    if args.size is not None and args.size < 0:
        raise SystemExit(f"error: --size must be >= 0, got {args.size}")
    if args.out.resolve() == args.images.resolve():
        raise SystemExit(f"error: --out {args.out} must not be the --images folder (it is replaced as a whole)")
    try:
        images = list_images(args.images)
        device = resolve_device(args.device)
        model, trained_size, described, test_time = load_model(args.model)
    except (RegistryError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    test_time = test_time or Inference([1.0], False)
    scales = args.scales or test_time.scales
    flip = test_time.flip if args.flip is None else args.flip
    size = trained_size if args.size is None else (args.size or None)
    model = model.to(device).eval()

    summary: dict[str, Any] = {"model": described, "size": size, "scales": scales, "flip": flip,
                               "images": len(images),
                               "rule": "1-channel output: probability >= 0.5 -> 1, else 0; "
                                       "M >= 2 channels: argmax"}
    with atomic_dir(args.out) as tmp:
        for path in tqdm(images, desc="predict", unit="img", file=sys.stderr):
            image = read_image(path)  # a corrupt file raises naming it; the folder is then left as it was
            labels = predict_labels(model, image, size, device, scales, flip)
            save_png(tmp / f"{path.stem}.png", labels)
            save_png(tmp / "preview" / f"{path.stem}.png", overlay(image, labels))
        atomic_write_json(tmp / "predict.json", summary)
    print(f"{len(images)} masks from {described} written to {args.out}")


if __name__ == "__main__":
    sys.exit(run(main))
