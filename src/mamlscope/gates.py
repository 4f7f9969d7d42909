"""Held gates: ReLU masks and max-pool choices that can be recorded once and replayed.

maml-fd estimates Hessian-vector products by central differences of support gradients at
``theta +- r v``. A ReLU or max-pool is piecewise linear: a perturbation that moves a unit
across its kink adds an error of order ``1/r``, which in float32 (where ``r`` must be
large enough to resolve) ruins the estimate. Recording the pattern at ``theta``
(:func:`record_gates`) and replaying it in both perturbed evaluations (:func:`hold_gates`)
makes the network smooth near ``theta`` with the same value and gradient at ``theta``.

What holds its gates:

* this module's :class:`ReLU` and :class:`MaxPool2d` (what :mod:`mamlscope.models` builds);
* torch's own ``nn.ReLU``, ``nn.LeakyReLU`` (pattern ``where(x > 0, 1, slope)``) and
  ``nn.MaxPool2d`` instances whose ``forward`` is torch's: inside :func:`record_gates` and
  :func:`hold_gates` a global module forward hook (installed for the block only) replaces
  their output by the gated one, computed from the input before an ``inplace`` layer
  overwrites it;
* the task-batched forward of :mod:`mamlscope.maml.batched_forward`, which calls
  :func:`gated_relu`, :func:`gated_leaky_relu` and :func:`gated_max_pool2d` itself.

Anything else with a kink (``F.relu`` in a custom ``forward``, ``nn.ReLU6``, adaptive max
pools, ``clamp``...) cannot be held; :func:`unheld_kink_calls` finds such calls in one
forward (finite differences then fall back, :mod:`mamlscope.maml.fd_fallback`).

The state is a context variable read eagerly in Python, so it works under ``torch.func``
transforms (a pattern recorded under ``vmap`` is batched too) and only in the thread
that set it (a hook in another thread sees no state and does nothing).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)

Gates = tuple[torch.Tensor, ...]  # per gated layer in forward order: a mask, slopes or indices


class _GateState:
    """What gated layers do now: append their pattern (``record``) or replay ``gates``."""

    def __init__(self, gates: Gates, record: bool) -> None:
        self.gates, self.record, self.cursor = list(gates), record, 0
        self.inside = 0  # > 0 while a held layer computes (its kink ops are held ones)
        self.pending: dict[int, object] = {}  # id of a torch layer -> its gated output

    def next(self) -> torch.Tensor:
        if self.cursor >= len(self.gates):
            raise RuntimeError("hold_gates: more gated layers ran than were recorded")
        self.cursor += 1
        return self.gates[self.cursor - 1]


_GATES: contextvars.ContextVar[_GateState | None] = contextvars.ContextVar(
    "mamlscope_gates", default=None
)


@contextlib.contextmanager
def _held_inside(state: _GateState | None) -> Iterator[None]:
    """Mark the block as a held layer's own computation (not an unheld kink)."""
    if state is None:
        yield
        return
    state.inside += 1
    try:
        yield
    finally:
        state.inside -= 1


def gated_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU, or ``x * mask`` with the recorded mask inside :func:`hold_gates`."""
    state = _GATES.get()
    if state is None:
        return F.relu(x)
    with _held_inside(state):
        if state.record:
            state.gates.append((x > 0).to(x.dtype))  # same shape as x, 0/1
            return F.relu(x)
        return x * state.next()


def gated_leaky_relu(x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """Leaky ReLU, or ``x * slopes`` with the recorded ``where(x > 0, 1, negative_slope)``."""
    state = _GATES.get()
    if state is None:
        return F.leaky_relu(x, negative_slope)
    with _held_inside(state):
        if state.record:  # slopes in x's dtype, exactly 1 or negative_slope
            state.gates.append(torch.where(x > 0, x.new_ones(()), x.new_full((), negative_slope)))
            return F.leaky_relu(x, negative_slope)
        return x * state.next()


def gated_max_pool2d(layer: nn.MaxPool2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` on ``[..., H, W]``, or the recorded argmax positions when held."""
    state = _GATES.get()
    with _held_inside(state):
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


# ------------------------------------------------------------- torch's own layers, by hooks


def _torch_gate(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The gated form of a torch layer whose forward is torch's own, or None."""
    forward = type(module).forward
    if isinstance(module, nn.ReLU) and forward is nn.ReLU.forward:
        return gated_relu
    if isinstance(module, nn.LeakyReLU) and forward is nn.LeakyReLU.forward:
        slope = module.negative_slope
        return lambda x: gated_leaky_relu(x, slope)
    if isinstance(module, nn.MaxPool2d) and forward is nn.MaxPool2d.forward:
        pool = module
        return None if pool.return_indices else lambda x: gated_max_pool2d(pool, x)
    return None


def _pre_hook(module: nn.Module, args: tuple[object, ...]) -> tuple[object, ...] | None:
    """Compute a held torch layer's gated output from its input, before ``inplace`` can
    overwrite that input (the layer then runs on a copy; its own output is replaced)."""
    state = _GATES.get()
    gate = None if state is None or not args else _torch_gate(module)
    if state is None or gate is None or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    state.pending[id(module)] = gate(x)
    state.inside += 1  # the layer's own forward: a held kink
    return (x.clone(), *args[1:]) if getattr(module, "inplace", False) else None


def _post_hook(module: nn.Module, args: tuple[object, ...], output: object) -> object:
    state = _GATES.get()
    if state is None or id(module) not in state.pending:
        return None
    state.inside -= 1
    return state.pending.pop(id(module))


@contextlib.contextmanager
def _gating(state: _GateState) -> Iterator[None]:
    """``state`` for gated layers and the hooks for torch's own, for this block only."""
    token = _GATES.set(state)
    # (torch's stubs type hooks as returning None; replacing the input/output is documented)
    pre = register_module_forward_pre_hook(_pre_hook)  # type: ignore[arg-type]
    post = register_module_forward_hook(_post_hook)  # type: ignore[arg-type]
    try:
        yield
    finally:
        pre.remove()
        post.remove()
        _GATES.reset(token)


def record_gates(forward: Callable[[], object]) -> Gates:
    """Run ``forward()`` and return the pattern of every gated layer it passed, in order.

    A ReLU records ``x > 0`` (in ``x``'s dtype), a leaky ReLU its slopes, a max-pool its
    argmax indices. Read eagerly in Python, so it works under ``vmap`` (the pattern is then
    batched too).
    """
    state = _GateState((), record=True)
    with _gating(state):
        forward()
    return tuple(state.gates)


@contextlib.contextmanager
def hold_gates(gates: Gates | None) -> Iterator[None]:
    """Inside this block the gated layers of one forward replay ``gates`` (``None``: no-op).

    The block must run the same forward that :func:`record_gates` recorded, once.
    """
    if gates is None:
        yield
        return
    state = _GateState(gates, record=False)
    with _gating(state):
        yield
    if state.cursor != len(gates):
        raise RuntimeError(f"hold_gates: {len(gates)} patterns recorded, {state.cursor} used")


# ------------------------------------------------------------------- kinks that are not held

# Torch functions (by name, as torch's function mode sees them) that are piecewise: their
# gradient jumps somewhere, so an unheld central difference across the jump is off by 1/r.
KINK_FUNCTIONS = frozenset(
    {
        *("relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "prelu", "rrelu", "rrelu_"),
        *("hardtanh", "hardtanh_", "threshold", "threshold_", "hardshrink", "softshrink"),
        *("hardsigmoid", "hardswish", "elu", "elu_", "selu", "selu_"),
        *("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d"),
        *("adaptive_max_pool2d", "adaptive_max_pool3d", "fractional_max_pool2d"),
        *("fractional_max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices"),
        *("max_pool3d_with_indices", "clamp", "clamp_", "clip", "clip_", "clamp_min"),
        *("clamp_min_", "clamp_max", "clamp_max_", "abs", "abs_", "absolute", "maximum"),
        *("minimum", "fmax", "fmin", "max", "min", "amax", "amin", "topk", "sort"),
        *("kthvalue", "median", "nanmedian", "cummax", "cummin"),
    }
)


class _KinkWatch(torch.overrides.TorchFunctionMode):
    """Notes each kink function called outside a held layer, with the module it ran in."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names = names
        self.stack: list[nn.Module] = []  # the modules whose forward is running
        self.found: list[str] = []

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: object,
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        name = getattr(func, "__name__", "")
        state = _GATES.get()
        if name in KINK_FUNCTIONS and state is not None and state.inside == 0:
            module = self.stack[-1] if self.stack else None
            if module is None:
                where = "a function outside any module"
            elif self.names.get(id(module)):
                where = f"layer {self.names[id(module)]!r} ({type(module).__name__})"
            else:
                where = f"the model's own forward ({type(module).__name__})"
            note = f"{where} calls {name}"
            if note not in self.found:
                self.found.append(note)
        return func(*args, **(kwargs or {}))


def unheld_kink_calls(model: nn.Module, forward: Callable[[], object]) -> list[str]:
    """Where ``forward()`` (a forward of ``model``) computes a kink that :func:`hold_gates`
    cannot hold, e.g. ``["layer 'act' (ReLU6) calls hardtanh"]``; empty when every kink
    is held. Runs the forward once, recording gates (nothing is kept)."""
    watch = _KinkWatch({id(m): name for name, m in model.named_modules()})

    def leaving(module: nn.Module, args: object, output: object) -> None:
        watch.stack.pop()

    enter = register_module_forward_pre_hook(lambda m, a: watch.stack.append(m))
    leave = register_module_forward_hook(leaving)
    try:
        with watch:
            record_gates(forward)
    finally:
        enter.remove()
        leave.remove()
    return watch.found


def unheld_kinks(model: nn.Module) -> list[str]:
    """Names of ``model``'s layers with a kink that :func:`hold_gates` cannot hold (by type:
    ``nn.ReLU6``, ``nn.Hardtanh``, ``nn.PReLU``, ``nn.MaxPool1d``, adaptive max pools...,
    or a ReLU/max-pool subclass with a forward of its own). Kinks in a custom ``forward``
    show only in a forward: :func:`unheld_kink_calls`."""
    kinked = (
        nn.ReLU6, nn.Hardtanh, nn.PReLU, nn.RReLU, nn.Threshold, nn.Hardshrink, nn.Softshrink,
        nn.Hardsigmoid, nn.Hardswish, nn.ELU, nn.SELU, nn.MaxPool1d, nn.MaxPool3d,
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
        nn.FractionalMaxPool2d, nn.FractionalMaxPool3d, nn.ReLU, nn.LeakyReLU, nn.MaxPool2d,
    )  # fmt: skip
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, kinked) and not isinstance(m, ReLU | MaxPool2d) and _torch_gate(m) is None
    ]
