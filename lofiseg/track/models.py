"""Segmentation models in MLflow: the signature with free batch/H/W, pinned pip requirements, loading back.

:meth:`lofiseg.track.tracker.Tracker.log_model` logs with these; :func:`load_model` reads a logged or registered
model back. mlflow and torch are imported lazily.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lofiseg.track.store import default_tracking_uri, import_mlflow, tracking_uri_set
from lofiseg.track.values import check_name

if TYPE_CHECKING:
    import torch


def example_tensor(example_input: Any) -> torch.Tensor:
    import torch

    if isinstance(example_input, np.ndarray):
        example_input = torch.from_numpy(example_input)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input: expected a numpy array or torch tensor of shape (N, C, H, W), got "
                        f"{type(example_input).__name__}")
    if example_input.ndim != 4 or not example_input.is_floating_point():
        raise ValueError(f"example_input: expected a floating (N, C, H, W) batch, got shape "
                         f"{tuple(example_input.shape)} dtype {example_input.dtype}")
    return example_input


def eval_output(model: torch.nn.Module, example: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode output on ``example`` (its train/eval mode is restored afterwards)."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example.to(device))
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        raise ValueError(f"model: expected one (N, M, H, W) tensor as output, got "
                         f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}")
    return output


def segmentation_signature(example_input: np.ndarray | torch.Tensor, output: torch.Tensor) -> Any:
    """An MLflow ModelSignature (N, C, H, W) -> (N, M, H, W) with N, H and W free (-1)."""
    import_mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    example = example_tensor(example_input)

    def spec(tensor: torch.Tensor) -> TensorSpec:
        dtype = tensor.detach().cpu()[:0].numpy().dtype
        return TensorSpec(dtype, (-1, int(tensor.shape[1]), -1, -1))

    return ModelSignature(inputs=Schema([spec(example)]), outputs=Schema([spec(output)]))


def default_pip_requirements(model: torch.nn.Module) -> list[str]:
    """torch + cloudpickle (MLflow's pickle flavor) + ``<package>==<version>`` for each installed distribution
    named like the top-level package of one of the model's module classes (e.g. segmentation_models_pytorch).
    """
    from importlib import metadata

    requirements = list(import_mlflow().pytorch.get_default_pip_requirements())
    pinned = {requirement.split("==")[0] for requirement in requirements}
    for package in sorted({type(module).__module__.split(".")[0] for module in model.modules()} - pinned):
        with contextlib.suppress(metadata.PackageNotFoundError):
            requirements.append(f"{package}=={metadata.version(package)}")
    return sorted(requirements)


def load_model(model_uri: str, *, tracking_uri: str | None = None,
               map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model logged by :meth:`Tracker.log_model` (``models:/...``, ``runs:/...``), in eval mode.

    ``tracking_uri`` resolves ``models:/`` URIs (default: :func:`default_tracking_uri` of the cwd).
    """
    check_name("model_uri", model_uri)
    uri = tracking_uri or default_tracking_uri(Path.cwd())
    mlflow = import_mlflow()
    with tracking_uri_set(uri):
        model = mlflow.pytorch.load_model(model_uri, map_location=map_location)
    return model.eval()
