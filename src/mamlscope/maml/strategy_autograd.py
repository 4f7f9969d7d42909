"""The ``batched`` and ``loop`` strategies: ``torch.autograd.grad`` over explicit forwards.

* ``batched``: parameters expanded to ``[T, ...]`` and the task-batched forward of
  :mod:`mamlscope.maml.batched_forward`, all tasks in one pass;
* ``loop``: a Python loop over tasks with the model's own forward (reference and fallback).

Both share :func:`_autograd_meta` and :func:`_autograd_predict`, where ``tasks`` says
whether the forward is task-batched (``T``) or one task (None).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mamlscope.maml.batched_forward import batched_forward
from mamlscope.maml.inner_loop import Params, fd_meta_gradient, inner_loop, task_loss_sum
from mamlscope.maml.settings import Gradient, InnerLoop
from mamlscope.maml.strategy_parts import Forward, MetaOutput, query_logits
from mamlscope.models import Gates, functional_forward, record_gates


def _autograd_support_grad(
    forward: Forward, support_x: torch.Tensor, support_y: torch.Tensor
) -> Callable[..., Params]:
    """Support-loss gradient at ``p`` of the parameters in ``wrt`` (None: all); without
    ``create_graph`` the result is a constant, and backpropagation stops below the lowest
    parameter in ``wrt``."""

    def support_grad(
        p: Params, create_graph: bool = False, wrt: frozenset[str] | None = None
    ) -> Params:
        if not create_graph:  # first order, finite differences, evaluation
            p = {k: v.detach().requires_grad_(wrt is None or k in wrt) for k, v in p.items()}
        wanted = list(p) if wrt is None else [k for k in p if k in wrt]
        if not wanted:
            return {}
        loss = task_loss_sum(forward(p, support_x), support_y)
        g = torch.autograd.grad(
            loss, [p[k] for k in wanted], create_graph=create_graph, materialize_grads=True
        )
        return dict(zip(wanted, g, strict=True))

    return support_grad


def _expand(theta: Params, tasks: int | None) -> Params:
    """``theta`` with a leading task dim ``[T, ...]`` (batched) or as it is (one task)."""
    return {k: p.expand(tasks, *p.shape) if tasks else p for k, p in theta.items()}


def _autograd_meta(
    forward: Forward,
    theta: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    inner: InnerLoop,
    gradient: Gradient,
    tasks: int | None,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """Meta-gradient summed over tasks, query loss summed over tasks, correct-query count.

    ``theta`` are leaves requiring grad. With ``tasks`` the forward is task-batched and
    ``theta`` is expanded to ``[T, ...]``; with ``None`` this is one task of the loop.
    """
    support_grad = _autograd_support_grad(forward, support_x, support_y)

    def query_grad(p: Params, wrt: Params) -> tuple[Params, torch.Tensor, torch.Tensor]:
        logits = forward(p, query_x)  # [(T,) N*Q, classes]
        loss = task_loss_sum(logits, query_y)
        g = torch.autograd.grad(loss, list(wrt.values()), materialize_grads=True)
        correct = (logits.argmax(-1) == query_y).sum()
        return dict(zip(wrt, g, strict=True)), loss.detach(), correct

    if gradient.order == "second":  # differentiate through the inner loop back to theta
        adapted = inner_loop(
            lambda p: support_grad(p, create_graph=True, wrt=inner.adapted),
            _expand(theta, tasks),  # [(T,) ...], in theta's graph
            inner,
        )[-1]
        return query_grad(adapted, theta)  # summed over tasks by autograd through expand
    start = _expand({k: p.detach() for k, p in theta.items()}, tasks)
    gates: list[Gates] = []  # finite differences: the gate pattern of each inner step

    def inner_grad(p: Params) -> Params:
        return support_grad(p, wrt=inner.adapted)

    def recording_grad(p: Params) -> Params:
        out: Params = {}
        gates.append(record_gates(lambda: out.update(inner_grad(p))))
        return out

    fd = gradient.order == "finite-difference"
    trajectory = inner_loop(recording_grad if fd and gradient.held else inner_grad, start, inner)
    last = {k: p.detach().requires_grad_() for k, p in trajectory[-1].items()}
    g, loss, correct = query_grad(last, last)  # row t of g is task t's own gradient
    if fd:
        g = fd_meta_gradient(
            support_grad,  # every parameter's gradient: the difference is over all
            trajectory,
            g,
            inner_lr=inner.lr,
            fd_epsilon=gradient.fd_epsilon,
            task_dim=tasks is not None,
            gates=gates if gradient.held else None,
            adapted=inner.adapted,
        )
    return {k: v.sum(0) if tasks else v for k, v in g.items()}, loss, correct


def _autograd_predict(
    forward: Forward,
    theta: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    inner: InnerLoop,
    batchnorm: str,
    tasks: int | None,
) -> torch.Tensor:
    """Query logits ``[(T,) N*Q, classes]`` after the inner loop, no graph kept."""
    start = _expand({k: p.detach() for k, p in theta.items()}, tasks)
    with torch.enable_grad():  # the inner gradients need autograd even under no_grad
        support_grad = _autograd_support_grad(forward, support_x, support_y)
        grad_fn = lambda p: support_grad(p, wrt=inner.adapted)  # noqa: E731
        adapted = inner_loop(grad_fn, start, inner)[-1]
    with torch.no_grad():
        adapted = {k: p.detach() for k, p in adapted.items()}
        return query_logits(forward, adapted, support_x, query_x, batchnorm)


def _leaves(model: nn.Module) -> Params:
    return {k: p.detach().requires_grad_() for k, p in model.named_parameters()}


def _batched(model: nn.Module) -> Forward:
    return lambda p, x: batched_forward(model, p, x)  # [T, B, classes]


def _per_task(model: nn.Module) -> Forward:
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    return lambda p, x: functional_forward(model, p, buffers, x)  # [B, classes]


def batched_meta(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    inner: InnerLoop,
    gradient: Gradient,
) -> MetaOutput:
    """All tasks at once through :func:`mamlscope.maml.batched_forward.batched_forward`."""
    tasks = support_x.shape[0]
    g, loss, correct = _autograd_meta(
        _batched(model),
        _leaves(model),
        support_x,
        support_y,
        query_x,
        query_y,
        inner=inner,
        gradient=gradient,
        tasks=tasks,
    )
    accuracy = correct.double() / query_y.numel()
    return MetaOutput({k: v / tasks for k, v in g.items()}, loss / tasks, accuracy)


def batched_predict(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    inner: InnerLoop,
    batchnorm: str,
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]`` with the task-batched forward."""
    return _autograd_predict(
        _batched(model),
        dict(model.named_parameters()),
        support_x,
        support_y,
        query_x,
        inner=inner,
        batchnorm=batchnorm,
        tasks=support_x.shape[0],
    )


def loop_meta(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    inner: InnerLoop,
    gradient: Gradient,
) -> MetaOutput:
    """One task at a time with the model's own forward (batch statistics per task)."""
    theta, forward = _leaves(model), _per_task(model)
    tasks = support_x.shape[0]
    total: Params = {k: torch.zeros_like(p) for k, p in theta.items()}
    # become 0-dim tensors on the model's device (no per-task sync)
    loss: torch.Tensor | float = 0.0
    correct: torch.Tensor | int = 0
    for t in range(tasks):
        g, task_loss, task_correct = _autograd_meta(
            forward,
            theta,
            support_x[t],
            support_y[t],
            query_x[t],
            query_y[t],
            inner=inner,
            gradient=gradient,
            tasks=None,
        )
        total = {k: total[k] + g[k] for k in total}
        loss, correct = loss + task_loss, correct + task_correct
    assert isinstance(loss, torch.Tensor) and isinstance(correct, torch.Tensor)  # tasks >= 1
    accuracy = correct.double() / query_y.numel()
    return MetaOutput({k: v / tasks for k, v in total.items()}, loss / tasks, accuracy)


def loop_predict(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    inner: InnerLoop,
    batchnorm: str,
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]``, one task at a time."""
    theta: Params = {k: p for k, p in model.named_parameters()}
    forward = _per_task(model)
    logits = [
        _autograd_predict(
            forward,
            theta,
            support_x[t],
            support_y[t],
            query_x[t],
            inner=inner,
            batchnorm=batchnorm,
            tasks=None,
        )
        for t in range(support_x.shape[0])
    ]
    return torch.stack(logits)  # [T, N*Q, classes]
