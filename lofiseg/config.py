"""The params schema: params.yaml is validated once, at the edge, into these frozen typed objects.

Stages call :func:`load_params` before any work; an unknown key, a wrong type or an out-of-range value raises
:class:`ParamsError` naming the key (``noise.rates[2]``) and what is allowed.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from lofiseg.schema import StrictModel

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Split = Literal["train", "val", "test"]
CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ParamsError(ValueError):
    """params.yaml is invalid; the message names every offending key."""


# --- synthetic default data -------------------------------------------------------------------------------

class SplitSizes(StrictModel):
    train: Annotated[int, Field(ge=0)] = 0
    val: Annotated[int, Field(ge=0)] = 0
    test: Annotated[int, Field(ge=0)] = 0


class SyntheticSaliency(SplitSizes):
    train: Annotated[int, Field(ge=0)] = 160
    val: Annotated[int, Field(ge=0)] = 40
    test: Annotated[int, Field(ge=0)] = 80


class SyntheticWeb(StrictModel):
    per_class: PositiveInt = 48  # web images per class (image-level tag only)
    negatives: Annotated[int, Field(ge=0)] = 24  # clutter images with no object of any class
    confuser_prob: Probability = 0.3  # chance an image also holds a smaller object of another class
    test_per_class: Annotated[int, Field(ge=0)] = 16  # held-out web images per class, for F-beta


class SyntheticScenes(SplitSizes):
    train: Annotated[int, Field(ge=0)] = 96
    val: Annotated[int, Field(ge=0)] = 24
    test: Annotated[int, Field(ge=0)] = 48
    min_objects: PositiveInt = 2
    max_objects: PositiveInt = 4


class SyntheticRegions(SplitSizes):
    train: Annotated[int, Field(ge=0)] = 0
    val: Annotated[int, Field(ge=0)] = 0
    test: Annotated[int, Field(ge=0)] = 40
    min_regions: Annotated[int, Field(ge=2)] = 2
    max_regions: Annotated[int, Field(ge=2, le=254)] = 6


class SyntheticParams(StrictModel):
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    classes: list[str] = Field(default_factory=lambda: ["sun", "leaf", "brick", "star"], min_length=1)
    saliency: SyntheticSaliency = SyntheticSaliency()
    web: SyntheticWeb = SyntheticWeb()
    scenes: SyntheticScenes = SyntheticScenes()
    regions: SyntheticRegions = SyntheticRegions()

    @field_validator("classes")
    @classmethod
    def _class_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not CLASS_NAME.match(name):
                raise ValueError(f"class name {name!r} must match {CLASS_NAME.pattern}")
        if len(set(value)) != len(value):
            raise ValueError(f"class names must be unique, got {value}")
        return value


# --- download ---------------------------------------------------------------------------------------------

class FileSpec(StrictModel):
    uri: str  # local path, http(s):// URL or s3://bucket/key
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class DatasetSpec(StrictModel):
    source: Literal["synthetic", "local", "http", "s3"]
    enabled: bool = True
    generator: Literal["saliency", "web", "scenes", "regions"] | None = None  # source: synthetic
    files: list[FileSpec] = Field(default_factory=list)  # archives or folders, unpacked into one tree
    layout: Literal["lofiseg", "sod", "voc", "pet", "bsds"] = "lofiseg"
    images: str | None = None  # glob, relative to the unpacked tree, of the images
    masks: str | None = None  # pattern of the mask of an image: "{stem}" is the image's file stem
    split: Split | None = None  # every sample goes to this split ...
    split_files: dict[Split, str] = Field(default_factory=dict)  # ... or id lists per split
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # carved from train, deterministically
    description: str = ""

    @model_validator(mode="after")
    def _source_fields(self) -> DatasetSpec:
        if self.source == "synthetic":
            if self.generator is None:
                raise ValueError("source 'synthetic' needs 'generator' (saliency, web, scenes or regions)")
            if self.files:
                raise ValueError("source 'synthetic' takes no 'files'")
        else:
            if not self.files:
                raise ValueError(f"source {self.source!r} needs at least one entry in 'files'")
            prefix = {"http": ("http://", "https://"), "s3": ("s3://",)}.get(self.source)
            for spec in self.files:
                if prefix and not spec.uri.startswith(prefix):
                    raise ValueError(f"source {self.source!r}: uri {spec.uri!r} must start with {prefix}")
                if self.source == "local" and "://" in spec.uri:
                    raise ValueError(f"source 'local': uri {spec.uri!r} must be a path, not a URL")
        if self.layout in ("voc", "pet", "bsds") and (self.images or self.masks):
            raise ValueError(f"layout {self.layout!r} finds its own files: remove 'images' and 'masks'")
        return self


class DownloadParams(StrictModel):
    retries: Annotated[int, Field(ge=0, le=20)] = 4
    backoff_seconds: Annotated[float, Field(ge=0.0)] = 1.0
    timeout_seconds: Annotated[float, Field(gt=0.0)] = 60.0
    s3_endpoint_url: str | None = None  # any S3-compatible store; AWS_ENDPOINT_URL_S3 also works
    datasets: dict[str, DatasetSpec]

    @field_validator("datasets")
    @classmethod
    def _names(cls, value: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
        for name in value:
            if not CLASS_NAME.match(name):
                raise ValueError(f"data set name {name!r} must match {CLASS_NAME.pattern}")
        return value

    def enabled(self) -> dict[str, DatasetSpec]:
        return {name: spec for name, spec in self.datasets.items() if spec.enabled}


# --- noise ------------------------------------------------------------------------------------------------

class NoiseParams(StrictModel):
    dataset: str = "saliency"  # which downloaded data set gets low-fidelity copies
    rates: list[Probability] = Field(default_factory=lambda: [0.0, 0.5], min_length=1)
    boundary_px: Annotated[int, Field(ge=-16, le=16)] = 0  # > 0 dilates, < 0 erodes every region by k px
    drop_region_prob: Probability = 0.0  # chance a region of an image becomes ignore (255)

    @field_validator("rates", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        # dvc.yaml's foreach names stages and paths by str(item): 0.0 -> "noise@0.0". Integers (0, 1) would
        # give "0" where rate_key() says "0.0", so rates are written as decimals.
        if isinstance(value, list):
            for rate in value:
                if not isinstance(rate, float):
                    raise ValueError(f"write every rate as a decimal (e.g. 0.0, 1.0), got {rate!r}")
        return value

    @field_validator("rates")
    @classmethod
    def _unique(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError(f"rates must be unique, got {value}")
        return value


# --- models, tracking, training -------------------------------------------------------------------------

class ModelParams(StrictModel):
    """Arguments of :func:`lofiseg.models.build_model` (num_classes comes from the stage)."""

    arch: str = "tiny_unet"
    encoder: str | None = None
    encoder_weights: str | None = None  # null | imagenet | lite0-imagenet | path to a state dict
    freeze_encoder: bool = False
    normalize_input: bool = True
    width: Annotated[int, Field(ge=4, le=256)] = 16  # tiny_unet only
    encoder_depth: Annotated[int, Field(ge=3, le=5)] = 5  # smp architectures only

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        from lofiseg.models import list_architectures

        if value not in list_architectures():
            raise ValueError(f"arch must be one of {list_architectures()}, got {value!r}")
        return value


class TrackingParams(StrictModel):
    enabled: bool = True
    required: bool = True  # store unreachable: fail fast (true) or train without tracking and say so (false)
    experiment_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "lofiseg"


class TrainSaliencyParams(StrictModel):
    losses: list[Literal["ce", "cace", "cas"]] = Field(default_factory=lambda: ["ce", "cace", "cas"], min_length=1)
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    alpha: Probability = 0.1  # CAS Eq. 1
    flip: bool = True  # random horizontal flips
    model: ModelParams = ModelParams()
    device: str = "auto"  # auto | cpu | cuda | cuda:N; the LOFISEG_DEVICE env var overrides
    amp: bool = True  # mixed precision on cuda

    @field_validator("losses")
    @classmethod
    def _unique_losses(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"losses must be unique, got {value}")
        return value


class EvaluateParams(StrictModel):
    saliency_sets: list[str] = Field(default_factory=lambda: ["saliency"])  # data sets with a test split
    batch_size: PositiveInt = 32
    grid_samples: Annotated[int, Field(ge=1, le=32)] = 6


# --- the whole file ---------------------------------------------------------------------------------------

class Params(StrictModel):
    seed: Annotated[int, Field(ge=0)] = 0
    synthetic: SyntheticParams = SyntheticParams()
    download: DownloadParams
    noise: NoiseParams = NoiseParams()
    tracking: TrackingParams = TrackingParams()
    train_saliency: TrainSaliencyParams = TrainSaliencyParams()
    evaluate: EvaluateParams = EvaluateParams()

    @model_validator(mode="after")
    def _cross_refs(self) -> Params:
        enabled = self.download.enabled()
        for key, name in [("noise.dataset", self.noise.dataset)] + [
                (f"evaluate.saliency_sets[{i}]", n) for i, n in enumerate(self.evaluate.saliency_sets)]:
            if name not in enabled:
                raise ValueError(f"{key} {name!r} is not an enabled data set in download.datasets; "
                                 f"enabled: {sorted(enabled)}")
        return self


def rate_key(rate: float) -> str:
    """The string form of a noise rate in paths, stage names and metrics keys, as dvc.yaml's foreach
    writes it: 0.5 -> "0.5", 0.0 -> "0.0"."""
    return str(float(rate))


def _model_in(annotation: Any) -> type[StrictModel] | None:
    """The params section class inside an annotation (through Optional, list[...] and dict[..., ...])."""
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(model: type[StrictModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk the schema along an error location to list the keys allowed where an unknown key was found."""
    current: type[StrictModel] | None = model
    skip_dict_key = False
    for part in loc[:-1]:
        if skip_dict_key or isinstance(part, int):
            skip_dict_key = False
            continue
        field = current.model_fields.get(str(part)) if current else None
        if field is None:
            return None
        skip_dict_key = typing.get_origin(field.annotation) is dict
        current = _model_in(field.annotation)
    return sorted(current.model_fields) if current else None


def format_validation_error(err: ValidationError, source: str, model: type = Params) -> str:
    lines = [f"{source}: invalid params"]
    for item in err.errors():
        loc = item["loc"]
        key = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
        key = key or "(top level)"
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {key}: unknown key{hint}")
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = "params") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, source)) from None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; raise :class:`ParamsError` before any work if anything is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from None
    return parse_params(raw, str(path))
