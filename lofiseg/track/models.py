"""Segmentation models in MLflow: the signature with free batch/H/W, pinned pip requirements, loading back.

Two forms: :meth:`lofiseg.track.tracker.Tracker.log_model` pickles the bare network (training runs; loading
needs lofiseg), :meth:`~lofiseg.track.tracker.Tracker.log_served_model` logs a TorchScript
:class:`~lofiseg.infer.served.ServedSegmenter` behind the models-from-code pyfunc
:mod:`lofiseg.track.served_model` (registered models; serving needs only mlflow, numpy and torch).
:func:`load_model` reads either back as the network's one pass. mlflow and torch are imported lazily.
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


SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")  # the pyfunc, logged as models-from-code
SERVED_ARTIFACT = "segmenter"  # its TorchScript artifact (served_model.ARTIFACT: that file cannot import lofiseg)
SERVED_PACKAGES = ("mlflow", "numpy", "torch")  # all a served model needs, pinned to the installed versions


def served_signature(example_images: np.ndarray, output: np.ndarray) -> Any:
    """An MLflow ModelSignature images (N, H, W, 3) -> (N, H, W) label map or probability; N, H, W free."""
    import_mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if example_images.ndim != 4 or example_images.shape[-1] != 3 or output.ndim != 3:
        raise ValueError(f"expected images (N, H, W, 3) -> (N, H, W), got {example_images.shape} -> {output.shape}")
    return ModelSignature(inputs=Schema([TensorSpec(example_images.dtype, (-1, -1, -1, 3))]),
                          outputs=Schema([TensorSpec(output.dtype, (-1, -1, -1))]))


def served_pip_requirements() -> list[str]:
    """``<package>==<installed version>`` of :data:`SERVED_PACKAGES`: public packages only, never lofiseg."""
    from importlib import metadata

    return [f"{package}=={metadata.version(package)}" for package in SERVED_PACKAGES]


def load_served(model_uri: str, *, tracking_uri: str | None = None) -> torch.jit.ScriptModule:
    """The TorchScript :class:`~lofiseg.infer.served.ServedSegmenter` of a model logged by
    :meth:`Tracker.log_served_model`, in eval mode; ValueError for a model of another form."""
    check_name("model_uri", model_uri)
    mlflow = import_mlflow()
    with tracking_uri_set(tracking_uri or default_tracking_uri(Path.cwd())):
        flavors = mlflow.models.get_model_info(model_uri).flavors
        if "pytorch" in flavors or "python_function" not in flavors:
            raise ValueError(f"{model_uri}: not a served segmenter (flavors {sorted(flavors)})")
        pyfunc = mlflow.pyfunc.load_model(model_uri)
    return pyfunc.unwrap_python_model().segmenter


def load_model(model_uri: str, *, tracking_uri: str | None = None,
               map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """The network (one pass, (N, 3, H, W) in [0, 1] -> scores) of a model logged by :meth:`Tracker.log_model`
    or :meth:`Tracker.log_served_model` (``models:/...``, ``runs:/...``), in eval mode; a served one runs on
    the CPU.

    ``tracking_uri`` resolves ``models:/`` URIs (default: :func:`default_tracking_uri` of the cwd).
    """
    from lofiseg.infer.served import OnePass

    check_name("model_uri", model_uri)
    uri = tracking_uri or default_tracking_uri(Path.cwd())
    mlflow = import_mlflow()
    with tracking_uri_set(uri):
        if "pytorch" not in mlflow.models.get_model_info(model_uri).flavors:
            return OnePass(load_served(model_uri, tracking_uri=uri)).eval()
        model = mlflow.pytorch.load_model(model_uri, map_location=map_location)
    return model.eval()
