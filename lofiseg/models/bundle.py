"""A trained model as one file: how to build it, its weights, and what the stage learnt about it.

``model.pt`` holds ``{"format": 1, "model_config": build_model kwargs, "state_dict": ..., "info": {...}}``; the
``info`` dict carries e.g. the CAS foreground channel (Sec. 4.2), the loss and the noise rate. Rebuilding from
the config keeps the file loadable without pickled classes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from lofiseg.atomic import atomic_write_bytes
from lofiseg.models.factory import SegmentationModel, build_model

FORMAT = 1


def save_bundle(path: str | os.PathLike, model: SegmentationModel, info: dict[str, Any]) -> Path:
    """Write ``model.pt`` atomically. Serialised in memory: ``torch.save`` to a file names its zip records after
    that file, and the temporary file's name (pid, random suffix) would make every save's bytes differ."""
    state = {"format": FORMAT, "model_config": dict(model.config),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": dict(info)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_bundle(path: str | os.PathLike) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild the model (random init, no download) and load its weights; returns (model in eval mode, info)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file is missing (run the training stage first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable lofiseg model file ({err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a lofiseg model file of format {FORMAT}")
    config = dict(state["model_config"])
    config["encoder_weights"] = None  # the weights below replace any pretrained initialisation
    model = build_model(**config)
    model.load_state_dict(state["state_dict"])
    model.config["encoder_weights"] = state["model_config"].get("encoder_weights")
    return model.eval(), dict(state["info"])
