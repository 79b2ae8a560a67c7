"""The training loop resumes from its checkpoint to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lofiseg.data.loading import (
    TensorSplit,
    batch_to_device,
    iterate_batches,
    random_blur,
    random_flip,
    random_mosaic,
    random_rescale,
    rescale_images,
    resize_masks,
    to_float,
)
from lofiseg.train.loop import (
    Trainer,
    autocast_dtype,
    epoch_generator,
    load_checkpoint,
    poly_lr,
    resolve_device,
    seed_everything,
    set_lr,
)
from lofiseg.train.run import history_rows, periodic


def _split() -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    masks = (images[:, 0] > 128).to(torch.uint8)
    return TensorSplit(images, masks, [f"i{i}" for i in range(12)], [()] * 12)


def _model() -> torch.nn.Module:
    # Dropout draws from the global RNG: resuming must restore it too.
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Dropout2d(0.3),
                               torch.nn.Conv2d(8, 2, 1))


def _step(model, batch, epoch):
    return F.cross_entropy(model(batch["image"]), batch["mask"], ignore_index=255)


def _trainer(tmp_path, split) -> tuple[Trainer, callable]:
    seed_everything(3)
    model = _model()
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), 1e-2), _step, tmp_path / "ckpt.pt")

    def batches(epoch):
        return iterate_batches(split, 4, epoch_generator(3, epoch), shuffle=True,
                               augment=[random_flip, random_blur, random_rescale])
    return trainer, batches


def test_resume_matches_uninterrupted_run(tmp_path):
    split = _split()
    straight, batches = _trainer(tmp_path / "a", split)
    straight.fit(batches, epochs=4)

    first, batches = _trainer(tmp_path / "b", split)
    first.fit(batches, epochs=2)  # "killed" after epoch 2
    torch.manual_seed(12345)  # a new process: the global RNG is elsewhere
    resumed, batches = _trainer(tmp_path / "b", split)
    assert resumed.resume() and resumed.start_epoch == 2
    history = resumed.fit(batches, epochs=4)

    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in straight.history]


def test_checkpoint_holds_meta_and_unreadable_checkpoint_is_an_error(tmp_path):
    split = _split()
    trainer, batches = _trainer(tmp_path, split)
    trainer.meta["run_id"] = "abc"
    trainer.fit(batches, epochs=1)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert state["epoch"] == 0 and state["meta"] == {"run_id": "abc"}
    (tmp_path / "ckpt.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="ckpt.pt: checkpoint is unreadable"):
        load_checkpoint(tmp_path / "ckpt.pt")


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    split = _split()
    trainer, batches = _trainer(tmp_path, split)
    trainer.step_fn = lambda model, batch, epoch: model(batch["image"]).sum() * float("nan")
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1"):
        trainer.fit(batches, epochs=1)


def test_augmentations_keep_image_and_mask_aligned():
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(4, 3, 16, 16)
    image[:, :, :, :4] = 1.0
    batch = {"image": image, "mask": (image[:, 0] > 0.5).long()}
    for aug in (random_flip, random_rescale, partial(random_mosaic, prob=1.0)):
        out = aug(batch, g)
        valid = out["mask"] != 255
        agree = ((out["image"][:, 0] > 0.5) == (out["mask"] == 1))[valid].float().mean()
        assert agree > 0.97  # bilinear image vs nearest mask may differ on the one-pixel edge only


def _hand_flip(batch, generator):
    """random_flip before torchvision: the reference its draws and output must keep."""
    flip = torch.rand(batch["image"].shape[0], generator=generator) < 0.5
    return {"image": torch.where(flip[:, None, None, None], batch["image"].flip(-1), batch["image"]),
            "mask": torch.where(flip[:, None, None], batch["mask"].flip(-1), batch["mask"])}


def _hand_blur(batch, generator, sigma=1.0):
    """random_blur before torchvision: separable 3x3 Gaussian over replicate padding, half of the images."""
    x = batch["image"]
    k = torch.exp(-torch.arange(-1.0, 2.0) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    pick = torch.rand(x.shape[0], generator=generator) < 0.5
    return {"image": torch.where(pick[:, None, None, None], blurred, x), "mask": batch["mask"]}


def test_flip_and_blur_equal_the_hand_written_code_bit_for_bit():
    """torchvision ops, same draws: the saliency / single-class / regions models (random_flip) train as before."""
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        b, size = int(torch.randint(1, 7, (), generator=g)), int(torch.randint(3, 33, (), generator=g))
        batch = {"image": torch.rand(b, 3, size, size, generator=g), "mask": torch.randint(0, 256, (b, size, size), generator=g)}
        for new, hand in ((random_flip, _hand_flip), (random_blur, _hand_blur)):
            mine, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            out, expected = new(batch, mine), hand(batch, theirs)
            assert torch.equal(out["image"], expected["image"]) and torch.equal(out["mask"], expected["mask"])
            assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor  # no tv_tensors leak
            assert torch.equal(mine.get_state(), theirs.get_state())  # the same draws, no more
    assert torch.equal(torch.get_rng_state(), global_state)  # nothing from the global RNG


def _replay_rescale(seed, low, high):
    g = torch.Generator().manual_seed(seed)
    factor = low + (high - low) * torch.rand((), generator=g).item()
    return factor, g


def test_rescale_crops_anywhere_and_the_mask_follows_the_image():
    """Factor 2 on 16 px: a 16 px window of the 32 px image, row and column offsets drawn independently."""
    size = 16
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (100 * rows + cols)[None].repeat(2, 1, 1)  # every pixel its own id (never 255)
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    offsets = []
    for seed in range(20):
        out = random_rescale({"image": image, "mask": mask}, torch.Generator().manual_seed(seed), low=2.0, high=2.0)
        factor, g = _replay_rescale(seed, 2.0, 2.0)
        top, left = torch.randint(0, size + 1, (2,), generator=g).tolist()
        window = (..., slice(top, top + size), slice(left, left + size))
        assert torch.equal(out["image"], rescale_images(image, factor)[window])
        assert torch.equal(out["mask"], resize_masks(mask, 2 * size)[window])  # same window as the image
        assert out["mask"][0, 0, 0] == 100 * (top // 2) + left // 2  # nearest-exact x2: source pixel
        offsets.append((top, left))
    assert any(top != left for top, left in offsets)  # off the diagonal
    assert len({top for top, _ in offsets}) > 3 and len({left for _, left in offsets}) > 3


def test_rescale_pads_on_all_sides_with_ignore():
    """Factor 0.5 on 16 px: the 8 px image lands at a random spot; the rest is image 0 and mask 255 (ignore).

    The image is constant on 2x2 blocks, so bilinear and nearest-exact halving give the same pixels: image
    and mask must coincide exactly wherever the mask is not ignored.
    """
    size, half = 16, 8
    blocks = torch.randint(0, 5, (3, half, half), generator=torch.Generator().manual_seed(1))
    mask = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (3, 16, 16), 2x2 blocks
    image = mask[:, None].float().repeat(1, 3, 1, 1)
    padded_sides = set()
    for seed in range(20):
        out = random_rescale({"image": image, "mask": mask}, torch.Generator().manual_seed(seed), low=0.5, high=0.5)
        _, g = _replay_rescale(seed, 0.5, 0.5)
        top, left = torch.randint(0, size - half + 1, (2,), generator=g).tolist()
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[top:top + half, left:left + half] = True
        assert torch.equal(out["mask"][:, inside].reshape(3, half, half), blocks)
        assert (out["mask"][:, ~inside] == 255).all() and (out["image"][:, :, ~inside] == 0).all()
        assert torch.equal(out["image"][:, 0][:, inside], out["mask"][:, inside].float())
        padded_sides |= {side for side, gap in (("top", top), ("bottom", size - half - top), ("left", left),
                                                 ("right", size - half - left)) if gap > 0}
        if 0 < top < size - half and 0 < left < size - half:
            padded_sides.add("all four at once")
    assert padded_sides == {"top", "bottom", "left", "right", "all four at once"}


def test_mosaic_tiles_four_half_size_images_of_the_batch():
    """Each quadrant of a mosaic is one image of the batch halved (its own pixels, not a transposed or interleaved
    copy) with its mask; prob 0 changes nothing, prob 1 makes every image a mosaic."""
    b, size, half = 5, 8, 4
    g = torch.Generator().manual_seed(7)
    image = torch.rand(b, 3, size, size, generator=g)
    mask = torch.randint(0, 3, (b, size, size), generator=g)
    batch = {"image": image, "mask": mask, "index": torch.arange(b)}
    untouched = random_mosaic(batch, torch.Generator().manual_seed(0), prob=0.0)
    assert torch.equal(untouched["image"], image) and torch.equal(untouched["mask"], mask)

    out = random_mosaic(batch, torch.Generator().manual_seed(3), prob=1.0)
    replay = torch.Generator().manual_seed(3)
    torch.rand(b, generator=replay)  # the pick draw, then the four sources of each image
    sources = torch.randint(0, b, (b, 4), generator=replay)
    small = F.interpolate(image, size=(half, half), mode="bilinear", align_corners=False, antialias=True)
    small_mask = mask[:, 1::2, 1::2]  # nearest-exact halving keeps every second pixel, from the second
    for i in range(b):
        for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            rows, cols = slice(r * half, (r + 1) * half), slice(c * half, (c + 1) * half)
            assert torch.equal(out["image"][i, :, rows, cols], small[sources[i, q]])
            assert torch.equal(out["mask"][i, rows, cols], small_mask[sources[i, q]])
    assert len(set(sources.flatten().tolist())) > 1  # the draw mixes images
    assert torch.equal(out["index"], batch["index"]) and out["mask"].dtype == mask.dtype


def test_mosaic_keeps_ignore_and_refuses_odd_sizes():
    mask = torch.full((2, 6, 6), 255, dtype=torch.long)
    mask[:, :3] = 1
    out = random_mosaic({"image": torch.rand(2, 3, 6, 6), "mask": mask}, torch.Generator().manual_seed(0), prob=1.0)
    assert set(out["mask"].unique().tolist()) == {1, 255}
    with pytest.raises(ValueError, match="image size 7 is odd"):
        random_mosaic({"image": torch.rand(2, 3, 7, 7)}, torch.Generator().manual_seed(0), prob=1.0)


def test_resolve_device(monkeypatch):
    monkeypatch.delenv("LOFISEG_DEVICE", raising=False)
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("LOFISEG_DEVICE", "cpu")
    assert resolve_device("cuda").type == "cpu"
    if not torch.cuda.is_available():
        monkeypatch.delenv("LOFISEG_DEVICE")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_poly_lr_by_hand_and_set_lr():
    # DeepLab's poly: base (1 - e / E) ** 0.9; E = 10: e = 0 -> base, e = 5 -> base 0.5 ** 0.9 = 0.535887 base
    assert poly_lr(0.01, 0, 10) == 0.01
    assert poly_lr(0.01, 5, 10) == pytest.approx(0.005358867, rel=1e-6)
    assert poly_lr(0.01, 9, 10, power=1.0) == pytest.approx(0.001)  # linear with power 1; never 0 in training
    with pytest.raises(ValueError, match=r"epoch 10 outside 0 .. 9"):
        poly_lr(0.01, 10, 10)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    set_lr(optimizer, 0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [0.02]


def test_batches_stay_uint8_until_the_device_and_augmented_values_are_unchanged():
    split = _split()
    batch = next(iterate_batches(split, 4))
    assert batch["image"].dtype == torch.uint8  # a quarter of the bytes to copy to the device
    on_device = batch_to_device(batch, torch.device("cpu"), channels_last=True)
    assert torch.equal(on_device["image"], to_float(split.images[:4]))  # float only after the copy
    assert on_device["image"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(on_device["mask"], split.masks[:4].long())
    # blur, rescale and mosaic compute new values: in float, exactly as on a batch converted before them
    floats = {**batch, "image": to_float(batch["image"])}
    for aug in (random_blur, random_rescale, partial(random_mosaic, prob=0.7)):
        ours, before = aug(batch, torch.Generator().manual_seed(1)), aug(floats, torch.Generator().manual_seed(1))
        assert ours["image"].dtype == torch.float32 and torch.equal(ours["image"], before["image"])
        assert torch.equal(ours["mask"], before["mask"])


def _changed(trainer: Trainer, start: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(start[k], v) for k, v in trainer.model.state_dict().items())


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused_there(tmp_path):
    split = _split()
    trainer, batches = _trainer(tmp_path / "bf16", split)
    trainer = Trainer(trainer.model, trainer.optimizer, _step, tmp_path / "bf16.pt", amp="bf16", channels_last=True)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.fit(batches, epochs=2)
    assert all(math.isfinite(h["train_loss"]) for h in history) and _changed(trainer, start)
    assert trainer.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert autocast_dtype("off", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="amp 'fp16' needs a CUDA device"):
        Trainer(_model(), torch.optim.Adam(_model().parameters()), _step, tmp_path / "fp16.pt", amp="fp16")
    with pytest.raises(ValueError, match="amp must be bf16, fp16 or off, got 'fp32'"):
        autocast_dtype("fp32", torch.device("cpu"))


def test_periodic_evaluates_every_k_epochs_and_after_the_last():
    calls = []
    every = periodic(lambda epoch, metrics: calls.append(epoch) or {"val": epoch}, 3, 7)
    results = [every(epoch, {}) for epoch in range(7)]
    assert calls == [2, 5, 6] and results[2] == {"val": 2} and results[0] == {}
    assert [every(e, {}) for e in range(2)] == [{}, {}]
    with pytest.raises(ValueError, match="validate_every must be >= 1, got 0"):
        periodic(lambda epoch, metrics: {}, 0, 7)


def test_history_rows_share_every_key_with_null_where_an_epoch_was_not_validated():
    history = [{"epoch": 0, "train_loss": 1.0, "images_per_s": 9.0},
               {"epoch": 1, "train_loss": 0.5, "images_per_s": 8.0, "val_f": 0.3}]
    # DVC's plots refuse rows of different keys; the timings (machine-dependent) stay out of history.json
    assert history_rows(history) == [{"epoch": 0, "train_loss": 1.0, "val_f": None},
                                     {"epoch": 1, "train_loss": 0.5, "val_f": 0.3}]
