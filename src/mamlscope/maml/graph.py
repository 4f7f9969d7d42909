"""The training meta-step and its Adam update captured in one CUDA graph.

At Finn et al.'s Omniglot sizes an eager meta-step is a few hundred small kernels and the
GPU waits on Python and kernel launches (docs/benchmarks.md). :class:`GraphedMetaStep`
runs the ``batched`` meta-step (:func:`mamlscope.maml.strategies.batched_meta`, optionally
in chunks of ``max_tasks_in_flight`` tasks) and a ``capturable`` Adam update as one
``torch.cuda.CUDAGraph``:

* static input buffers: each call copies the sampled task tensors into buffers that the
  graph reads (``copy_``); new shapes allocate new buffers and re-capture;
* warm-up: a few eager steps on a side stream before the capture (cuDNN, autograd and the
  allocator settle there), after which parameters and optimiser state are put back exactly
  as they were, so the warm-up leaves no trace in the training trajectory;
* capture: the body recorded once; each later call replays it (one launch);
* outputs: the mean query loss and accuracy of the step as device tensors (copies, safe
  to keep), so training reads them only when it logs, not on every step;
* fallback: where no graph can be captured (CPU, no CUDA, capture disabled, or a capture
  that fails) the very same body runs eagerly over the same static buffers; ``.active``
  says which, ``.reason`` why not.

With ``capture=False`` the class is the eager step over static buffers on any device, which
is what makes the buffer logic testable on a CPU (bit-identical to the plain training loop
there). ``recorder`` replaces ``torch.cuda.CUDAGraph`` (tests record a "graph" whose replay
re-runs the body, to exercise warm-up, restore and re-capture without a GPU).

Resume states: the optimiser's state lives on the device (``capturable``); save it with
``optimizer.state_dict()`` and load it with :func:`load_optimizer_state` (or
:meth:`GraphedMetaStep.load_optimizer_state`, which also drops the graph: loading replaces
the state tensors the graph was recorded against, so the next call re-captures).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mamlscope.errors import ConfigError
from mamlscope.maml.api import (
    STRATEGIES,
    _in_chunks,
    check_max_tasks_in_flight,
    check_tasks,
    resolve_strategy,
)
from mamlscope.maml.batched_forward import unsupported_reason
from mamlscope.maml.parameters import resolve_adapted
from mamlscope.maml.settings import FD_EPSILON, Gradient, InnerLoop
from mamlscope.maml.strategies import batched_meta

log = logging.getLogger("mamlscope")

# Eager steps on a side stream before each capture (PyTorch's recipe uses a few; the
# benchmark's graphed step used 3).
WARMUP_STEPS = 3

Recorder = Callable[[Callable[[], None]], Callable[[], None]]


def capture_unavailable(model: nn.Module, device: torch.device) -> str | None:
    """Why the meta-step of ``model`` on ``device`` cannot be captured; None if it can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; this run is on {device.type}"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    reason = unsupported_reason(model)
    if reason is not None:
        return f"the batched forward cannot run this model ({reason})"
    return None


@dataclass(frozen=True)
class StepPlan:
    """How training runs its meta-step, from ``maml.strategy``, the model and the device.

    ``graphed``: through :class:`GraphedMetaStep` (else :func:`mamlscope.maml.meta_step`);
    ``capture``: and it tries to capture a CUDA graph; ``reason``: why not (None: it does).
    """

    graphed: bool
    capture: bool
    reason: str | None


def plan_training_step(strategy: str, model: nn.Module, device: torch.device) -> StepPlan:
    """``"graph"``: the graphed step, captured where possible, else eagerly with a reason;
    ``"auto"``: the graphed step where a capture is possible (CUDA and a model the batched
    forward runs), never on a CPU; any other strategy: the eager :func:`meta_step`."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    why = capture_unavailable(model, device)
    if strategy == "graph":
        resolve_strategy(strategy, model, device)  # a model batched cannot run: ConfigError
        return StepPlan(graphed=True, capture=why is None, reason=why)
    if strategy == "auto" and why is None:
        return StepPlan(graphed=True, capture=True, reason=None)
    if strategy != "auto":
        why = f"strategy {strategy!r} runs eagerly (only 'graph', and 'auto' on CUDA, capture)"
    return StepPlan(graphed=False, capture=False, reason=why)


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: Mapping[str, Any], *, capturable: bool
) -> None:
    """``optimizer.load_state_dict(state)``, then every group ``capturable`` as this run
    needs it, whatever the saved state says (a state written by a CUDA-graph run loads
    into an eager CPU run and the other way round), with ``step`` where that mode keeps it:
    on the parameter's device when capturable, on the CPU otherwise."""
    optimizer.load_state_dict(dict(state))
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
        for p in group["params"]:
            entry = optimizer.state.get(p)
            step = entry.get("step") if entry else None
            if entry is not None and isinstance(step, torch.Tensor):
                device = p.device if capturable else torch.device("cpu")
                entry["step"] = step.detach().to(device=device, dtype=torch.float32)


def _cuda_recorder(body: Callable[[], None]) -> Callable[[], None]:
    """Record ``body`` in a ``torch.cuda.CUDAGraph``; return its replay (which keeps it alive)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay


@contextlib.contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, run the block on a fresh stream ordered after (and before) the current one."""
    if device.type != "cuda":
        yield
        return
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    try:
        with torch.cuda.stream(side):
            yield
    finally:
        current.wait_stream(side)


class GraphedMetaStep:
    """One MAML meta-step and Adam update per call, as a CUDA graph where possible.

    ``model``: built by :mod:`mamlscope.models` and runnable by the batched forward;
    ``optimizer``: over ``model.parameters()``, ``capturable=True`` for a capture (a
    non-capturable optimiser runs eagerly, with that as the reason). ``order``,
    ``inner_lr``, ``inner_steps``, ``fd_epsilon`` and ``adapted`` (the parameters the inner
    loop moves; None: all) as :func:`mamlscope.maml.meta_step`;
    ``max_tasks_in_flight``: the batched step over chunks of at most that many tasks
    (peak memory of a chunk, not of the whole meta-batch). ``capture=False``: always the
    eager body over the static buffers.

    ``step(support_x, support_y, query_x, query_y)`` (or calling the object) updates the
    model's parameters in place and returns the step's mean query loss and accuracy as
    0-dim float64 device tensors, without waiting for the device.
    """

    recorder: Recorder = staticmethod(_cuda_recorder)

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        inner_lr: float,
        inner_steps: int,
        order: str,
        fd_epsilon: float = FD_EPSILON,
        max_tasks_in_flight: int | None = None,
        capture: bool = True,
        warmup_steps: int = WARMUP_STEPS,
        recorder: Recorder | None = None,
        adapted: Collection[str] | None = None,
    ) -> None:
        gradient = Gradient(order, fd_epsilon)
        self.inner = InnerLoop(inner_lr, inner_steps, resolve_adapted(model, adapted))
        resolve_strategy("graph", model, next(model.parameters()).device)  # or ConfigError
        check_max_tasks_in_flight(max_tasks_in_flight)
        self.model, self.optimizer = model, optimizer
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.device = self.params[0].device
        self.max_tasks_in_flight = max_tasks_in_flight
        self.warmup_steps = int(warmup_steps)
        self._meta = functools.partial(batched_meta, inner=self.inner, gradient=gradient)
        if recorder is not None:
            self.recorder = recorder
        if not capture:
            self.reason: str | None = "capture disabled"
        elif recorder is not None:
            self.reason = None  # a test's recorder: no CUDA needed
        else:
            self.reason = capture_unavailable(model, self.device)
        if self.reason is None and self.device.type == "cuda" and not self._capturable():
            self.reason = "the optimiser is not capturable (torch.optim.Adam(capturable=True))"
        self._static: list[torch.Tensor] | None = None
        self._signature: tuple[Any, ...] | None = None
        self._stats = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, accuracy
        self._replay: Callable[[], None] | None = None
        self.captures = 0  # graphs recorded so far (one more after each shape change or load)
        self.steps = 0

    # -- what runs ------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether steps run (or, before the first call, will run) as a captured graph."""
        return self.reason is None

    def __call__(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.step(support_x, support_y, query_x, query_y)

    def step(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One meta-step and Adam update; (mean query loss, accuracy) as device tensors."""
        inputs = (support_x, support_y, query_x, query_y)
        signature = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if signature != self._signature:
            self._allocate(inputs, signature)
        assert self._static is not None
        for buffer, x in zip(self._static, inputs, strict=True):
            buffer.copy_(x)
        if self.active and self._replay is None:
            self._capture()
        if self._replay is not None:
            self._replay()
        else:
            self._body()
        self.steps += 1
        out = self._stats.clone()  # the graph overwrites _stats on the next replay
        return out[0], out[1]

    def invalidate(self) -> None:
        """Drop the captured graph: the next call warms up and captures again."""
        self._replay = None

    def load_optimizer_state(self, state: Mapping[str, Any]) -> None:
        """Load an optimiser state (a resume state) and re-capture at the next call."""
        load_optimizer_state(self.optimizer, state, capturable=self._capturable())
        self.invalidate()

    def describe(self) -> str:
        """One line for logs and results: what the meta-step runs as."""
        if self.active:
            return "cuda-graph"
        return f"eager ({self.reason})"

    # -- internals ------------------------------------------------------------------------

    def _capturable(self) -> bool:
        return all(bool(g.get("capturable", False)) for g in self.optimizer.param_groups)

    def _allocate(self, inputs: tuple[torch.Tensor, ...], signature: tuple[Any, ...]) -> None:
        """Static buffers for inputs of a new shape; the old graph read the old ones."""
        check_tasks(*inputs)
        if any(t.device != self.device for t in inputs):
            raise ConfigError(
                f"task tensors must be on the model's device {self.device}; got "
                f"{sorted({str(t.device) for t in inputs})}"
            )
        self._static = [torch.empty_like(t) for t in inputs]
        self._signature = signature
        self._replay = None
        for p in self.params:
            if p.grad is None:  # the optimiser reads these same tensors on every replay
                p.grad = torch.zeros_like(p)

    def _body(self) -> None:
        """The step over the static buffers: meta-gradients into ``.grad``, Adam, statistics."""
        assert self._static is not None
        out = _in_chunks(self._meta, self.max_tasks_in_flight, self.model, *self._static)
        for name, p in zip(self.names, self.params, strict=True):
            assert p.grad is not None
            p.grad.copy_(out.grads[name])
        self.optimizer.step()
        self._stats.copy_(torch.stack([out.loss.double(), out.accuracy.double()]))

    def _snapshot(self) -> tuple[list[torch.Tensor], dict[int, dict[str, Any]]]:
        params = [p.detach().clone() for p in self.params]
        state: dict[int, dict[str, Any]] = {}
        for i, p in enumerate(self.params):
            entry = self.optimizer.state.get(p)
            if entry:
                state[i] = {
                    k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                    for k, v in entry.items()
                }
        return params, state

    @torch.no_grad()
    def _restore(self, snapshot: tuple[list[torch.Tensor], dict[int, dict[str, Any]]]) -> None:
        """Put parameters and optimiser state back in place (the graph keeps the tensors):
        state that the warm-up created is zeroed, which is Adam's state before its first
        step."""
        params, state = snapshot
        for i, (p, saved) in enumerate(zip(self.params, params, strict=True)):
            p.copy_(saved)
            entry = self.optimizer.state.get(p)
            if not entry:
                continue
            before = state.get(i, {})
            for key, value in list(entry.items()):
                if isinstance(value, torch.Tensor):
                    if key in before:
                        value.copy_(before[key])
                    else:
                        value.zero_()
                elif key in before:
                    entry[key] = before[key]
            if p.grad is not None:
                p.grad.zero_()

    def _capture(self) -> None:
        """Warm up, restore, record; on any failure fall back to the eager body for good."""
        snapshot = self._snapshot()
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else None
        try:
            with on_device or contextlib.nullcontext():
                with _side_stream(self.device):
                    for _ in range(self.warmup_steps):
                        self._body()
                self._restore(snapshot)
                self._replay = self.recorder(self._body)
            self.captures += 1
        except Exception as exc:  # unsupported op, allocator, driver: all mean "no graph"
            self._replay = None
            self.reason = f"capture failed: {type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed, the meta-step runs eagerly: %s", self.reason)
            if self.device.type == "cuda":
                with contextlib.suppress(Exception):
                    torch.cuda.synchronize(self.device)
            self._restore(snapshot)
        else:
            log.info(
                "meta-step and Adam captured as one CUDA graph (%d warm-up steps, capture %d)",
                self.warmup_steps,
                self.captures,
            )
