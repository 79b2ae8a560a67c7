"""The model as served: one TorchScript module that predicts what evaluation scored, loadable with torch alone.

:class:`ServedSegmenter` takes RGB images (N, H, W, 3), uint8 or float in [0, 1], of any size, and returns
what the gate metric was measured on: the label map (N, H, W) uint8 of a multi-class model (argmax of the
softmax averaged over the test-time ``scales`` and, with ``flip``, their mirror images: DeepLab's multi-scale
+ flip inference, Chen et al. 2018, Sec. 4.1), or the probability (N, H, W) float32 of a saliency model's chosen
channel (CAS Sec. 4.2). Each image is resized to the training size first and the maps back to its own size,
as ``commands.predict`` and evaluation do. The normalisation, output-stride padding and cropping of
:class:`~lofiseg.models.factory.SegmentationModel` happen inside: the network itself is compiled by
:func:`export_segmenter`, so the saved file needs neither lofiseg nor segmentation_models_pytorch.

The steps mirror :func:`lofiseg.infer.predict.multi_scale_probs` in TorchScript's subset of Python (no
torchvision resize, no callables); tests check that both give the same masks.
"""

import warnings  # no `from __future__ import annotations`: TorchScript reads the class annotations
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lofiseg.data.loading import shorter_side_shape
from lofiseg.infer.predict import check_scales
from lofiseg.models.channel import ChannelSelected
from lofiseg.models.factory import SegmentationModel

NO_CHANNEL = -1  # a multi-class model: every channel is a class


class _MainOutput(nn.Module):
    """torchvision's segmentation networks return ``{"out": logits, ...}``: keep the logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["out"]


class ServedSegmenter(nn.Module):
    """Images (N, H, W, 3) -> labels (N, H, W) uint8, or probability (N, H, W) float32 when ``channel`` >= 0.

    ``net``: the bare network on normalised, stride-padded inputs; ``image_size`` 0 keeps each image's size.
    Method :meth:`scores` is one plain pass ((N, 3, H, W) in [0, 1] -> logits, or the channel's probability),
    :meth:`probabilities` the test-time average of :meth:`scores`' probabilities at the input's size.
    """

    image_size: int
    scales: list[float]
    flip: bool
    channel: int
    normalize: bool
    output_stride: int

    def __init__(self, net: nn.Module, mean: Tensor, std: Tensor, normalize: bool, output_stride: int,
                 image_size: int, scales: Sequence[float], flip: bool, channel: int = NO_CHANNEL) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean.detach().clone().view(1, 3, 1, 1))
        self.register_buffer("std", std.detach().clone().view(1, 3, 1, 1))
        self.normalize = bool(normalize)
        self.output_stride = int(output_stride)
        self.image_size = int(image_size)
        self.scales = list(check_scales(scales))
        self.flip = bool(flip)
        self.channel = int(channel)

    @torch.jit.export
    def scores(self, x: Tensor) -> Tensor:
        """One pass of the network: (N, 3, H, W) in [0, 1] -> (N, M, H, W) logits, or (N, 1, H, W) probability
        of ``channel``."""
        height, width = x.shape[2], x.shape[3]
        if self.normalize:
            x = (x - self.mean) / self.std
        pad_h = (self.output_stride - height % self.output_stride) % self.output_stride
        pad_w = (self.output_stride - width % self.output_stride) % self.output_stride
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [0, pad_w, 0, pad_h], mode="replicate")
        out = self.net(x)[:, :, :height, :width]
        if self.channel >= 0:
            out = out.softmax(dim=1)[:, self.channel:self.channel + 1]
        return out

    @torch.jit.export
    def probabilities(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> probabilities (N, M, H, W) averaged over ``scales`` and ``flip``."""
        height, width = x.shape[2], x.shape[3]
        total = torch.zeros(0)
        count = 0
        for scale in self.scales:
            scaled = x
            if scale != 1.0:  # as lofiseg.data.loading.rescale_images: each side at least 8 px
                size = [max(8, int(round(height * scale))), max(8, int(round(width * scale)))]
                scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for mirrored in ([False, True] if self.flip else [False]):
                view = scaled.flip(-1) if mirrored else scaled
                probs = self.scores(view).float()
                if self.channel < 0:
                    probs = probs.softmax(dim=1)
                if mirrored:
                    probs = probs.flip(-1)
                if probs.shape[2] != height or probs.shape[3] != width:
                    probs = F.interpolate(probs, size=[height, width], mode="bilinear", align_corners=False)
                total = probs if count == 0 else total + probs
                count += 1
        return total / count

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[3] != 3:
            raise ValueError("images: expected RGB images of shape (N, H, W, 3)")
        x = images.permute(0, 3, 1, 2).float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        height, width = x.shape[2], x.shape[3]
        if self.image_size > 0:  # the shorter side to the training size, as in evaluation
            shape = shorter_side_shape(height, width, self.image_size)
            x = F.interpolate(x, size=[shape[0], shape[1]], mode="bilinear", align_corners=False)
        probs = self.probabilities(x)
        if probs.shape[2] != height or probs.shape[3] != width:
            probs = F.interpolate(probs, size=[height, width], mode="bilinear", align_corners=False)
        if self.channel >= 0:
            return probs[:, 0]
        return probs.argmax(dim=1).to(torch.uint8)


def _compiled_network(net: nn.Module, example: Tensor) -> torch.jit.ScriptModule:
    """``net`` as TorchScript: scripted (every input size), else traced on ``example`` (checked afterwards)."""
    with torch.no_grad():
        if isinstance(net(example), Mapping):
            net = _MainOutput(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings: the result is checked
        try:
            return torch.jit.script(net)
        except Exception:  # e.g. a loop over reversed(range(...)): tracing records it unrolled
            return torch.jit.trace(net, example)


def export_segmenter(model: nn.Module, image_size: int, scales: Sequence[float] = (1.0,), flip: bool = False,
                     example_size: int = 32) -> torch.jit.ScriptModule:
    """``model`` (a :class:`SegmentationModel`, or a :class:`ChannelSelected` one) as a TorchScript
    :class:`ServedSegmenter`, checked against ``model`` itself on two input sizes; ValueError if it differs
    (a network whose traced graph froze a shape) or the model is of another kind."""
    selected = model if isinstance(model, ChannelSelected) else None
    network = selected.model if selected is not None else model
    if not isinstance(network, SegmentationModel):
        raise ValueError(f"model: expected a SegmentationModel (or ChannelSelected of one) to serve, got "
                         f"{type(network).__name__}")
    model, network = model.eval(), network.eval()
    stride = network.output_stride
    padded = -(-example_size // stride) * stride
    generator = torch.Generator().manual_seed(0)
    net = _compiled_network(network.net, torch.rand(1, 3, padded, padded, generator=generator))
    channel = selected.channel_index if selected is not None else NO_CHANNEL
    served = ServedSegmenter(net, network.input_mean, network.input_std, network.normalize_input, stride,
                             image_size, scales, flip, channel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(served.eval())
    for height, width in ((example_size, example_size), (example_size + 5, example_size + 13)):
        x = torch.rand(1, 3, height, width, generator=generator)
        with torch.no_grad():
            expected, got = model(x), scripted.scores(x)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            raise ValueError(f"model: its TorchScript export differs from the model on a {height}x{width} input: "
                             f"it cannot be served")
    return scripted


class OnePass(nn.Module):
    """The network of a (TorchScript) :class:`ServedSegmenter` as a plain model: its :meth:`~ServedSegmenter.scores`,
    for code that applies its own test-time inference (``commands.predict``)."""

    def __init__(self, served: nn.Module) -> None:
        super().__init__()
        self.served = served

    def forward(self, x: Tensor) -> Tensor:
        return self.served.scores(x)
