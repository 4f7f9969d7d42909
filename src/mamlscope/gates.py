"""Held gates: ReLU masks and max-pool choices that can be recorded once and replayed.

maml-fd estimates Hessian-vector products by central differences of support gradients at
``theta +- r v``. A ReLU or max-pool is piecewise linear: a perturbation that moves a unit
across its kink adds an error of order ``1/r``, which in float32 (where ``r`` must be
large enough to resolve) ruins the estimate. Recording the pattern at ``theta``
(:func:`record_gates`) and replaying it in both perturbed evaluations (:func:`hold_gates`)
makes the network smooth near ``theta`` with the same value and gradient at ``theta``.

The flag is a context variable read eagerly in Python, so it works under ``torch.func``
transforms (a pattern recorded under ``vmap`` is batched too) and in the task-batched
forward of :mod:`mamlscope.maml.batched_forward`, which calls :func:`gated_relu` and
:func:`gated_max_pool2d` for every ``nn.ReLU``/``nn.MaxPool2d``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

Gates = tuple[torch.Tensor, ...]  # per gated layer in forward order: ReLU mask or pool indices


class _GateState:
    """What gated layers do now: append their pattern (``record``) or replay ``gates``."""

    def __init__(self, gates: list[torch.Tensor] | Gates, record: bool) -> None:
        self.gates, self.record, self.cursor = gates, record, 0

    def next(self) -> torch.Tensor:
        if self.cursor >= len(self.gates):
            raise RuntimeError("hold_gates: more gated layers ran than were recorded")
        self.cursor += 1
        return self.gates[self.cursor - 1]


_GATES: contextvars.ContextVar[_GateState | None] = contextvars.ContextVar(
    "mamlscope_gates", default=None
)


def record_gates(forward: Callable[[], object]) -> Gates:
    """Run ``forward()`` and return the pattern of every gated layer it passed, in order.

    A ReLU records ``x > 0`` (in ``x``'s dtype), a max-pool its argmax indices. Read
    eagerly in Python, so it works under ``vmap`` (the pattern is then batched too).
    """
    recorded: list[torch.Tensor] = []
    token = _GATES.set(_GateState(recorded, record=True))
    try:
        forward()
    finally:
        _GATES.reset(token)
    return tuple(recorded)


@contextlib.contextmanager
def hold_gates(gates: Gates | None) -> Iterator[None]:
    """Inside this block the gated layers of one forward replay ``gates`` (``None``: no-op).

    The block must run the same forward that :func:`record_gates` recorded, once.
    """
    if gates is None:
        yield
        return
    state = _GateState(gates, record=False)
    token = _GATES.set(state)
    try:
        yield
    finally:
        _GATES.reset(token)
    if state.cursor != len(gates):
        raise RuntimeError(f"hold_gates: {len(gates)} patterns recorded, {state.cursor} used")


def gated_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU, or ``x * mask`` with the recorded mask inside :func:`hold_gates`."""
    state = _GATES.get()
    if state is None:
        return F.relu(x)
    if state.record:
        state.gates.append((x > 0).to(x.dtype))  # same shape as x, 0/1
        return F.relu(x)
    return x * state.next()


def gated_max_pool2d(layer: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` on ``[..., H, W]``, or the recorded argmax positions when held."""
    state = _GATES.get()
    if state is None or state.record:
        out, idx = F.max_pool2d(
            x, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            ceil_mode=layer.ceil_mode, return_indices=True,
        )  # fmt: skip
        if state is not None:
            state.gates.append(idx)  # [..., H', W'], flat indices into H*W
        return out
    idx = state.next()  # [..., H', W']
    return x.flatten(-2).gather(-1, idx.flatten(-2)).view(idx.shape)  # [..., H', W']


class ReLU(nn.ReLU):
    """``nn.ReLU`` whose mask can be recorded and held (module docstring, "Held gates")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gated_relu(x)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose choices can be recorded and held (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gated_max_pool2d(self, x)


def unheld_kinks(model: nn.Module) -> list[str]:
    """Names of ReLU/max-pool layers of ``model`` that :func:`hold_gates` cannot hold
    (plain ``nn.ReLU``/``nn.MaxPool2d`` instead of this module's subclasses)."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) in (nn.ReLU, nn.MaxPool2d, nn.LeakyReLU, nn.ReLU6, nn.MaxPool1d)
    ]
