"""The public entry points: :func:`meta_step`, :func:`meta_gradients`, :func:`adapt_and_predict`.

They check arguments, build the settings (:mod:`mamlscope.maml.settings`), pick a strategy
(:data:`AUTO`) and split tasks into chunks where that is faster. Every order runs in the
model's dtype (maml-fd holds ReLU/leaky-ReLU/max-pool gates), except maml-fd on a model
with a kink that cannot be held (:mod:`mamlscope.maml.fd_fallback`). The computation
itself is one of :data:`mamlscope.maml.strategies.STRATEGY_TABLE`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn

from mamlscope.errors import ConfigError
from mamlscope.maml.batched_forward import unsupported_reason
from mamlscope.maml.fd_fallback import unheld_plan, unheld_reason
from mamlscope.maml.inner_loop import Params
from mamlscope.maml.parameters import resolve_adapted
from mamlscope.maml.settings import (
    FD_EPSILON,
    ORDERS,  # noqa: F401  (public here as before)
    Gradient,
    InnerLoop,
)
from mamlscope.maml.strategies import STRATEGY_TABLE, MetaOutput
from mamlscope.maml.torch_norms import running_statistics_problem

# "graph": the "batched" step, which training (mamlscope.maml.graph.GraphedMetaStep)
# captures with Adam in one CUDA graph; anywhere else it runs as "batched".
STRATEGIES = ("auto", "graph", *STRATEGY_TABLE)
# How queries are normalised at evaluation (strategies.query_logits): "transductive" is
# Finn et al.'s protocol, "support" normalises each query with the support set's statistics.
BATCHNORM_MODES = ("transductive", "support")
# What "auto" runs, by device type and model kind: the fastest measured (docs/benchmarks.md).
AUTO = {
    "cpu": {"conv": "batched", "dense": "batched"},
    "cuda": {"conv": "batched", "dense": "batched"},  # measured on one H200
}
# Tasks per call of the strategy under "auto" (absent: all tasks at once); on 2 CPU cores
# chunks of 4 were fastest for conv4 (docs/benchmarks.md).
AUTO_CHUNK = {"cpu": {"conv": 4}}


@dataclass(frozen=True)
class MetaStepResult:
    """Meta-gradients by parameter name; mean query loss and accuracy after adaptation."""

    grads: dict[str, torch.Tensor]
    query_loss: float
    query_accuracy: float
    strategy: str  # the strategy that ran ("auto" resolved)


def _kind(model: nn.Module) -> str:
    return "conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "dense"


def resolve_strategy(strategy: str, model: nn.Module, device: torch.device) -> str:
    """The strategy that runs: ``"auto"`` becomes :data:`AUTO`'s choice for the device type
    and model kind (``"conv"`` if it has a ``Conv2d``, else ``"dense"``); ``"vmap"`` replaces
    ``"batched"`` for a model the batched forward cannot run (vmap runs any module, in
    every order). ``"graph"`` is the ``"batched"`` computation (only training captures it
    in a CUDA graph, see :mod:`mamlscope.maml.graph`), so it resolves to ``"batched"``.
    Others pass through. A torch BatchNorm tracking running statistics is refused here,
    for every strategy (:mod:`mamlscope.maml.torch_norms`)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    problem = running_statistics_problem(model)
    if problem is not None:
        raise ConfigError(problem)
    reason = unsupported_reason(model)
    if strategy in ("batched", "graph") and reason is not None:
        raise ConfigError(f"strategy {strategy!r} cannot run this model: {reason}; use 'vmap'")
    if strategy == "graph":
        return "batched"
    if strategy != "auto":
        return strategy
    choice = AUTO.get(device.type, AUTO["cuda"])[_kind(model)]
    return "vmap" if choice == "batched" and reason is not None else choice


def check_tasks(
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor | None,
) -> None:
    """Episode tensors of matching ``[tasks, examples, ...]`` shapes (``query_y`` None: a
    prediction, only ``query_x``'s task and example dims are checked)."""
    if query_y is None:  # prediction: only the query images' task and example dims matter
        query_y = torch.empty(query_x.shape[:2])
    for name, x, y in (("support", support_x, support_y), ("query", query_x, query_y)):
        if x.dim() < 3 or y.dim() != 2 or x.shape[:2] != y.shape:
            raise ConfigError(
                f"{name}_x must be [tasks, examples, ...] and {name}_y [tasks, examples]; "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
    if support_x.shape[0] != query_x.shape[0] or support_x.shape[0] < 1:
        raise ConfigError(
            f"support and query need the same tasks >= 1: {support_x.shape[0]}, {query_x.shape[0]}"
        )


def check_max_tasks_in_flight(value: int | None) -> None:
    """``maml.max_tasks_in_flight`` is None (unbounded) or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"max_tasks_in_flight must be null or an integer >= 1, got {value!r}")


def _in_chunks(
    meta: Callable[..., MetaOutput],
    chunk: int | None,
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
) -> MetaOutput:
    """``meta`` over slices of ``chunk`` tasks, combined into the mean over all tasks."""
    tasks = support_x.shape[0]
    if chunk is None or chunk >= tasks:
        return meta(model, support_x, support_y, query_x, query_y)
    total: Params = {}
    loss: torch.Tensor | float = 0.0
    accuracy: torch.Tensor | float = 0.0
    for i in range(0, tasks, chunk):
        j = min(i + chunk, tasks)
        weight = (j - i) / tasks
        out = meta(model, support_x[i:j], support_y[i:j], query_x[i:j], query_y[i:j])
        total = {k: total.get(k, 0) + weight * v for k, v in out.grads.items()}
        loss, accuracy = loss + weight * out.loss, accuracy + weight * out.accuracy
    assert isinstance(loss, torch.Tensor) and isinstance(accuracy, torch.Tensor)  # chunks >= 1
    return MetaOutput(total, loss, accuracy)


def _run_meta(
    model: nn.Module,
    tasks: tuple[torch.Tensor, ...],
    *,
    inner: InnerLoop,
    gradient: Gradient,
    chosen: str,
    chunk: int | None,
) -> MetaOutput:
    """The chosen strategy over ``tasks`` in chunks; maml-fd un-held in float64 where the
    model has a kink the strategy cannot hold (only ``batched`` holds every kink it runs)."""
    dtype = next(model.parameters()).dtype
    if gradient.order == "finite-difference" and chosen != "batched" and inner.steps > 0:
        if unheld_reason(model, tasks[0][0]) is not None:
            model, tasks, gradient = unheld_plan(model, tasks, gradient)
    meta = functools.partial(STRATEGY_TABLE[chosen].meta, inner=inner, gradient=gradient)
    out = _in_chunks(meta, chunk, model, *tasks)
    return MetaOutput({k: g.detach().to(dtype) for k, g in out.grads.items()}, *out[1:])


def meta_step(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float = FD_EPSILON,
    strategy: str = "auto",
    max_tasks_in_flight: int | None = None,
    adapted: Collection[str] | None = None,
) -> MetaStepResult:
    """Meta-gradients of the mean post-adaptation query loss, plus that loss and accuracy.

    ``support_x`` ``[T, N*K, C, H, W]``, ``support_y`` ``[T, N*K]``, ``query_x``
    ``[T, N*Q, C, H, W]``, ``query_y`` ``[T, N*Q]``. ``grads`` has the names and shapes of
    ``model.named_parameters()``; apply them with any optimiser (Finn et al.'s line 10 uses
    Adam). Neither parameters, ``.grad`` nor buffers of ``model`` are changed. ``model``
    is any ``nn.Module`` (``"auto"`` picks a strategy that runs it).

    ``order``: ``"second"`` (exact, through the inner loop), ``"first"`` (first-order MAML)
    or ``"finite-difference"`` (the exact recursion with Hessian-vector products by central
    differences of norm ``fd_epsilon``, in the model's dtype, with the ReLU masks,
    leaky-ReLU slopes and max-pool choices of the unperturbed point held so that no
    perturbation crosses a kink; :func:`mamlscope.maml.inner_loop.fd_meta_gradient`).
    Mamlscope's layers and torch's ``nn.ReLU``, ``nn.LeakyReLU`` and ``nn.MaxPool2d`` hold
    their gates; for a model with another kink (``F.relu`` in a custom forward,
    ``nn.ReLU6``...) the differences run un-held in float64 instead, logged once
    (:mod:`mamlscope.maml.fd_fallback`).

    ``adapted``: the names of the parameters the inner loop moves (None: all; e.g.
    :func:`mamlscope.maml.select_parameters`); the others stay fixed in the inner loop and
    still get their meta-gradient, through the query loss and (second order, finite
    differences) through the inner loop's dependence on them.

    ``max_tasks_in_flight``: run the strategy on at most this many tasks at a time and
    combine the chunks into the same mean (``maml.max_tasks_in_flight``: peak memory
    bounded by the chunk, not the meta-batch); None, all at once (or ``"auto"``'s chunks).
    """
    check_max_tasks_in_flight(max_tasks_in_flight)
    gradient = Gradient(order, fd_epsilon)
    inner = InnerLoop(inner_lr, inner_steps, resolve_adapted(model, adapted))
    check_tasks(support_x, support_y, query_x, query_y)
    first = next(model.parameters())
    chosen = resolve_strategy(strategy, model, first.device)
    chunk = None
    if strategy == "auto" and chosen == "batched":
        chunk = AUTO_CHUNK.get(first.device.type, {}).get(_kind(model))
    if max_tasks_in_flight is not None:
        chunk = max_tasks_in_flight if chunk is None else min(chunk, max_tasks_in_flight)
    tasks = (support_x, support_y, query_x, query_y)
    out = _run_meta(model, tasks, inner=inner, gradient=gradient, chosen=chosen, chunk=chunk)
    return MetaStepResult(out.grads, float(out.loss), float(out.accuracy), chosen)


def meta_gradients(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float = FD_EPSILON,
    strategy: str = "auto",
) -> dict[str, torch.Tensor]:
    """Only the gradients of :func:`meta_step` (same arguments), by parameter name."""
    return meta_step(
        model,
        support_x,
        support_y,
        query_x,
        query_y,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        order=order,
        fd_epsilon=fd_epsilon,
        strategy=strategy,
    ).grads


def adapt_and_predict(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    strategy: str = "vmap",
    batchnorm: str = "transductive",
    adapted: Collection[str] | None = None,
) -> torch.Tensor:
    """Query logits ``[T, N*Q, classes]`` after adapting on each task's support set.

    Evaluation with the same inner loop as training (``adapted`` as in :func:`meta_step`);
    the model is not changed and no graph is returned. ``batchnorm``
    (:data:`BATCHNORM_MODES`) says how queries are normalised: ``"transductive"`` with the
    statistics of all queries of the task together (Finn et al.), ``"support"`` with the
    support set's statistics (mamlscope's and torch's BatchNorm layers alike), so that no
    query's prediction depends on another query. ``"vmap"`` by default, the fastest or
    close to it for evaluation's many inner steps (docs/benchmarks.md).
    """
    if batchnorm not in BATCHNORM_MODES:
        raise ConfigError(f"batchnorm must be one of {list(BATCHNORM_MODES)}, got {batchnorm!r}")
    inner = InnerLoop(inner_lr, inner_steps, resolve_adapted(model, adapted))
    check_tasks(support_x, support_y, query_x, None)
    chosen = resolve_strategy(strategy, model, next(model.parameters()).device)
    return STRATEGY_TABLE[chosen].predict(
        model, support_x, support_y, query_x, inner=inner, batchnorm=batchnorm
    )
