"""Single-class segmentation from image-level tags only (Veksler, Sec. 3.4 and 4.3): the training plan of one
class model, its regularized-loss step with negative images, and the helpers around them.

* :func:`training_plan`: every epoch's loss parameters and image size. The annealing stage (Eq. 8: sigma
  rises, all lambdas 1), the normal stage (``lambda_reg = 100``, ``sigma = 0.15``), the negative stage (the
  normal stage plus Eq. 7 on the other classes' images, ``lambda_neg = 2``), then optionally the same weights
  transferred to a larger image size (paper: 128 -> 256 px) for more normal(+negative) epochs. A model
  initialised from another one (``init_from``) skips annealing (Sec. 4.1, "Replacing the Annealing Stage").
* :func:`paired_batches`: each shuffled batch of the class's images followed by as many negative images
  (other classes, image-level "not this class"), flagged by a bool ``negative`` tensor, as
  :func:`lofiseg.losses.regularized.complete_regularized_terms` expects.
* :class:`RegularizedStep`: the Trainer's step function for Eq. 6 (+ Eq. 7), with per-epoch means of every term.

Nothing here opens a mask: the regularized models see images and tags only.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lofiseg.atomic import atomic_dir, atomic_write_json
from lofiseg.data.decode_cache import cached_load_split
from lofiseg.data.format import IGNORE, Dataset, Record, sha256_file
from lofiseg.data.labels import negative_records
from lofiseg.data.loading import Augment, TensorSplit, iterate_batches, random_crops
from lofiseg.losses.regularized import CompleteRegularizedLoss, RegularizedLossSchedule, StageParams
from lofiseg.models.bundle import load_bundle
from lofiseg.models.factory import IMAGENET_MEAN, IMAGENET_STD, SegmentationModel

log = logging.getLogger(__name__)

TERMS = ("sparse_crf", "volumetric", "positional", "negative")
ARCH_KEYS = ("arch", "num_classes", "encoder", "width", "encoder_depth", "normalize_input")


# --- data -------------------------------------------------------------------------------------------------

def loss_image(images: Tensor) -> Tensor:
    """The colours the regularized losses compare (Eq. 2): images in [0, 1], ImageNet-normalised.

    Sigma (0.05 .. 0.15) is calibrated in units of the ImageNet per-channel std, as in the author's code, so
    this is ImageNet normalisation whatever the network's own input normalisation (e.g. [-1, 1] for the
    EfficientNet-Lite encoders).
    """
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def gt_labels(mask: Tensor) -> Tensor:
    """Ground truth of the ``-gt`` baseline: every object label > 0 -> 1 (foreground), 255 stays ignore."""
    return torch.where(mask == IGNORE, mask, (mask > 0).to(mask.dtype))


def negative_indices(count: int, needed: int, generator: torch.Generator) -> Tensor:
    """``needed`` indices into ``count`` negatives: consecutive random permutations, so every negative is used
    once before any is used twice."""
    if count < 1:
        raise ValueError(f"count must be >= 1 negative image, got {count}")
    rounds = max(1, math.ceil(needed / count))
    return torch.cat([torch.randperm(count, generator=generator) for _ in range(rounds)])[:needed]


def paired_batches(positives: TensorSplit, negatives: TensorSplit | None, batch_size: int,
                   generator: torch.Generator, augment: Sequence[Augment] = ()) -> Iterator[dict[str, Tensor]]:
    """Shuffled batches of ``positives``, each followed by as many images of ``negatives`` (when given).

    Yields ``{"image": uint8 (B + b, 3, S, S), "negative": bool (B + b,), "index": long (B,)}``: the first B
    rows are the class's images (``negative`` False), the last b = B rows negatives. No masks are read.
    """
    if positives.masks is not None:
        raise ValueError("positives must be loaded without masks (with_masks=False): the regularized loss never "
                         "sees ground truth")
    order = None
    if negatives is not None:
        if negatives.crop_size != positives.crop_size:
            raise ValueError(f"negatives have size {negatives.crop_size}, positives {positives.crop_size}")
        order = negative_indices(len(negatives), len(positives), generator)
    start = 0
    for batch in iterate_batches(positives, batch_size, generator, shuffle=True):
        size = int(batch["image"].shape[0])
        flags = torch.zeros(size, dtype=torch.bool)
        if order is not None:
            picked = order[start:start + size]
            start += size
            chosen = (negatives.images[picked] if negatives.extents is None
                      else random_crops(negatives, picked, generator)[0])
            batch["image"] = torch.cat([batch["image"], chosen])
            flags = torch.cat([flags, torch.ones(len(picked), dtype=torch.bool)])
        batch["negative"] = flags
        for aug in augment:
            batch = aug(batch, generator)
        yield batch


# --- the plan ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochPlan:
    """One epoch: the loss parameters in force, the image size trained at, and whether negatives are mixed in."""

    stage: StageParams
    image_size: int
    negatives: bool
    phase: str = "train"  # "train" at image_size, "finetune" at the transfer size

    def metrics(self) -> dict[str, float]:
        return {"sigma": self.stage.sigma, "lambda_reg": self.stage.lambda_reg, "lambda_v": self.stage.lambda_v,
                "lambda_p": self.stage.lambda_p, "lambda_neg": self.stage.lambda_neg,
                "image_size": float(self.image_size)}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.stage), "image_size": self.image_size, "negatives": self.negatives,
                "phase": self.phase}


def training_plan(schedule: RegularizedLossSchedule, image_size: int, finetune_size: int | None = None,
                  finetune_epochs: int = 0, negatives: bool = False) -> list[EpochPlan]:
    """Every epoch of one class model: ``schedule`` at ``image_size``, then ``finetune_epochs`` normal-stage
    epochs at ``finetune_size`` (the weights transferred to larger images), with the negative loss when
    ``negatives`` (and the schedule has a negative stage) - as the epochs just before them."""
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    if finetune_epochs and finetune_size is None:
        raise ValueError("finetune_size is required when finetune_epochs > 0")
    with_negatives = negatives and schedule.negative_epochs > 0
    plan = [EpochPlan(p, image_size, p.stage == "negative") for p in schedule.stages()]
    for _ in range(finetune_epochs):
        stage = StageParams("negative" if with_negatives else "normal", len(plan), schedule.sigma_end,
                            schedule.normal_lambda_reg, schedule.lambda_v, schedule.lambda_p,
                            schedule.lambda_neg if with_negatives else 0.0)
        plan.append(EpochPlan(stage, int(finetune_size), with_negatives, "finetune"))
    if not plan:
        raise ValueError("the training plan has no epoch: set some normal_epochs (or annealing/finetune epochs)")
    return plan


@dataclass
class RegularizedTraining:
    """One class model's run: its plan, and each epoch's batches of the class's images at the plan's size
    (``positives(size)``), paired with negatives (``negatives(size)``) in negative epochs."""

    plan: list[EpochPlan]
    schedule: RegularizedLossSchedule
    positives: Callable[[int], TensorSplit]
    negatives: Callable[[int], TensorSplit] | None
    batch_size: int
    augment: Sequence[Augment] = ()

    @classmethod
    def build(cls, schedule: RegularizedLossSchedule, positives: Callable[[int], TensorSplit],
              negatives: Callable[[int], TensorSplit] | None, *, image_size: int, finetune_size: int,
              finetune_epochs: int, batch_size: int, augment: Sequence[Augment] = ()) -> RegularizedTraining:
        """:func:`training_plan` of ``schedule`` at ``image_size`` (+ finetune), negatives when given."""
        plan = training_plan(schedule, image_size, finetune_size, finetune_epochs, negatives is not None)
        return cls(plan, schedule, positives, negatives, batch_size, augment)

    def batches(self, epoch: int, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
        """Epoch ``epoch``'s :func:`paired_batches`, shuffled and augmented by ``generator`` (the epoch's)."""
        entry = self.plan[epoch]
        neg = self.negatives(entry.image_size) if entry.negatives and self.negatives is not None else None
        return paired_batches(self.positives(entry.image_size), neg, self.batch_size,
                              generator, self.augment)

    def epoch_info(self, epoch: int) -> dict[str, str]:
        return {"stage": self.plan[epoch].stage.stage, "phase": self.plan[epoch].phase}

    def record(self, loss: CompleteRegularizedLoss) -> dict[str, Any]:
        """The schedule (and ``loss``'s volumetric sizes, Eq. 4) as info.json records it."""
        finetune = [p for p in self.plan if p.phase == "finetune"]
        schedule = self.schedule
        return {"annealing_epochs": schedule.annealing_epochs, "normal_epochs": schedule.normal_epochs,
                "negative_epochs": schedule.negative_epochs, "finetune_epochs": len(finetune),
                "finetune_image_size": finetune[0].image_size if finetune else None,
                "sigma_start": schedule.sigma_start, "sigma_end": schedule.sigma_end,
                "sigma_rule": schedule.sigma_rule, "normal_lambda_reg": schedule.normal_lambda_reg,
                "lambda_neg": schedule.lambda_neg, "volumetric_target": loss.target_fraction,
                "volumetric_min": loss.min_fraction}


def negative_loader(dataset: Dataset, cls: str) -> tuple[Callable[[int], TensorSplit] | None, int]:
    """The other classes' train images as negatives of ``cls`` (Eq. 7): their loader and count; (None, 0) with a
    warning when the set holds no other class."""
    records = negative_records(dataset, cls)
    if not records:
        log.warning("class %r: no image of another class in %s; training without negatives", cls, dataset.root)
        return None, 0
    return split_loader(dataset, records, f"load negatives of {cls}"), len(records)


def install_init_model(source: str, out: Path, reference: SegmentationModel, what: str) -> None:
    """A start model given as a file (``init_from: path.pt``): checked against ``reference``'s architecture
    (:func:`transfer_weights`), then copied into ``out`` with its info, its sha256 and ``init.json``."""
    path = Path(source)
    loaded, loaded_info = load_bundle(path)
    transfer_weights(reference, loaded, what)
    with atomic_dir(out) as tmp:
        shutil.copyfile(path, tmp / "model.pt")
        atomic_write_json(tmp / "info.json", {"init_from": source, "kind": "path", "source_info": loaded_info,
                                              "sha256": sha256_file(path)})
        atomic_write_json(tmp / "init.json", {"init_from": source, "kind": "path"})
    log.info("init model %s checked and copied to %s", path, out)


def split_loader(dataset: Dataset, records: list[Record], desc: str) -> Callable[[int], TensorSplit]:
    """``size -> images`` of ``records`` (no masks), decoded once per size."""
    cache: dict[int, TensorSplit] = {}

    def load(size: int) -> TensorSplit:
        if size not in cache:
            cache[size] = cached_load_split(dataset, records, size, with_masks=False, desc=f"{desc} {size}px")
        return cache[size]

    return load


# --- the step ---------------------------------------------------------------------------------------------

class RegularizedStep:
    """Trainer step (model, batch, epoch) -> loss for the complete loss (Eq. 6, + Eq. 7 on ``batch["negative"]``)
    at ``plan[epoch]``; :meth:`epoch_metrics` gives (and resets) the epoch's mean of every term."""

    def __init__(self, plan: Sequence[EpochPlan], loss: CompleteRegularizedLoss | None = None) -> None:
        self.plan = list(plan)
        self.loss = loss if loss is not None else CompleteRegularizedLoss()
        self._sums: dict[str, float] = {}
        self._count = 0

    def __call__(self, model: torch.nn.Module, batch: Mapping[str, Tensor], epoch: int) -> Tensor:
        self.loss.set_stage(self.plan[epoch].stage)
        images = batch["image"]
        negative = batch.get("negative")
        if negative is not None and not bool(negative.any()):
            negative = None
        terms = self.loss.terms(model(images), loss_image(images), negative)
        for name in TERMS:
            self._sums[name] = self._sums.get(name, 0.0) + float(getattr(terms, name).detach())
        self._count += 1
        return terms.total

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        out = {f"loss_{name}": self._sums.get(name, 0.0) / max(self._count, 1) for name in TERMS}
        self._sums, self._count = {}, 0
        return {**out, **self.plan[epoch].metrics()}


# --- weight transfer --------------------------------------------------------------------------------------

def transfer_weights(model: SegmentationModel, source: SegmentationModel, where: str) -> None:
    """Copy ``source``'s weights into ``model`` (the init_from transfer); the architectures must match."""
    for key in ARCH_KEYS:
        ours, theirs = model.config.get(key), source.config.get(key)
        if ours != theirs:
            raise ValueError(f"{where}: init model has {key}={theirs!r}, but train_single.model builds "
                             f"{key}={ours!r}; retrain models/single/init with the same model params")
    model.load_state_dict(source.state_dict())
