"""An explicitly task-batched forward pass for the networks of :mod:`mamlscope.models`.

MAML adapts one copy of the parameters per task. Instead of ``vmap`` over tasks, this
forward takes parameters with a leading task dim ``T`` and computes all tasks in one pass
with ordinary ops, so plain ``torch.autograd.grad`` (with ``create_graph``) differentiates it:

* ``Linear``: ``torch.baddbmm`` with per-task weights ``[T, out, in]``;
* ``Conv2d``: one grouped convolution, ``groups=T``, over activations laid out
  ``[B, T*C, H, W]``, so each task's filters see only that task's channels;
* ``BatchNorm`` (this package's, and torch's ``nn.BatchNorm1d``/``2d`` that track no running
  statistics): batch statistics per task over that task's own batch (and space), or over
  its first rows inside :func:`mamlscope.models.statistics_from_first`; the same
  :func:`mamlscope.models.batch_norm` the per-task model uses, except after a conv, where
  the native ``F.batch_norm`` on the ``[B, T*C, H, W]`` layout computes the same function
  in fewer passes over memory (:data:`FUSED_CONV_BATCH_NORM`);
* ``ReLU``, ``LeakyReLU``, ``MaxPool2d``, ``SpatialMean``, ``Flatten``: channel-wise, on the
  same layouts; masks, slopes and max-pool choices follow
  :func:`mamlscope.models.hold_gates` (torch's layers and this package's alike).

A layer is run only if its ``forward`` is one of these classes' own (a subclass with a
forward of its own computes something else): :func:`unsupported_reason` says why not.

Two layouts flow between layers: ``"tb"`` = ``[T, B, ...]`` (features, or images before the
first conv) and ``"bt"`` = ``[B, T*C, H, W]`` (conv activations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mamlscope.gates import MaxPool2d, ReLU, gated_leaky_relu
from mamlscope.models import (
    BatchNorm,
    FlattenLinear,
    SpatialMean,
    batch_norm,
    gated_max_pool2d,
    gated_relu,
    reference_rows,
)

# Conv BatchNorm (the "bt" layout) by the native kernel instead of models.batch_norm's
# elementary ops: the same function (per-channel batch statistics, biased variance) with
# fewer passes over memory; exact to rounding, differentiated to any order by autograd.
# The dense "tb" layout keeps models.batch_norm, so the default fc run is bit for bit as
# before. False: every BatchNorm as models.batch_norm (the reference in tests).
FUSED_CONV_BATCH_NORM = True

_TORCH_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# The forwards this module knows how to batch (a subclass may keep one or bring its own).
_FORWARDS = frozenset(
    cls.forward
    for cls in (
        nn.Linear,
        FlattenLinear,
        nn.Conv2d,
        BatchNorm,
        *_TORCH_BATCH_NORMS,
        nn.ReLU,
        ReLU,
        nn.LeakyReLU,
        nn.MaxPool2d,
        MaxPool2d,
        SpatialMean,
        nn.Flatten,
    )  # fmt: skip
)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot use :func:`batched_forward`, or ``None`` when it can."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return f"{type(model).__name__} is not an nn.Sequential of layers"
    for name, layer in model.named_children():
        torch_norm = isinstance(layer, nn.modules.batchnorm._BatchNorm)
        if type(layer).forward not in _FORWARDS or (
            torch_norm and not isinstance(layer, _TORCH_BATCH_NORMS)
        ):
            return f"layer {name!r} ({type(layer).__name__}) has no task-batched form"
        if isinstance(layer, _TORCH_BATCH_NORMS) and layer.track_running_stats:
            return f"layer {name!r} ({type(layer).__name__}) tracks running statistics"
        if isinstance(layer, _TORCH_BATCH_NORMS) and not layer.affine:
            return f"layer {name!r} ({type(layer).__name__}) has no affine parameters"
        if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
            return f"layer {name!r} returns max-pool indices"
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            return f"layer {name!r} uses groups or non-zero padding"
        if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (1, -1):
            return f"layer {name!r} flattens dims other than 1..-1"
    return None


def _to_bt(h: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W] -> [B, T*C, H, W]``."""
    t, b, c, height, width = h.shape
    return h.transpose(0, 1).reshape(b, t * c, height, width)


def _bt_to_tb(h: torch.Tensor, tasks: int) -> torch.Tensor:
    """``[B, T*C, H, W] -> [T, B, C*H*W]`` (flatten in C, H, W order like ``nn.Flatten``)."""
    b, tc, height, width = h.shape
    h = h.view(b, tasks, tc // tasks, height, width)  # [B, T, C, H, W]
    return h.transpose(0, 1).reshape(tasks, b, -1)  # [T, B, C*H*W]


def batched_forward(
    model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """Logits ``[T, B, classes]`` of ``x`` ``[T, B, C, H, W]`` under per-task ``params``.

    ``model``: an ``nn.Sequential`` that :func:`unsupported_reason` accepts. ``params`` maps
    ``model.named_parameters()`` names to tensors with a leading task dim (``[T, *shape]``).
    BatchNorm always uses each task's batch statistics (MAML's policy).
    """
    tasks, batch = x.shape[:2]
    rows = reference_rows()  # None: statistics over the whole batch
    h, layout = x, "tb"
    for name, layer in model.named_children():
        if isinstance(layer, nn.Linear):
            if layout == "bt":
                h, layout = _bt_to_tb(h, tasks), "tb"
            elif isinstance(layer, FlattenLinear):
                h = h.reshape(tasks, batch, -1)  # [T, B, C*H*W]
            w = params[f"{name}.weight"]  # [T, out, in]
            if layer.bias is None:
                h = torch.bmm(h, w.transpose(1, 2))  # [T, B, out]
            else:
                bias = params[f"{name}.bias"].unsqueeze(1)  # [T, 1, out]
                h = torch.baddbmm(bias, h, w.transpose(1, 2))  # [T, B, out]
        elif isinstance(layer, nn.Conv2d):
            if layout == "tb":
                h, layout = _to_bt(h), "bt"
            w = params[f"{name}.weight"]  # [T, O, C, kh, kw]
            conv_bias = params[f"{name}.bias"].reshape(-1) if layer.bias is not None else None
            h = F.conv2d(
                h,
                w.reshape(-1, *w.shape[2:]),  # [T*O, C, kh, kw]
                conv_bias,  # [T*O]
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=tasks,
            )  # [B, T*O, H', W']
        elif isinstance(layer, BatchNorm | nn.BatchNorm1d | nn.BatchNorm2d):
            w, b = params[f"{name}.weight"], params[f"{name}.bias"]  # [T, C]
            # (The native kernel refuses a channel of one value; models.batch_norm gives
            # it zero variance, so the output is the bias.)
            fused = FUSED_CONV_BATCH_NORM and rows is None and h[:, 0].numel() > 1
            if layout == "bt" and fused:
                # [B, T*C, H, W]: each of the T*C channels over (B, H, W) is one task's
                # channel over its own batch, so the native kernel (one statistics pass,
                # fused backward, double backward by its exact formula) does it at once.
                h = F.batch_norm(h, None, None, w.reshape(-1), b.reshape(-1), True, 0.0, layer.eps)
            elif layout == "bt":
                n, tc, height, width = h.shape
                h5 = h.view(n, tasks, tc // tasks, height, width)  # [B, T, C, H, W]
                w5, b5 = w[None, :, :, None, None], b[None, :, :, None, None]  # [1, T, C, 1, 1]
                ref = None if rows is None else h5[:rows]  # [rows, T, C, H, W]
                h = batch_norm(h5, w5, b5, (0, 3, 4), layer.eps, ref).view(n, tc, height, width)
            else:
                ref = None if rows is None else h[:, :rows]  # [T, rows, F]
                h = batch_norm(h, w.unsqueeze(1), b.unsqueeze(1), (1,), layer.eps, ref)  # [T, B, F]
        elif isinstance(layer, nn.ReLU):  # any ReLU: gates can be held here (models.hold_gates)
            h = gated_relu(h)
        elif isinstance(layer, nn.LeakyReLU):
            h = gated_leaky_relu(h, layer.negative_slope)
        elif isinstance(layer, nn.MaxPool2d):
            h = gated_max_pool2d(layer, h)  # [B, T*C, H/2, W/2], channel-wise
        elif isinstance(layer, SpatialMean):
            n, tc = h.shape[:2]
            h = h.mean(dim=(2, 3)).view(n, tasks, tc // tasks).transpose(0, 1)  # [T, B, C]
            layout = "tb"
        elif isinstance(layer, nn.Flatten):
            h = _bt_to_tb(h, tasks) if layout == "bt" else h.reshape(tasks, batch, -1)
            layout = "tb"
        else:  # guarded by unsupported_reason
            raise TypeError(f"layer {name!r} ({type(layer).__name__}) has no task-batched form")
    return h  # [T, B, classes]
