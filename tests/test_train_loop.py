"""The training loop resumes from its checkpoint to exactly the weights of an uninterrupted run."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lofiseg.data.loading import (
    TensorSplit,
    iterate_batches,
    random_blur,
    random_flip,
    random_mosaic,
    random_rescale,
)
from lofiseg.train.loop import (
    Trainer,
    epoch_generator,
    load_checkpoint,
    poly_lr,
    resolve_device,
    seed_everything,
    set_lr,
)


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
