"""Real photographs are not squashed: shorter side to the load size, random crops in training, whole images
(their extent only) in prediction, scored at the image's own size (lofiseg.data.loading, lofiseg.infer)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lofiseg.data.format import Dataset, DatasetWriter, Sample
from lofiseg.data.loading import iterate_batches, load_split, resized_shape, shorter_side_shape
from lofiseg.infer.predict import predict_native, predict_probs
from lofiseg.infer.regions import RegionSettings, segment_images
from lofiseg.train.loop import epoch_generator


def coordinates(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Image whose red is 4 x row and green 4 x column (+ 1: 0 is padding); mask = column."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([4 * rows + 1, 4 * cols + 1, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    return image, cols.astype(np.uint8)


def write_set(root: Path, samples: list[tuple[str, np.ndarray, np.ndarray]]) -> Dataset:
    with DatasetWriter(root) as writer:
        for sample_id, image, mask in samples:
            writer.add(Sample(sample_id, image, mask, split="train"))
    return Dataset(root)


def test_shorter_side_keeps_the_aspect_ratio_and_square_images_stay_as_before(tmp_path: Path) -> None:
    assert resized_shape(40, 64, 32, "shorter_side") == (32, 51)  # 64 * 32 / 40 = 51.2
    assert resized_shape(64, 40, 32, "shorter_side") == (51, 32)
    assert resized_shape(40, 64, 32, "square") == (32, 32)
    wide, _ = coordinates(40, 64)
    data = write_set(tmp_path / "d", [("a_wide", wide, np.zeros((40, 64), np.uint8)),
                                      ("b_tall", wide.transpose(1, 0, 2).copy(), np.zeros((64, 40), np.uint8))])
    split = load_split(data, list(data), 32)
    assert split.images.shape == (2, 3, 51, 51) and split.extents.tolist() == [[32, 51], [51, 32]]
    assert (split.images[0, :, 32:] == 0).all() and (split.masks[0, 32:] == 255).all()  # padding: ignore
    assert split.crop_size == 32
    square = load_split(data, list(data), 32, resize="square")
    assert square.images.shape == (2, 3, 32, 32) and square.extents is None
    same = write_set(tmp_path / "s", [("a", wide[:32, :32], np.zeros((32, 32), np.uint8))])
    for mode in ("square", "shorter_side"):
        plain = load_split(same, list(same), 32, resize=mode)
        assert plain.extents is None and torch.equal(plain.images[0].permute(1, 2, 0), torch.from_numpy(wide[:32, :32]))


def test_shorter_side_rounds_half_up_and_the_served_model_sizes_alike() -> None:
    assert shorter_side_shape(20, 25, 18) == (18, 23)  # 25 * 18 / 20 = 22.5: half up (Python's round: 22)
    scripted = torch.jit.script(shorter_side_shape)  # what ServedSegmenter compiles
    for height, width, size in itertools.product(range(8, 70, 3), range(8, 70, 5), (16, 18, 32)):
        assert scripted(height, width, size) == shorter_side_shape(height, width, size)


def test_training_batches_are_aligned_random_crops_inside_each_image(tmp_path: Path) -> None:
    image, mask = coordinates(32, 48)  # already at the shorter side: no resampling, values stay exact
    data = write_set(tmp_path / "d", [(f"i{k}", image, mask) for k in range(6)])
    split = load_split(data, list(data), 32)
    assert split.extents.tolist() == [[32, 48]] * 6
    seen = set()
    for epoch in range(3):
        for batch in iterate_batches(split, 4, epoch_generator(0, epoch), shuffle=True):
            assert batch["image"].shape[-2:] == (32, 32) and batch["mask"].shape[-2:] == (32, 32)
            red = batch["image"][:, 0].long()  # batches stay uint8 until the device
            green = batch["image"][:, 1].long()
            rows, cols = (red - 1) // 4, (green - 1) // 4
            assert (rows[:, :, :1] == torch.arange(32)[:, None]).all()  # the crop spans every row once
            assert (cols == cols[:, :1, :1] + torch.arange(32)).all()  # 32 consecutive columns
            assert torch.equal(batch["mask"], cols)  # mask pixel = its image pixel's column
            seen.update(cols[:, 0, 0].tolist())
    assert len(seen) > 3 and max(seen) <= 16  # offsets vary, and stay inside the 48-px width
    again = [b["mask"] for b in iterate_batches(split, 4, epoch_generator(0, 1), shuffle=True)]
    first = [b["mask"] for b in iterate_batches(split, 4, epoch_generator(0, 1), shuffle=True)]
    assert all(torch.equal(a, b) for a, b in zip(again, first, strict=True))  # seeded: resume is bit-for-bit
    ordered = next(iterate_batches(split, 6))
    assert ordered["image"].shape[-2:] == (32, 48)  # evaluation: the whole image


class RedProbability(nn.Module):
    """Two channels whose softmax is (r, 1 - r), r the red value; refuses zero-padded (black) input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert (x[:, 2] > 0).all(), "the model was fed padding"
        r = x[:, :1].clamp(1e-6, 1 - 1e-6)
        return torch.cat([r.log(), (1 - r).log()], dim=1)


def test_prediction_sees_the_whole_image_and_returns_it_at_its_own_size(tmp_path: Path) -> None:
    wide = np.zeros((40, 64, 3), np.uint8)
    wide[..., 0] = np.rint(np.linspace(20, 240, 64))[None, :]  # red ramp along x
    wide[..., 2] = 9
    tall = np.ascontiguousarray(wide[:, :48].transpose(1, 0, 2))  # 48 x 40, the ramp along y
    data = write_set(tmp_path / "d", [("a_wide", wide, None), ("b_tall", tall, None), ("c_wide", wide, None)])
    out = dict((r.id, p) for r, p in predict_native(RedProbability(), data, list(data), 32, batch_size=2))
    assert out["a_wide"].shape == (2, 40, 64) and out["b_tall"].shape == (2, 48, 40)
    for name, image in (("a_wide", wide), ("b_tall", tall), ("c_wide", wide)):
        np.testing.assert_allclose(out[name][0].numpy(), image[..., 0] / 255.0, atol=0.02)
    split = load_split(data, list(data), 32, with_masks=False)
    probs = predict_probs(RedProbability(), split, batch_size=8)
    assert probs.shape == (3, 2, 38, 51) and split.extents.tolist() == [[32, 51], [38, 32], [32, 51]]
    assert (probs[1, :, :, 32:] == 0).all() and (probs[0, :, 32:] == 0).all()  # nothing outside an extent


def test_region_segmentation_keeps_each_images_extent(tmp_path: Path) -> None:
    left_right = np.zeros((40, 64, 3), np.uint8)
    left_right[:, 32:, 0] = 255
    left_right[..., 2] = 9
    data = write_set(tmp_path / "d", [("a", left_right, None), ("b", left_right[:, :40].copy(), None)])
    split = load_split(data, list(data), 32, with_masks=False)
    model = nn.Sequential(nn.Conv2d(3, 3, 1))  # channel 0 grows with red
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[0, 0] = 20.0
        model[0].bias[0] = -10.0
    labels = segment_images(model, "cas", split.images, RegionSettings(min_area_fraction=0.0),
                            extents=split.extents)
    assert [lab.shape for lab in labels] == [(32, 51), (32, 32)]
    assert len(np.unique(labels[0])) == 2 and (labels[0][:, 0] != labels[0][:, -1]).all()
