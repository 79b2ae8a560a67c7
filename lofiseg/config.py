"""The params schema: params.yaml is validated once, at the edge, into these frozen typed objects.

Stages call :func:`load_params` before any work; an unknown key, a wrong type or an out-of-range value raises
:class:`ParamsError` naming the key (``noise.rates[2]``) and what is allowed.

This is the only module that knows params.yaml: the library takes its own settings objects (the dataclasses
:class:`~lofiseg.losses.regularized_schedule.RegularizedLossSchedule`,
:class:`~lofiseg.infer.region_settings.RegionSettings`, :class:`~lofiseg.infer.crf_params.CRFParams`, or plain
arguments), whose defaults are the defaults here; the params sections convert to them once
(``schedule.loss_schedule()``, ``train_regions.region_settings()``, ...). Those settings modules are stdlib only:
importing this schema imports no torch (tests/test_package_layers.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

if typing.TYPE_CHECKING:
    from lofiseg.evaluate.semantic import DeepLabScoring
    from lofiseg.losses.regularized import CompleteRegularizedLoss

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lofiseg.infer.crf_params import CRFParams
from lofiseg.infer.region_settings import RegionSettings
from lofiseg.losses.regularized_schedule import (
    BORDER_WIDTH,
    CENTER_SIZE,
    LAMBDA_S,
    VOLUMETRIC_MIN,
    VOLUMETRIC_TARGET,
    RegularizedLossSchedule,
)
from lofiseg.models.catalog import (
    LITE0_ENCODERS,
    SMP_ARCHS,
    TINY_ARCH,
    TORCHVISION_ARCHS,
    list_architectures,
    list_encoders,
)

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
ScaleFactor = Annotated[float, Field(gt=0.0, le=8.0)]  # an image resize factor
Split = Literal["train", "val", "test"]
CLASS_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")
ENCODER_WEIGHTS = ("imagenet", "lite0-imagenet")  # or null, or the path of a state-dict file

# The library's settings objects: their defaults are the defaults of the sections converting to them.
_SCHEDULE = RegularizedLossSchedule()
_REGIONS = RegionSettings()
_CRF = CRFParams()


class ParamsError(ValueError):
    """params.yaml is invalid; the message names every offending key."""


class StrictModel(BaseModel):
    """A params section: unknown keys, wrong types and out-of-range values are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)


def _check_device(value: str) -> str:
    if not DEVICE.match(value):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N (N = 0, 1, ...), got {value!r}")
    return value


Device = Annotated[str, AfterValidator(_check_device)]  # auto | cpu | cuda | cuda:N; LOFISEG_DEVICE overrides


def _amp_value(value: object) -> object:
    if isinstance(value, bool):  # YAML reads a bare off as false
        if value:
            raise ValueError("amp must be bf16, fp16 or off; true does not say which precision")
        return "off"
    return value


Amp = Annotated[Literal["bf16", "fp16", "off"], BeforeValidator(_amp_value)]


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
    # the class object: area fraction (log-uniform in [low, high]), chance it straddles an image edge, and the
    # fraction of the free range around the image centre its centre is drawn from (1 = anywhere)
    object_area: tuple[Annotated[float, Field(gt=0.0, lt=1.0)], Annotated[float, Field(gt=0.0, lt=1.0)]] = (0.15, 0.60)
    border_prob: Probability = 0.1
    centre_spread: Probability = 0.4

    @field_validator("object_area")
    @classmethod
    def _ordered(cls, area: tuple[float, float]) -> tuple[float, float]:
        if area[0] > area[1]:
            raise ValueError(f"object_area must be [low, high] with low <= high, got {list(area)}")
        return area


class SyntheticScenes(SplitSizes):
    train: Annotated[int, Field(ge=0)] = 96
    val: Annotated[int, Field(ge=0)] = 24
    test: Annotated[int, Field(ge=0)] = 48
    min_objects: PositiveInt = 2
    max_objects: PositiveInt = 4


class SyntheticRegions(SplitSizes):
    train: Annotated[int, Field(ge=0)] = 160
    val: Annotated[int, Field(ge=0)] = 20
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
    layout: Literal["lofiseg", "sod", "semantic", "voc", "pet", "bsds"] = "lofiseg"
    images: str | None = None  # glob, relative to the unpacked tree, of the images
    masks: str | None = None  # pattern of the mask of an image: "{stem}" is the image's file stem
    split: Split | None = None  # every sample goes to this split ...
    split_files: dict[Split, str] = Field(default_factory=dict)  # ... or id lists per split
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # carved from train, deterministically
    classes: list[str] | None = None  # semantic sets: the name of each mask id 0, 1, ... (VOC: built in)
    void_value: Annotated[int, Field(ge=0, le=254)] | None = None  # layout semantic: this id -> 255 (MSRC: 0)
    tags_file: str | None = None  # CSV in the tree: an `id` column and tags_column (";"-separated tags)
    tags_column: Annotated[str, Field(min_length=1)] = "tags"  # e.g. MSRC groups.csv: object
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
        if self.layout == "semantic" and not self.classes:
            raise ValueError("layout 'semantic' needs 'classes': the name of each mask id 0, 1, ...")
        if self.void_value is not None and (self.layout != "semantic" or self.void_value >= len(self.classes or [])):
            raise ValueError(f"void_value {self.void_value} needs layout 'semantic' and must be a mask id "
                             f"0..{len(self.classes or []) - 1} of 'classes'")
        if "tags_column" in self.model_fields_set and self.tags_file is None:
            raise ValueError("tags_column needs tags_file (the CSV holding that column)")
        if self.source == "synthetic" and self.tags_file is not None:
            raise ValueError("source 'synthetic' takes no 'tags_file' (its generator tags its images)")
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

def decimal_rates(value: Any) -> Any:
    """dvc.yaml's foreach names stages and paths by str(item): 0.0 -> "noise@0.0". Integers (0, 1) would
    give "0" where rate_key() says "0.0", so rates are written as decimals."""
    if isinstance(value, list):
        for rate in value:
            if not isinstance(rate, float):
                raise ValueError(f"write every rate as a decimal (e.g. 0.0, 1.0), got {rate!r}")
    return value


class NoiseParams(StrictModel):
    dataset: str = "saliency"  # which downloaded data set gets low-fidelity copies
    rates: list[Probability] = Field(default_factory=lambda: [0.0, 0.5], min_length=1)
    boundary_px: Annotated[int, Field(ge=-16, le=16)] = 0  # > 0 dilates, < 0 erodes every region by k px
    drop_region_prob: Probability = 0.0  # chance a region of an image becomes ignore (255)

    @field_validator("rates", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        return decimal_rates(value)

    @field_validator("rates")
    @classmethod
    def _unique(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError(f"rates must be unique, got {value}")
        return value


class AuditParams(StrictModel):
    """``audit@<rate>`` (issue 16, beyond the papers): the CAS model of each noisy copy audits its train masks."""

    min_score: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # flag when relabelled explains it better by more
    grid_samples: Annotated[int, Field(ge=1, le=32)] = 4  # report grid: this many most and least confident flags
    retrain_rates: list[Probability] = Field(default_factory=list)  # train_audited@<rate>: CE on the audited copy

    @field_validator("retrain_rates", mode="before")
    @classmethod
    def _decimal(cls, value: Any) -> Any:
        return decimal_rates(value)


# --- models, tracking, training -------------------------------------------------------------------------

class ModelParams(StrictModel):
    """Arguments of :func:`lofiseg.models.factory.build_model` (num_classes comes from the stage)."""

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
        if value not in list_architectures():
            raise ValueError(f"arch must be one of {list_architectures()}, got {value!r}")
        return value

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str | None, info: ValidationInfo) -> str | None:
        arch = info.data.get("arch")
        if arch is None:  # the arch is invalid: reported on its own
            return value
        if arch in SMP_ARCHS and value not in list_encoders(arch):
            raise ValueError(f"arch {arch!r} needs an encoder, one of {list_encoders(arch)}, got {value!r}")
        if arch in TORCHVISION_ARCHS and value not in (None, TORCHVISION_ARCHS[arch]):
            raise ValueError(f"arch {arch!r} has the fixed encoder {TORCHVISION_ARCHS[arch]!r}: encoder must be "
                             f"null or {TORCHVISION_ARCHS[arch]!r}, got {value!r}")
        if arch == TINY_ARCH and value is not None:
            raise ValueError(f"arch {arch!r} has its own encoder: encoder must be null, got {value!r}")
        return value

    @field_validator("encoder_weights")
    @classmethod
    def _known_weights(cls, value: str | None, info: ValidationInfo) -> str | None:
        allowed = f"null, {', '.join(ENCODER_WEIGHTS)} or the path of an existing state-dict file"
        if value is not None and value not in ENCODER_WEIGHTS and not Path(value).is_file():
            raise ValueError(f"encoder_weights must be {allowed}; no such file: {value!r}")
        arch, encoder = info.data.get("arch"), info.data.get("encoder")
        if value in ENCODER_WEIGHTS and arch == TINY_ARCH:
            raise ValueError(f"arch {arch!r} has no pretrained weights: encoder_weights must be null or a file, "
                             f"got {value!r}")
        if value == "lite0-imagenet" and arch is not None and encoder not in LITE0_ENCODERS:
            raise ValueError(f"encoder_weights 'lite0-imagenet' needs encoder in {list(LITE0_ENCODERS)}, got "
                             f"encoder {encoder!r}; use {allowed}")
        return value


class OptimizerParams(StrictModel):
    """The optimiser of a training section, built by :func:`lofiseg.train.optim.build_optimizer`: Adam (the
    default) or SGD with ``momentum``; ``weight_decay`` is L2 on the weights for both. DeepLab's own setting
    (Chen et al. 2018) is ``{name: sgd, momentum: 0.9, weight_decay: 5.0e-4}``."""

    name: Literal["adam", "sgd"] = "adam"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd only
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0


class TrackingParams(StrictModel):
    enabled: bool = True
    required: bool = True  # store unreachable: fail fast (true) or train without tracking and say so (false)
    experiment_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = "lofiseg"


class RunnerParams(StrictModel):
    """Where a training section runs and how (the :class:`~lofiseg.train.loop.Trainer`'s options)."""

    device: Device = "auto"  # the LOFISEG_DEVICE env var overrides
    amp: Amp = "off"  # autocast: bf16 (CPU or CUDA) | fp16 (CUDA only, with a GradScaler) | off
    channels_last: bool = False  # NHWC model and images: faster convolutions on GPUs
    cudnn_benchmark: bool = False  # cuDNN autotuning on CUDA: faster, but a resumed run is not bit-exact

    def runner(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`lofiseg.train.run.TrainingRun.fit` these params set (not device)."""
        return {"amp": self.amp, "channels_last": self.channels_last, "cudnn_benchmark": self.cudnn_benchmark}


class TrainSaliencyParams(RunnerParams):
    losses: list[Literal["ce", "cace", "cas"]] = Field(default_factory=lambda: ["ce", "cace", "cas"], min_length=1)
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    optimizer: OptimizerParams = OptimizerParams()
    alpha: Probability = 0.1  # CAS Eq. 1
    flip: bool = True  # random horizontal flips
    model: ModelParams = ModelParams()
    validate_every: PositiveInt = 1  # validate after every k-th epoch and the last; the trained model is the same

    @field_validator("losses")
    @classmethod
    def _unique_losses(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"losses must be unique, got {value}")
        return value


class RegularizedScheduleParams(StrictModel):
    """Veksler Sec. 3.4: annealing (Eq. 8), normal and negative stages, and the constants of Eq. 4-5.

    Defaults are the library's (:class:`RegularizedLossSchedule`, the loss constants of
    :mod:`lofiseg.losses.regularized`): the paper's values.
    """

    annealing_epochs: Annotated[int, Field(ge=0)] = _SCHEDULE.annealing_epochs  # 0 = start from init_from
    normal_epochs: Annotated[int, Field(ge=0)] = _SCHEDULE.normal_epochs
    negative_epochs: Annotated[int, Field(ge=0)] = _SCHEDULE.negative_epochs  # normal epochs + Eq. 7
    sigma_start: Annotated[float, Field(gt=0.0)] = _SCHEDULE.sigma_start
    sigma_end: Annotated[float, Field(gt=0.0)] = _SCHEDULE.sigma_end
    annealing_lambda_reg: Annotated[float, Field(ge=0.0)] = _SCHEDULE.annealing_lambda_reg
    normal_lambda_reg: Annotated[float, Field(ge=0.0)] = _SCHEDULE.normal_lambda_reg
    lambda_v: Annotated[float, Field(ge=0.0)] = _SCHEDULE.lambda_v
    lambda_p: Annotated[float, Field(ge=0.0)] = _SCHEDULE.lambda_p
    lambda_neg: Annotated[float, Field(ge=0.0)] = _SCHEDULE.lambda_neg
    sigma_rule: Literal["code", "paper"] = _SCHEDULE.sigma_rule
    # Eq. 4: the batch's mean object size is pulled to volumetric_target (paper 0.5, "replace 0.5
    # appropriately" for other size ratios); each image's object to at least volumetric_min (paper 0.15),
    # weighted lambda_s, averaged over the batch (code) or summed (paper)
    volumetric_target: Annotated[float, Field(gt=0.0, lt=1.0)] = VOLUMETRIC_TARGET
    volumetric_min: Annotated[float, Field(ge=0.0, lt=1.0)] = VOLUMETRIC_MIN
    lambda_s: Annotated[float, Field(ge=0.0)] = LAMBDA_S
    min_size_reduction: Literal["mean", "sum"] = "mean"
    # Eq. 5: the border strips' width w and the centre box's side c, in pixels of the network output
    border_width: Annotated[int, Field(ge=1)] = BORDER_WIDTH
    center_size: Annotated[int, Field(ge=1)] = CENTER_SIZE

    @model_validator(mode="after")
    def _min_below_target(self) -> RegularizedScheduleParams:
        if self.volumetric_min > self.volumetric_target:
            raise ValueError(f"volumetric_min {self.volumetric_min} must not exceed volumetric_target "
                             f"{self.volumetric_target}")
        return self

    def loss_schedule(self, *, anneal: bool = True, negatives: bool = True) -> RegularizedLossSchedule:
        """The per-epoch schedule; ``anneal=False`` (weights transferred) drops the annealing stage and
        ``negatives=False`` (no negative images) drops the negative stage."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(RegularizedLossSchedule)}
        if not anneal:
            values["annealing_epochs"] = 0
        if not negatives:
            values["negative_epochs"] = 0
        return RegularizedLossSchedule(**values)

    def loss(self) -> CompleteRegularizedLoss:
        """Eq. 6 (+ Eq. 7) with this section's constants of Eq. 4 and 5 (the schedule sets the weights)."""
        from lofiseg.losses.regularized import CompleteRegularizedLoss  # torch: only where a loss is built

        return CompleteRegularizedLoss(target_fraction=self.volumetric_target, min_fraction=self.volumetric_min,
                                       lambda_s=self.lambda_s, border_width=self.border_width,
                                       center_size=self.center_size, min_size_reduction=self.min_size_reduction)


class FinetuneParams(StrictModel):
    """Train at ``train_single.image_size`` then transfer the weights to a larger size (paper: 128 -> 256)."""

    image_size: Annotated[int, Field(ge=16, le=1024)] = 128
    epochs: Annotated[int, Field(ge=0)] = 0  # normal-stage epochs at image_size; 0 = off


def _single_class_model() -> ModelParams:
    return ModelParams(arch="unet", encoder="tu-tf_efficientnet_lite0", encoder_weights="lite0-imagenet",
                       freeze_encoder=True)


class TrainSingleParams(RunnerParams):
    """``train_single@<class>`` (regularized loss, Eq. 6-8) and ``train_single_gt@<class>`` (CE on ground truth)."""

    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    batch_size: PositiveInt = 16  # the volumetric loss (Eq. 4) averages object size over a batch; paper m = 16
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    optimizer: OptimizerParams = OptimizerParams()
    schedule: RegularizedScheduleParams = RegularizedScheduleParams()
    # null: anneal every class; "<class>": skip annealing, start every class from train_single_init's model,
    # trained with annealing on that class's web images; "<data set>": the same on a data set's train split
    # (the paper's easy-to-fit OxfordPet); or a path to a model.pt.
    init_from: str | None = None
    negatives: bool = True  # the other classes' images are this class's negatives (Eq. 7)
    finetune: FinetuneParams = FinetuneParams()
    gt_epochs: PositiveInt | None = None  # the -gt baseline (CE on ground truth); null: gt_epoch_count()
    flip: bool = True
    recalibrate_bn: bool = False  # recompute BatchNorm statistics over the class's images after training
    model: ModelParams = Field(default_factory=_single_class_model)

    def gt_epoch_count(self) -> int:
        """Epochs of the -gt baseline: ``gt_epochs``, else the regularized model's budget (its schedule's
        annealing unless ``init_from``, normal and negative epochs, plus ``finetune.epochs``): Table 2 compares
        the two supervisions at equal training, as the paper does."""
        if self.gt_epochs is not None:
            return self.gt_epochs
        schedule = self.schedule.loss_schedule(anneal=self.init_from is None, negatives=self.negatives)
        return schedule.total_epochs + self.finetune.epochs


class CRFKernels(StrictModel):
    """The pairwise kernels of a dense CRF (:class:`CRFParams`, pydensecrf's names and its defaults)."""

    gaussian_sxy: Annotated[float, Field(gt=0.0)] = _CRF.gaussian_sxy  # smoothness kernel width, px
    gaussian_compat: Annotated[float, Field(ge=0.0)] = _CRF.gaussian_compat  # its Potts weight
    bilateral_sxy: Annotated[float, Field(gt=0.0)] = _CRF.bilateral_sxy  # appearance kernel width, px
    bilateral_srgb: Annotated[float, Field(gt=0.0)] = _CRF.bilateral_srgb  # its colour width, levels
    bilateral_compat: Annotated[float, Field(ge=0.0)] = _CRF.bilateral_compat  # its Potts weight

    def settings(self, iterations: int) -> CRFParams:
        return CRFParams(iterations=iterations, **self.model_dump())


CRFIterations = Annotated[int, Field(ge=1, le=50)]


class PseudoLabelParams(StrictModel):
    """``pseudo_label@<class>``: class model on its own web images -> pseudo ground truth (Veksler Sec. 4.3)."""

    crf: bool = True  # dense CRF refinement (pydensecrf) of the two-class probabilities
    crf_iterations: CRFIterations = _CRF.iterations
    crf_kernels: CRFKernels = CRFKernels()
    confidence: Annotated[float, Field(ge=0.5, le=1.0)] = 0.5  # max class probability below it -> 255 (ignore)
    splits: list[Split] = Field(default_factory=lambda: ["train", "val"], min_length=1)
    batch_size: PositiveInt = 32

    def crf_settings(self) -> CRFParams | None:
        """The dense CRF of the refinement, None when ``crf`` is off."""
        return self.crf_kernels.settings(self.crf_iterations) if self.crf else None


def _deeplab_model() -> ModelParams:
    return ModelParams(arch="deeplabv3plus", encoder="tu-tf_efficientnet_lite0", encoder_weights="lite0-imagenet",
                       freeze_encoder=False)


class MosaicParams(StrictModel):
    """Per ``train_deeplab@<supervision>``: the chance a training image becomes a 2x2 mosaic of four half-size
    images of its batch (beyond the paper): the web images' one large object becomes scene-like layouts."""

    pseudo: Probability = 0.0
    gt: Probability = 0.0
    web_gt: Probability = 0.0


class TrainDeeplabParams(RunnerParams):
    """``train_deeplab@pseudo`` (union of pseudo ground truth) and ``train_deeplab@gt`` (the upper bound).

    The paper's setting is the "paper setting" comment above ``train_deeplab`` in params.yaml.
    """

    enabled: bool = True  # false: single-class models only (no DeepLab; evaluate_semantic scores the rest)
    gt_dataset: str = "scenes"  # the upper bound's training data: a semantic data set with train/val splits
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    epochs: PositiveInt = 12
    batch_size: PositiveInt = 8
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    optimizer: OptimizerParams = OptimizerParams()
    lr_policy: Literal["constant", "poly"] = "constant"  # poly: DeepLab's lr * (1 - epoch / epochs) ** poly_power
    poly_power: Annotated[float, Field(gt=0.0, le=10.0)] = 0.9
    flip: bool = True
    blur: bool = True
    rescale: tuple[Annotated[float, Field(gt=0.0)], Annotated[float, Field(gt=0.0)]] | None = (0.5, 2.0)
    mosaic: MosaicParams = Field(default_factory=MosaicParams)
    model: ModelParams = Field(default_factory=_deeplab_model)
    validate_every: PositiveInt = 1  # validate after every k-th epoch and the last; the trained model is the same

    @model_validator(mode="after")
    def _mosaic_size(self) -> TrainDeeplabParams:
        used = {name: prob for name, prob in self.mosaic.model_dump().items() if prob > 0}
        if used and self.image_size % 2:
            raise ValueError(f"mosaic {used} tiles four half-size images: image_size must be even, "
                             f"got {self.image_size}")
        return self


class TrainRegionsParams(RunnerParams):
    """``train_regions@<method>``: class-agnostic multi-region models (CAS paper Sec. 5.2-5.3, Dille et al.)."""

    methods: list[Literal["cas", "projective", "ce", "discriminative"]] = Field(
        default_factory=lambda: ["cas", "projective", "ce", "discriminative"], min_length=1)
    dataset: str = "regions"  # region masks with arbitrary ids; train/val/test splits
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 4
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    optimizer: OptimizerParams = OptimizerParams()
    channels: Annotated[int, Field(ge=2, le=255)] = 20  # M output channels of cas / ce (M >= regions)
    embedding_dim: Annotated[int, Field(ge=2, le=512)] = 16  # d of the projective head (paper 128)
    alpha: Probability = 0.1  # CAS Eq. 1
    # inference (RegionSettings, whose defaults these are): see lofiseg.infer.regions
    clustering: Literal["argmax", "kmeans"] = _REGIONS.clustering  # cas / ce: argmax or k-means of the softmax
    max_regions: Annotated[int, Field(ge=2, le=255)] = _REGIONS.max_regions  # clustering (supplement E)
    min_area_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = _REGIONS.min_area_fraction  # CRF absorbs smaller
    bandwidth_degrees: Annotated[float, Field(gt=0.0, lt=90.0)] = _REGIONS.bandwidth_degrees  # Dille mean-shift
    max_points: PositiveInt = _REGIONS.max_points  # mean-shift modes found on a subsample of this many pixels
    # projective / discriminative: cluster at these multiples of image_size, coarse to fine, and keep the
    # coarse regions their finer copies refine (Dille et al. multi-resolution); [1.0] = one resolution
    scales: list[ScaleFactor] = Field(default_factory=lambda: list(_REGIONS.scales), min_length=1)
    crf_iterations: CRFIterations = _REGIONS.crf.iterations  # the small-region merge's dense CRF
    crf_kernels: CRFKernels = CRFKernels()
    flip: bool = True

    @field_validator("scales")
    @classmethod
    def _increasing(cls, scales: list[float]) -> list[float]:
        if scales != sorted(set(scales)):
            raise ValueError(f"scales must be strictly increasing, got {scales}")
        return scales
    model: ModelParams = Field(default_factory=lambda: ModelParams(
        arch="unet", encoder="tu-tf_efficientnet_lite0", encoder_weights="lite0-imagenet", freeze_encoder=True))
    validate_every: PositiveInt = 1  # validate after every k-th epoch and the last; the trained model is the same

    def region_settings(self, seed: int, info: dict | None = None) -> RegionSettings:
        """The inference settings; ``info`` (the trained model's info.json) gives the discriminative
        bandwidth, its delta_d."""
        extra = {"embedding_bandwidth": float(info["delta_d"])} if info and "delta_d" in info else {}
        return RegionSettings(max_regions=self.max_regions, min_area_fraction=self.min_area_fraction,
                              bandwidth_degrees=self.bandwidth_degrees, clustering=self.clustering,
                              scales=tuple(self.scales), max_points=self.max_points, seed=seed,
                              crf=self.crf_kernels.settings(self.crf_iterations), **extra)


class GateParams(StrictModel):
    """Promotion gate: the challenger becomes champion only if it beats the champion by ``min_improvement``."""

    metric: Annotated[str, Field(min_length=1)]  # "/"-separated path into the metrics JSON
    direction: Literal["maximize", "minimize"] = "maximize"
    min_improvement: Annotated[float, Field(ge=0.0)] = 0.0


class ServeParams(StrictModel):
    """How a registered model predicts (lofiseg.infer.served): test-time scales and flip, as it was evaluated."""

    scales: list[ScaleFactor] = Field(default_factory=lambda: [1.0], min_length=1)
    flip: bool = False


class RegisteredModel(StrictModel):
    bundle: Annotated[str, Field(min_length=1)]  # folder holding model.pt
    metrics: Annotated[str, Field(min_length=1)]  # metrics JSON the gate reads
    eval_data: Annotated[str, Field(min_length=1)]  # the evaluation set; its DVC hash names it
    # params keys that change how the gate metric is measured (e.g. evaluate.semantic_scales): their values are
    # part of the evaluation identity, so a metric measured another way is never compared with the champion's
    eval_params: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    gate: GateParams
    serve: ServeParams = Field(default_factory=ServeParams)  # the registered model's test-time inference


class RegistryParams(StrictModel):
    """``registry`` (stage ``register``): models into the MLflow registry, alias ``challenger``; ``champion`` moves by the gate."""

    enabled: bool = True
    models: dict[str, RegisteredModel] = Field(default_factory=dict)
    # the git branch champion may move from; a DVC experiment or any other branch registers challengers only
    promote_from: Annotated[str, Field(min_length=1)] = "main"

    @field_validator("models")
    @classmethod
    def _names(cls, value: dict[str, RegisteredModel]) -> dict[str, RegisteredModel]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9_.-]+$", name):
                raise ValueError(f"registered model name {name!r} must match ^[A-Za-z0-9_.-]+$")
        return value


class RetrainParams(StrictModel):
    """The Prefect ``retrain`` deployment (flows/retrain.py)."""

    cron: Annotated[str, Field(min_length=9)] = "0 3 * * 1"  # weekly, Monday 03:00
    timezone: str = "UTC"
    work_pool: Annotated[str, Field(min_length=1)] = "gpu"
    dvc_remote: str | None = None  # null: the default remote; pull at start, push at the end
    push: bool = True
    git_remote: Annotated[str, Field(min_length=1)] = "origin"  # where the retrain/<date>-<run> branch is pushed


class StagePolicy(StrictModel):
    """How the Prefect flows run one stage: more attempts after a failure, and the time its command may take."""

    retries: Annotated[int, Field(ge=0, le=20)] = 0
    retry_delay_seconds: Annotated[int, Field(ge=0)] = 10
    timeout_seconds: Annotated[int, Field(ge=1)] = 6 * 3600


def _default_stage_policies() -> dict[str, StagePolicy]:
    return {"download": StagePolicy(retries=2), "web": StagePolicy(retries=2), "train_*": StagePolicy()}


class OrchestrationParams(StrictModel):
    """``orchestration`` (flows/pipeline.py, flows/worker.py): per-stage retries and timeout. No stage reads it
    (it is no DVC param of any stage): it changes no number."""

    stages: dict[str, StagePolicy] = Field(default_factory=_default_stage_policies)  # fnmatch pattern -> policy

    @field_validator("stages")
    @classmethod
    def _patterns(cls, value: dict[str, StagePolicy]) -> dict[str, StagePolicy]:
        for pattern in value:
            if not pattern or pattern != pattern.strip():
                raise ValueError(f"stage pattern {pattern!r} must be a non-empty fnmatch pattern without "
                                 "surrounding spaces (e.g. train_*, pseudo_label@*)")
        return value

    def stage_policy(self, stage: str) -> StagePolicy:
        """The policy of the first pattern, in params order, matching ``stage`` (DVC's name, e.g.
        ``train_single@sun``); the defaults (no retry, 6 h) if none does."""
        return next((policy for pattern, policy in self.stages.items() if fnmatch.fnmatchcase(stage, pattern)),
                    StagePolicy())


class EvaluateParams(StrictModel):
    saliency_sets: list[str] = Field(default_factory=lambda: ["saliency"])  # data sets with a test split
    semantic_sets: list[str] = Field(default_factory=lambda: ["scenes"])  # DeepLab mIoU on their test split
    regions_sets: list[str] = Field(default_factory=lambda: ["regions"])  # region metrics on their test split
    splits: dict[str, Split] = Field(default_factory=dict)  # data set -> the split scored instead of test (VOC: val)
    # ODS / OIS over these max_regions (the clustering parameter, BSDS benchmark); [] = the model's own: ODS = OIS
    regions_sweep: list[Annotated[int, Field(ge=1, le=255)]] = Field(default_factory=list)
    # DeepLab test-time inference: softmax averaged over the input resized by each factor (and mirrored with
    # semantic_flip), as DeepLab's multi-scale evaluation; [1.0] and false = one plain forward pass
    semantic_scales: list[ScaleFactor] = Field(default_factory=lambda: [1.0], min_length=1)
    semantic_flip: bool = False
    batch_size: PositiveInt = 32
    grid_samples: Annotated[int, Field(ge=1, le=32)] = 6

    @model_validator(mode="after")
    def _split_of_evaluated_sets(self) -> EvaluateParams:
        evaluated = {*self.saliency_sets, *self.semantic_sets, *self.regions_sets}
        unknown = sorted(set(self.splits) - evaluated)
        if unknown:
            raise ValueError(f"splits names {unknown}, which no evaluate.*_sets lists: {sorted(evaluated)}")
        return self

    def split_of(self, name: str) -> str:
        """The split of data set ``name`` that is scored: ``splits[name]``, else test."""
        return self.splits.get(name, "test")


# --- web -------------------------------------------------------------------------------------------------

class WebClassSource(StrictModel):
    """Where the images of one class come from (:class:`lofiseg.data.web.WebSource`).

    ``path``: the local folder, ``s3://bucket/prefix``, or the URL manifest (a text file with one URL per
    line, or a CSV with a ``url`` column; lines starting with ``#`` are comments). None for ``synthetic``.
    ``dataset``: the images of download.datasets ``name`` tagged ``tag``, their masks reduced to class
    ``label`` (default: the web class's name) vs the rest: the class's ground truth, never seen by ``reg``.
    """

    kind: Literal["synthetic", "local", "s3", "urls", "dataset"]
    path: Annotated[str, Field(min_length=1)] | None = None
    name: Annotated[str, Field(min_length=1)] | None = None  # kind dataset: a semantic data set of download
    tag: Annotated[str, Field(min_length=1)] | None = None  # kind dataset: its images with this tag
    label: Annotated[str, Field(min_length=1)] | None = None  # kind dataset: its class of the object pixels

    @model_validator(mode="after")
    def _path_for_kind(self) -> WebClassSource:
        given = [k for k in ("name", "tag", "label") if getattr(self, k) is not None]
        if self.kind == "dataset":
            if self.path is not None or self.name is None or self.tag is None:
                raise ValueError(f"kind 'dataset' takes 'name' (a data set of download.datasets) and 'tag' (its "
                                 f"images tagged so), optionally 'label', and no 'path'; got path={self.path!r}, "
                                 f"name={self.name!r}, tag={self.tag!r}")
            return self
        if given:
            raise ValueError(f"{given} go with kind 'dataset' only, not kind {self.kind!r}")
        if self.kind == "synthetic":
            if self.path is not None:
                raise ValueError(f"kind 'synthetic' takes no 'path' (its images come from the synthetic web "
                                 f"data set), got path={self.path!r}")
            return self
        if self.path is None:
            what = {"local": "a folder", "s3": "s3://bucket/prefix", "urls": "a URL manifest file"}[self.kind]
            raise ValueError(f"kind {self.kind!r} needs 'path' ({what})")
        if self.kind == "s3" and (not self.path.startswith("s3://") or not urlsplit(self.path).netloc):
            raise ValueError(f"kind 's3': path must be s3://bucket/prefix, got {self.path!r}")
        if self.kind in ("local", "urls") and "://" in self.path:
            raise ValueError(f"kind {self.kind!r}: path must be a local file system path, got {self.path!r}")
        return self


class WebParams(StrictModel):
    """The ``web:`` section: one source per class, plus download and filter settings
    (:class:`lofiseg.data.web.WebOptions`, what :func:`lofiseg.data.web.collect_web_images` reads)."""

    classes: Annotated[dict[str, WebClassSource], Field(min_length=1)]
    workers: Annotated[int, Field(ge=1, le=64)] = 8  # concurrent downloads
    retries: Annotated[int, Field(ge=0, le=20)] = 3  # more attempts after a transient failure
    backoff_seconds: Annotated[float, Field(ge=0.0)] = 0.5  # before retry k (1, 2, ...): backoff * 2**(k-1)
    timeout_seconds: Annotated[float, Field(gt=0.0)] = 10.0  # connect, and each read
    min_side: Annotated[int, Field(ge=1)] = 32  # both image sides must be at least this many pixels
    max_images_per_class: Annotated[int, Field(ge=1)] | None = None  # first N accepted, in source order
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # of each class's train images, by sha256

    @field_validator("classes")
    @classmethod
    def _class_names(cls, value: dict[str, WebClassSource]) -> dict[str, WebClassSource]:
        for name in value:
            if not CLASS_NAME.match(name):
                raise ValueError(f"class name {name!r} must match {CLASS_NAME.pattern}")
        return value


def _default_web() -> WebParams:
    return WebParams(classes={name: WebClassSource(kind="synthetic")
                              for name in SyntheticParams().classes})


# --- the whole file ---------------------------------------------------------------------------------------

class Params(StrictModel):
    seed: Annotated[int, Field(ge=0)] = 0
    synthetic: SyntheticParams = SyntheticParams()
    download: DownloadParams
    noise: NoiseParams = NoiseParams()
    audit: AuditParams = AuditParams()
    tracking: TrackingParams = TrackingParams()
    train_saliency: TrainSaliencyParams = TrainSaliencyParams()
    web: WebParams = Field(default_factory=_default_web)
    train_single: TrainSingleParams = TrainSingleParams()
    pseudo_label: PseudoLabelParams = PseudoLabelParams()
    train_deeplab: TrainDeeplabParams = TrainDeeplabParams()
    train_regions: TrainRegionsParams = TrainRegionsParams()
    evaluate: EvaluateParams = EvaluateParams()
    registry: RegistryParams = RegistryParams()
    retrain: RetrainParams = RetrainParams()
    orchestration: OrchestrationParams = OrchestrationParams()

    @model_validator(mode="after")
    def _cross_refs(self) -> Params:
        enabled = self.download.enabled()
        deeplab = self.train_deeplab.enabled  # gt_dataset and semantic_sets serve the multi-class part only
        refs = [("noise.dataset", self.noise.dataset), ("train_deeplab.gt_dataset", self.train_deeplab.gt_dataset),
                ("train_regions.dataset", self.train_regions.dataset)]
        for field_name in ("saliency_sets", "semantic_sets", "regions_sets"):
            refs += [(f"evaluate.{field_name}[{i}]", n) for i, n in enumerate(getattr(self.evaluate, field_name))]
        multi_class = ("train_deeplab.gt_dataset", "evaluate.semantic_sets")
        refs = [(key, name) for key, name in refs if deeplab or not key.startswith(multi_class)]
        for key, name in refs:
            if name not in enabled:
                raise ValueError(f"{key} {name!r} is not an enabled data set in download.datasets; "
                                 f"enabled: {sorted(enabled)}")
        for cls, source in self.web.classes.items():
            if source.kind == "dataset" and source.name not in enabled:
                raise ValueError(f"web.classes.{cls}.name {source.name!r} is not an enabled data set in "
                                 f"download.datasets; enabled: {sorted(enabled)}")
        if "cas" not in self.train_saliency.losses:
            raise ValueError("audit@<rate> runs each rate's CAS model: train_saliency.losses must hold 'cas'")
        if set(self.audit.retrain_rates) - set(self.noise.rates):
            raise ValueError(f"audit.retrain_rates {self.audit.retrain_rates} must be among noise.rates "
                             f"{self.noise.rates}")
        synthetic_web = [n for n, s in self.web.classes.items() if s.kind == "synthetic"]
        if synthetic_web and "web" not in enabled:
            raise ValueError(f"web.classes {synthetic_web} come from the synthetic web set, but 'web' is not an "
                             f"enabled data set in download.datasets")
        unknown = [n for n in synthetic_web if n not in self.synthetic.classes]
        if unknown:
            raise ValueError(f"web.classes {unknown}: kind 'synthetic' needs a class of synthetic.classes "
                             f"{self.synthetic.classes}")
        semantic = [("train_deeplab.gt_dataset", self.train_deeplab.gt_dataset)] + [
            (f"evaluate.semantic_sets[{i}]", n) for i, n in enumerate(self.evaluate.semantic_sets)]
        for key, name in semantic if deeplab else []:
            try:
                names = self.dataset_classes(name)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
            if not set(self.web.classes) & set(names):
                raise ValueError(f"{key} {name!r}: none of its classes {names} is in web.classes "
                                 f"{list(self.web.classes)}; for single-class models only, set "
                                 f"train_deeplab.enabled: false")
        for name, model in self.registry.models.items():
            for i, dotted in enumerate(model.eval_params):
                try:
                    self.value_at(dotted)
                except KeyError:
                    raise ValueError(f"registry.models.{name}.eval_params[{i}] {dotted!r} is not a params key") from None
        init = self.train_single.init_from
        if init is not None and init not in self.web.classes and init not in enabled and not init.endswith(".pt"):
            raise ValueError(f"train_single.init_from {init!r} must be null, a class of web.classes "
                             f"{list(self.web.classes)}, an enabled data set {sorted(enabled)} or a path to a "
                             f"model.pt")
        return self

    def value_at(self, dotted: str) -> Any:
        """The value of the dotted params key ``dotted`` (e.g. ``evaluate.semantic_flip``); KeyError if absent."""
        node: Any = self.model_dump(mode="json")
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(dotted)
            node = node[part]
        return node

    def semantic_classes(self) -> list[str]:
        """The multi-class label space: 0 background, then web.classes in params order (ids 1..K)."""
        return ["background", *self.web.classes]

    def deeplab_scoring(self) -> DeepLabScoring:
        """How ``evaluate_semantic`` scores a DeepLab: section ``evaluate`` and the label spaces."""
        from lofiseg.evaluate.semantic import DeepLabScoring  # 3 s of imports (metrics, torchvision) no other
                                                              # stage that reads params needs
        cfg = self.evaluate
        return DeepLabScoring(self.semantic_classes(), {name: self.dataset_classes(name) for name in cfg.semantic_sets},
                              cfg.batch_size, cfg.semantic_scales, cfg.semantic_flip, cfg.grid_samples,
                              {name: cfg.split_of(name) for name in cfg.semantic_sets})

    def dataset_classes(self, name: str) -> list[str]:
        """The class name of each mask id of semantic data set ``name``: its ``classes`` entry, else the
        synthetic scenes' ``background`` + ``synthetic.classes``, else the VOC names for the voc layout."""
        from lofiseg.data.masks import VOC_CLASSES

        spec = self.download.datasets.get(name)
        if spec is None:
            raise ValueError(f"data set {name!r} is not in download.datasets")
        if spec.classes is not None:
            return list(spec.classes)
        if spec.source == "synthetic" and spec.generator == "scenes":
            return ["background", *self.synthetic.classes]
        if spec.layout == "voc":
            return list(VOC_CLASSES)
        raise ValueError(f"download.datasets.{name}: not a semantic data set; give its label names in "
                         f"download.datasets.{name}.classes")


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
