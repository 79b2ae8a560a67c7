"""Data-parallel training under torch's launcher (``torchrun --nproc_per_node N -m stages.<stage> ...``).

torchrun starts N copies of a stage and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; without them a stage runs as one process and every helper here is a no-op.

The scheme keeps a run independent of the number of processes:

- Every rank builds the same *global* batch (same data, same epoch generator, same augmentation) and trains
  on its own contiguous slice of it (:func:`shard_batch`), so ``batch_size`` in params is the global batch.
- Each slice carries ``loss_weight`` = W n_r / N (n_r labelled pixels of the slice, N of the global batch, W
  ranks). DDP averages the gradients of the W ranks, so the gradient is that of the mean loss over all N
  labelled pixels: the single-process gradient of the same global batch.
- Rank 0 alone writes checkpoints, outputs and tracking; every rank resumes from the same checkpoint file.

What differs from one process: BatchNorm layers in training mode normalise with their own slice's statistics
(on CUDA they are converted to ``SyncBatchNorm``, which restores the global statistics; PyTorch has no CPU
SyncBatchNorm), and sums are reduced in another order (float rounding).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lofiseg.data.format import IGNORE
from lofiseg.train.loop import Trainer

log = logging.getLogger(__name__)

MIN_PER_RANK = 2  # BatchNorm in training mode needs more than one value per channel (e.g. ASPP image pooling)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job: rank r of ``world_size`` (``local_rank`` on its machine)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process with side effects (files, tracking, logs, progress bars)."""
        return self.rank == 0


def context_from_env(env: Mapping[str, str] | None = None) -> DistContext:
    """Read torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (absent: one process, rank 0)."""
    env = os.environ if env is None else env
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": env.get("RANK", "0")}
    values = {}
    for key, default in defaults.items():
        raw = env.get(key, default)
        try:
            values[key] = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"environment variable {key} must be an integer, got {raw!r}") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"environment: need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0; got "
                         f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return DistContext(rank, world, local)


def _quiet() -> None:
    """Ranks other than 0: errors only (rank 0 says the rest, once) and no progress bars."""
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("lofiseg").setLevel(logging.ERROR)
    import tqdm.std

    tqdm.std.tqdm.__init__ = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)  # type: ignore[method-assign]


@contextlib.contextmanager
def distributed_session(device: torch.device, timeout_s: float = 1800.0) -> Iterator[tuple[DistContext, torch.device]]:
    """Join the torchrun job (if any) and yield (context, this rank's device); leave the group on exit.

    Backend ``nccl`` on CUDA (device ``cuda:LOCAL_RANK``), ``gloo`` on CPU. One process: yields
    (``DistContext()``, ``device``) and does nothing else.
    """
    ctx = context_from_env()
    if not ctx.distributed:
        yield ctx, device
        return
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {ctx.local_rank} has no GPU: this machine has "
                             f"{torch.cuda.device_count()}; use --nproc_per_node <= that")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"device {device} is not supported with torchrun (use cuda or cpu)")
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    if not ctx.is_main:
        _quiet()
    log.info("rank %d of %d on %s (%s)", ctx.rank, ctx.world_size, device, backend)
    try:
        yield ctx, device
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def check_batch_size(batch_size: int, ctx: DistContext, key: str = "batch_size") -> None:
    """Every rank needs at least two samples of each full global batch (BatchNorm in training mode)."""
    if batch_size < MIN_PER_RANK * ctx.world_size:
        raise ValueError(f"{key} {batch_size} is too small for {ctx.world_size} processes: the global batch "
                         f"is split across ranks and each needs >= {MIN_PER_RANK} samples")


def shard_batch(batch: Mapping[str, torch.Tensor], ctx: DistContext, ignore_index: int = IGNORE) -> dict[str, torch.Tensor]:
    """Rank r's contiguous slice of a global batch (as ``torch.tensor_split``: sizes differ by at most 1).

    Adds ``loss_weight`` = W n_r / N, with n_r and N the labelled (non-``ignore_index``) mask pixels of the
    slice and of the whole batch (1 for one process; 0 when the batch has no labelled pixel): multiplying the
    slice's mean loss by it makes DDP's gradient average the gradient of the global batch's mean loss.
    """
    size = int(batch["image"].shape[0])
    base, extra = divmod(size, ctx.world_size)  # torch.tensor_split's sizes: the first `extra` ranks get one more
    lo = ctx.rank * base + min(ctx.rank, extra)
    hi = lo + base + (ctx.rank < extra)
    shard = {key: value[lo:hi] if torch.is_tensor(value) and value.ndim and value.shape[0] == size else value
             for key, value in batch.items()}
    weight = 1.0
    if "mask" in batch and ctx.distributed:
        total = int((batch["mask"] != ignore_index).sum())
        local = int((shard["mask"] != ignore_index).sum())
        weight = ctx.world_size * local / total if total else 0.0
    shard["loss_weight"] = torch.tensor(weight, dtype=torch.float32)
    return shard


def shard_batches(batches: Iterable[Mapping[str, torch.Tensor]], ctx: DistContext,
                  ignore_index: int = IGNORE) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`shard_batch` of every global batch; a (last) batch with fewer than 2 W samples is skipped."""
    for batch in batches:
        if int(batch["image"].shape[0]) < MIN_PER_RANK * ctx.world_size:
            log.debug("skipping a batch of %d samples (< %d per rank)", batch["image"].shape[0], MIN_PER_RANK)
            continue
        yield shard_batch(batch, ctx, ignore_index)


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """The module to call in the training step: ``model`` itself, or a DDP wrapper around it.

    The wrapper shares ``model``'s parameters, so checkpoints and bundles keep saving ``model`` (no
    ``module.`` prefix: a checkpoint resumes under any number of processes). On CUDA the BatchNorm layers of
    ``model`` are converted to SyncBatchNorm in place first. Wrap after resuming: DDP broadcasts rank 0's
    parameters and buffers at construction.
    """
    if not ctx.distributed:
        return model
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BatchNorm children in place
    # buffers (BatchNorm statistics) are broadcast from rank 0 at construction and before every forward
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum over ranks (in place, and returned); identity for one process."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, e.g. before evaluating in shards."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


class DistributedTrainer(Trainer):
    """:class:`lofiseg.train.loop.Trainer` whose checkpoints are written by rank 0 only (all ranks read them)."""

    def __init__(self, *args: object, ctx: DistContext | None = None, **kwargs: object) -> None:
        self.ctx = ctx or DistContext()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _save(self, epoch: int) -> None:
        if self.ctx.is_main:
            super()._save(epoch)
