"""CAS Sec. 4.2: which output channel of a class-agnostic model is the saliency map.

:func:`choose_foreground_channel`: the saliency channel of a 2-channel CAS/CACE model is the one with the highest
correlation to ground truth on the validation split; :class:`ChannelSelected` stores that choice in the state
dict and outputs the chosen channel's probability.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def _check_probs_masks(probs: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(probs, Tensor) or not isinstance(masks, Tensor):
        raise TypeError(f"probs and masks must be tensors, got {type(probs).__name__}, {type(masks).__name__}")
    if probs.ndim != 4:
        raise ValueError(f"probs must have shape (N, M, H, W), got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a float tensor, got dtype {probs.dtype}")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.shape != probs.shape[:1] + probs.shape[2:]:
        raise ValueError(
            f"masks must have shape (N, H, W) = {tuple(probs.shape[:1] + probs.shape[2:])} "
            f"(or (N, 1, H, W)), got {tuple(masks.shape)}"
        )
    allowed = (masks == 0) | (masks == 1) | (masks == 255)
    if not bool(allowed.all()):
        raise ValueError(f"masks must hold 0, 1 or 255 (ignore), got the value {masks[~allowed][0].item()!r}")
    return probs, masks


def channel_correlations(
    probs: Tensor | Iterable[tuple[Tensor, Tensor]], masks: Tensor | None = None
) -> Tensor:
    """Pearson correlation (float64, shape (M,)) of each channel's probability with the binary ground truth.

    Over all valid pixels (mask != 255) of all images. ``probs`` is (N, M, H, W) with ``masks`` (N, H, W), or an
    iterable of (probs, masks) batches with ``masks=None`` (streamed through running sums). A channel with zero
    variance gets NaN.
    """
    if isinstance(probs, Tensor):
        if masks is None:
            raise ValueError("masks is required when probs is a tensor")
        batches: Iterable[tuple[Tensor, Tensor]] = [(probs, masks)]
    else:
        if masks is not None:
            raise ValueError("pass masks inside the (probs, masks) batches when probs is an iterable")
        batches = probs
    sums: Tensor | None = None  # rows: n, sum g, sum g^2, sum p, sum p^2, sum p*g
    for batch_probs, batch_masks in batches:
        batch_probs, batch_masks = _check_probs_masks(batch_probs, batch_masks)
        batch_masks = batch_masks.to(batch_probs.device)
        valid = batch_masks != 255
        p = batch_probs.detach().movedim(1, 0)[:, valid].double()  # (M, n_valid)
        g = (batch_masks[valid] == 1).double()
        stats = torch.stack([
            p.new_full((p.shape[0],), float(g.numel())),
            g.sum().expand(p.shape[0]).to(p.device),
            (g * g).sum().expand(p.shape[0]).to(p.device),
            p.sum(1),
            (p * p).sum(1),
            (p * g).sum(1),
        ])
        if sums is not None and sums.shape[1] != stats.shape[1]:
            raise ValueError(f"every batch must have {sums.shape[1]} channels, got {stats.shape[1]}")
        sums = stats.cpu() if sums is None else sums + stats.cpu()
    if sums is None:
        raise ValueError("probs is an empty iterable")
    n, sum_g, sum_gg, sum_p, sum_pp, sum_pg = sums
    var_g = n * sum_gg - sum_g**2
    if bool((n == 0).all()) or bool((var_g <= 0).all()):
        raise ValueError("masks must contain both foreground (1) and background (0) valid pixels")
    var_p = n * sum_pp - sum_p**2
    covariance = n * sum_pg - sum_p * sum_g
    denominator = torch.sqrt(var_p.clamp_min(0) * var_g)
    return torch.where(denominator > 0, covariance / denominator, torch.full_like(covariance, float("nan")))


def choose_foreground_channel(
    probs: Tensor | Iterable[tuple[Tensor, Tensor]], masks: Tensor | None = None
) -> int:
    """CAS Sec. 4.2: the channel whose probability correlates best with ground truth (see channel_correlations)."""
    correlations = channel_correlations(probs, masks)
    if bool(torch.isnan(correlations).all()):
        raise ValueError("every channel is constant over the valid pixels: correlation undefined")
    return int(torch.nan_to_num(correlations, nan=-torch.inf).argmax())


class ChannelSelected(nn.Module):
    """A segmentation model whose output is the chosen channel's softmax probability, (B, 1, H, W).

    The channel is a buffer, so it is saved and restored with the state dict.
    """

    def __init__(self, model: nn.Module, channel: int) -> None:
        super().__init__()
        num_classes = getattr(model, "num_classes", None)
        if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
            raise ValueError(f"channel must be a non-negative int, got {channel!r}")
        if num_classes is not None and channel >= num_classes:
            raise ValueError(f"channel must be < num_classes = {num_classes}, got {channel}")
        self.model = model
        self.register_buffer("channel", torch.tensor([channel], dtype=torch.long))

    @property
    def channel_index(self) -> int:
        return int(self.channel.item())

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        if self.channel_index >= logits.shape[1]:
            raise ValueError(f"channel {self.channel_index} does not exist in a {logits.shape[1]}-channel output")
        return logits.softmax(dim=1).index_select(1, self.channel)
