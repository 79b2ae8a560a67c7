"""The architecture and encoder names :func:`lofiseg.models.factory.build_model` accepts (stdlib only).

Kept apart from the factory so that the params schema validates model names without importing torch.
"""

from __future__ import annotations

TORCHVISION_ARCHS = {
    "fcn_resnet50": "resnet50",
    "fcn_resnet101": "resnet101",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_resnet101": "resnet101",
    "deeplabv3_mobilenet_v3_large": "mobilenet_v3_large",
}
SMP_ARCHS = ("unet", "deeplabv3plus")
SMP_ENCODERS = (
    "mobilenet_v2",
    "resnext50_32x4d",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "tu-tf_efficientnet_lite0",
    "timm-tf_efficientnet_lite0",
)
# smp 0.6 deprecates its own "timm-" EfficientNet encoders in favour of timm-universal "tu-" ones; both build
# offline, we build the "tu-" one for either spelling (the lite0 ImageNet weights load into it by name).
ENCODER_ALIASES = {"timm-tf_efficientnet_lite0": "tu-tf_efficientnet_lite0"}
LITE0_ENCODERS = ("tu-tf_efficientnet_lite0", "timm-tf_efficientnet_lite0")
TINY_ARCH = "tiny_unet"


def list_architectures() -> list[str]:
    """Every architecture name :func:`~lofiseg.models.factory.build_model` accepts."""
    return [*TORCHVISION_ARCHS, *SMP_ARCHS, TINY_ARCH]


def list_encoders(arch: str) -> list[str]:
    """Encoder names accepted for ``arch`` (empty when the architecture fixes its own backbone)."""
    check_arch(arch)
    return list(SMP_ENCODERS) if arch in SMP_ARCHS else []


def check_arch(arch: str) -> None:
    """ValueError naming the accepted architectures unless ``arch`` is one of them."""
    if arch not in list_architectures():
        raise ValueError(f"arch must be one of {list_architectures()}, got {arch!r}")
