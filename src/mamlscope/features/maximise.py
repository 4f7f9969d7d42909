"""Activation maximisation: the input a neuron responds to most, from composable parts.

Following Olah et al. (2017, "Feature Visualization", Distill), the image is optimised in
a decorrelated Fourier parameterisation (:func:`fourier_image`; spectrum scaled by
1/frequency, colours decorrelated, squashed to [0, 1] by a sigmoid) and seen through random
jitter, scaling and rotation at every step (:func:`jitter`, :func:`random_scale`,
:func:`random_rotate`, chained by :func:`compose`), which keeps the optimiser from
exploiting high-frequency patterns that no real image contains. An optional total-variation
penalty smooths further. The parts are small objects as in lucent; :func:`maximise` wires
them to one neuron (a unit of an ``[N, F]`` layer, or a channel of a conv layer, averaged
over space).

BatchNorm
---------
Each step optimises one image seen as ``copies`` transformed copies in one batch.

* Running statistics (the baseline, ``batch_statistics=False``): eval mode, every copy is
  normalised independently, as at test time.
* Batch statistics (MAML, ``batch_statistics=True``): BatchNorm normalises with the batch's
  own statistics, as MAML does during adaptation and evaluation. A batch made only of the
  copies would be degenerate (a BatchNorm output's batch mean is its bias whatever the
  image), so ``context``, a batch of real normalised images (e.g. the probe), is put in the
  same batch and the copies are read out of it: the neuron's response to the image among
  typical inputs. ``context`` is required unless the layer comes before every BatchNorm.

Deterministic per ``seed`` on the CPU: the start image and every transform draw from one
``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mamlscope import models
from mamlscope.errors import ConfigError
from mamlscope.features.activations import layer_activations, summarise

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# An image parameterisation: f(in_shape, generator, *, device) -> (leaf tensors, image_fn).
ImageParam = tuple[list[torch.Tensor], Callable[[], torch.Tensor]]

# Olah et al.'s square root of ImageNet's colour correlation (lucent's), column-normalised.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_SQRT = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


def fourier_image(
    in_shape: tuple[int, int, int],
    generator: torch.Generator,
    *,
    decay_power: float = 1.0,
    sd: float = 0.01,
    device: torch.device | str = "cpu",
) -> ImageParam:
    """A decorrelated image: ``(params, image_fn)``, ``image_fn() -> [1, C, H, W]`` in [0, 1].

    The spectrum is scaled by ``1 / frequency ** decay_power`` so that equal steps in
    parameter space change every frequency equally (a whitened, better conditioned
    problem); three-channel images are also decorrelated across colours.
    """
    c, h, w = in_shape
    freqs = torch.sqrt(torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.rfftfreq(w)[None, :] ** 2)
    scale = (1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power).to(device)  # [h, w//2+1]
    spectrum = torch.randn(1, c, h, w // 2 + 1, 2, generator=generator) * sd  # CPU draw
    spectrum = spectrum.to(device).requires_grad_()
    color = _COLOR_SQRT.to(device)

    def image_fn() -> torch.Tensor:
        scaled = torch.view_as_complex(spectrum) * scale  # [1, C, h, w // 2 + 1]
        image = torch.fft.irfft2(scaled, s=(h, w), norm="ortho") / 4.0  # [1, C, H, W]
        if c == 3:
            image = torch.einsum("dc,bchw->bdhw", color, image)  # decorrelated colours
        return torch.sigmoid(image)

    return [spectrum], image_fn


def pixel_image(
    in_shape: tuple[int, int, int],
    generator: torch.Generator,
    *,
    sd: float = 0.01,
    device: torch.device | str = "cpu",
) -> ImageParam:
    """Plain pixels through a sigmoid: ``(params, image_fn)`` (pair it with a TV penalty)."""
    pixels = (torch.randn(1, *in_shape, generator=generator) * sd).to(device).requires_grad_()
    return [pixels], lambda: torch.sigmoid(pixels)  # [1, C, H, W]


def jitter(px: int) -> Transform:
    """Shift each image by up to ``px`` pixels each way (reflected border, size kept)."""

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if px < 1:
            return x
        n, _, h, w = x.shape
        padded = F.pad(x, (px, px, px, px), mode="reflect")  # [B, C, H + 2px, W + 2px]
        shifts = torch.randint(0, 2 * px + 1, (n, 2), generator=generator).tolist()
        return torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts)]
        )

    return apply


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # [B, H, W, 2]
    return F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)


def random_scale(scales: Sequence[float]) -> Transform:
    """Zoom each image by a factor drawn from ``scales`` about its centre (size kept)."""
    factors = torch.tensor(list(scales), dtype=torch.float32)

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = factors[torch.randint(len(factors), (len(x),), generator=generator)]  # [B]
        theta = torch.zeros(len(x), 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s  # sampling grid shrinks to zoom in
        return _affine(x, theta.to(x))

    return apply


def random_rotate(degrees: float) -> Transform:
    """Rotate each image by an angle drawn uniformly from ``[-degrees, degrees]``."""

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        angle = (torch.rand(len(x), generator=generator) * 2 - 1) * math.radians(degrees)  # [B]
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [torch.stack([cos, -sin, 0 * cos], 1), torch.stack([sin, cos, 0 * cos], 1)], 1
        )
        return _affine(x, theta.to(x))  # theta [B, 2, 3]

    return apply


def compose(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order."""

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for transform in transforms:
            x = transform(x, generator)
        return x

    return apply


def standard_transforms(size: int) -> Transform:
    """Olah et al.'s jitter, scale, rotate, jitter, sized for an image ``size`` pixels wide."""
    big = max(1, round(size / 14))  # 2 px on 28 x 28
    return compose(
        jitter(big), random_scale((0.9, 0.95, 1.0, 1.05, 1.1)), random_rotate(10.0), jitter(1)
    )


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels of ``[B, C, H, W]``: a smoothness prior."""
    return (image[..., 1:, :] - image[..., :-1, :]).abs().mean() + (
        image[..., :, 1:] - image[..., :, :-1]
    ).abs().mean()


@dataclass
class Visualisation:
    """The optimised image of one neuron and how its activation grew."""

    layer: str
    unit: int
    image: torch.Tensor  # [C, H, W] in [0, 1]
    trace: np.ndarray  # [steps]: mean activation over the transformed copies, before each step
    start_activation: float  # the untransformed start image
    final_activation: float  # the untransformed result


def _stats(value: float | Sequence[float] | torch.Tensor, channels: int) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() not in (1, channels):
        raise ConfigError(f"normalisation needs 1 or {channels} values; got {t.numel()}")
    return t.expand(channels).reshape(1, channels, 1, 1)


def _needs_context(model: nn.Module, layer: str) -> bool:
    """Whether ``layer`` is, or comes after, a recorded layer that holds a BatchNorm."""
    names = models.layer_names(model)
    norms = [names.index(name) for name in models.normalised_layers(model, names)]
    return layer in names and bool(norms) and names.index(layer) >= norms[0]


def maximise(
    model: nn.Module,
    layer: str,
    unit: int,
    *,
    in_shape: tuple[int, int, int],
    mean: float | Sequence[float],
    std: float | Sequence[float],
    batch_statistics: bool,
    context: torch.Tensor | None = None,
    steps: int = 256,
    lr: float = 0.05,
    copies: int = 8,
    seed: int = 0,
    image: Callable[..., ImageParam] = fourier_image,
    transform: Transform | None = None,
    tv_weight: float = 0.0,
) -> Visualisation:
    """Optimise an image (Adam) to maximise ``unit`` of ``layer``; see the module docstring.

    ``mean``/``std`` are the dataset's normalisation (``meta.json``): the image lives in
    [0, 1] pixel space and is normalised as training data was. ``context`` is a normalised
    batch ``[M, C, H, W]`` of real images (needed with batch statistics past a BatchNorm).
    ``transform`` defaults to :func:`standard_transforms`. Runs on the model's device;
    random draws come from a CPU generator. A progress bar shows from 200 steps.
    """
    if batch_statistics and context is None and _needs_context(model, layer):
        raise ConfigError(
            f"layer {layer!r} comes after a BatchNorm that uses batch statistics: pass "
            "context=, a batch of real normalised images (e.g. the probe), to normalise with"
        )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    params, image_fn = image(in_shape, generator, device=device)
    transform = transform or standard_transforms(in_shape[-1])
    shift, scale = _stats(mean, in_shape[0]).to(device), _stats(std, in_shape[0]).to(device)
    ctx = None if context is None else context.detach().to(device, torch.float32)  # [M, C, H, W]

    def activation(batch01: torch.Tensor) -> torch.Tensor:
        x = (batch01 - shift) / scale  # [B, C, H, W], normalised
        if batch_statistics and ctx is not None:
            x = torch.cat([ctx, x])  # [M + B, C, H, W]: the copies among real images
        act = summarise(
            layer_activations(model, x, [layer], batch_statistics=batch_statistics)[layer]
        )
        if not 0 <= unit < act.shape[1]:
            raise ConfigError(f"unit {unit} is out of range: layer {layer!r} has {act.shape[1]}")
        return act[-len(batch01) :, unit]  # [B]

    with torch.no_grad():
        start = float(activation(image_fn())[0])
    optimiser = torch.optim.Adam(params, lr=lr)
    trace = np.empty(steps)
    for step in tqdm(
        range(steps), desc=f"maximise {layer}[{unit}]", disable=steps < 200, leave=False
    ):
        img = image_fn()  # [1, C, H, W]
        copies_01 = transform(img.expand(copies, -1, -1, -1), generator)  # [copies, C, H, W]
        objective = activation(copies_01).mean()
        loss = -objective + tv_weight * total_variation(img)
        grads = torch.autograd.grad(loss, params)  # the model's parameters get no .grad
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimiser.step()
        trace[step] = float(objective.detach())
    with torch.no_grad():
        result = image_fn()  # [1, C, H, W]
        final = float(activation(result)[0])
    return Visualisation(layer, unit, result[0].detach(), trace, start, final)
