"""Three ways to run MAML's per-task computation over a batch of tasks, one shape for all.

Each entry of :data:`STRATEGY_TABLE` is a :class:`Strategy` with the same two functions:

* ``meta(model, support_x, support_y, query_x, query_y, *, inner_lr, inner_steps, order,
  fd_epsilon)`` -> :class:`MetaOutput`, means over tasks;
* ``predict(model, support_x, support_y, query_x, *, inner_lr, inner_steps, batchnorm)`` ->
  adapted query logits ``[T, N*Q, classes]``, no graph kept.

The strategies differ only in how tasks are batched:

* ``vmap``: one pure per-task function (``torch.func.functional_call`` and ``grad``) mapped
  over tasks with ``torch.func.vmap`` (:func:`adapt` is that per-task inner loop);
* ``batched``: parameters expanded to ``[T, ...]`` and the task-batched forward of
  :mod:`mamlscope.maml.batched_forward`, differentiated with ``torch.autograd.grad``;
* ``loop``: a Python loop over tasks with ``torch.autograd.grad`` (reference and fallback).

Episode tensors are always named ``support_x`` ``[T, N*K, C, H, W]``, ``support_y``
``[T, N*K]``, ``query_x`` ``[T, N*Q, C, H, W]``, ``query_y`` ``[T, N*Q]`` (one task: the
same without ``T``). All inner loops are :func:`mamlscope.maml.inner_loop.inner_loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from mamlscope.maml.batched_forward import batched_forward
from mamlscope.maml.inner_loop import (
    GradFn,
    Params,
    fd_meta_gradient,
    inner_loop,
    task_loss_sum,
)
from mamlscope.models import Gates, functional_forward, record_gates, statistics_from_first

Forward = Callable[[Params, torch.Tensor], torch.Tensor]  # (params, x [(T,) B, C, H, W])


class MetaOutput(NamedTuple):
    """Mean meta-gradient by parameter name, mean query loss and query accuracy (0-dim)."""

    grads: Params
    loss: torch.Tensor
    accuracy: torch.Tensor


class Strategy(NamedTuple):
    """The two functions every strategy provides (module docstring)."""

    meta: Callable[..., MetaOutput]
    predict: Callable[..., torch.Tensor]


def query_logits(
    forward: Forward,
    params: Params,
    support_x: torch.Tensor,
    query_x: torch.Tensor,
    batchnorm: str,
) -> torch.Tensor:
    """Query logits ``[(T,) N*Q, classes]`` of adapted ``params`` under a BatchNorm mode.

    ``"transductive"`` (Finn et al.): the queries form their own batch, so each query's
    prediction depends on the others. ``"support"``: support and queries run as one batch
    whose BatchNorm statistics come from the support rows only, so each query is
    normalised independently of every other query.
    """
    if batchnorm == "transductive":
        return forward(params, query_x)
    n_support = support_x.shape[-4]
    with statistics_from_first(n_support):
        logits = forward(params, torch.cat([support_x, query_x], dim=-4))  # [(T,) N*K+N*Q, C]
    return logits[..., n_support:, :]


def _parameters(model: nn.Module) -> tuple[Params, Params]:
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    return params, buffers


# ----------------------------------------------------------------------------------- vmap


def _loss(
    params: Params, model: nn.Module, buffers: Params, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(functional_forward(model, params, buffers, x), y)


def _func_support_grad(
    model: nn.Module, buffers: Params, support_x: torch.Tensor, support_y: torch.Tensor
) -> GradFn:
    """Support-loss gradient at given parameters, by ``torch.func.grad`` (one task)."""
    return lambda p: grad(_loss)(p, model, buffers, support_x, support_y)


def adapt(
    model: nn.Module,
    params: Params,
    buffers: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
) -> Params:
    """One task's adapted parameters ``theta_K`` (Finn et al. 2017, Alg. 1, lines 6-7).

    Pure, so safe under ``vmap`` and ``grad``; ``support_x`` is ``[N*K, C, H, W]``.
    Differentiating the result w.r.t. ``params`` with an outer ``torch.func.grad`` gives
    second-order MAML; using it outside any outer differentiation gives first-order MAML.
    """
    grad_fn = _func_support_grad(model, buffers, support_x, support_y)
    return inner_loop(grad_fn, params, inner_lr=inner_lr, inner_steps=inner_steps)[-1]


def vmap_meta(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float,
) -> MetaOutput:
    """Per-task ``torch.func`` meta-gradients mapped over tasks with ``vmap``."""
    params, buffers = _parameters(model)

    def query(p: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_forward(model, p, buffers, x)  # [N*Q, classes]
        return F.cross_entropy(logits, y), logits.detach()

    def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):  # type: ignore[no-untyped-def]
        if order == "second":
            g, logits = grad(
                lambda p: query(
                    adapt(model, p, buffers, sx, sy, inner_lr=inner_lr, inner_steps=inner_steps),
                    qx,
                    qy,
                ),
                has_aux=True,
            )(params)
        else:  # no outer transform over the inner loop: its steps are constants
            grad_fn = _func_support_grad(model, buffers, sx, sy)
            trajectory = inner_loop(grad_fn, params, inner_lr=inner_lr, inner_steps=inner_steps)
            g, logits = grad(query, has_aux=True)(trajectory[-1], qx, qy)
            if order == "finite-difference":
                g = fd_meta_gradient(
                    grad_fn,
                    trajectory,
                    g,
                    inner_lr=inner_lr,
                    fd_epsilon=fd_epsilon,
                    gates=[  # a forward of its own: patterns recorded inside grad would leak
                        record_gates(lambda p=p: functional_forward(model, p, buffers, sx))
                        for p in trajectory[:-1]
                    ],
                )
        accuracy = (logits.argmax(-1) == qy).to(logits.dtype).mean()
        return g, F.cross_entropy(logits, qy), accuracy

    grads, loss, acc = vmap(task)(support_x, support_y, query_x, query_y)  # [T, ...], [T], [T]
    return MetaOutput({k: g.mean(0) for k, g in grads.items()}, loss.mean(), acc.mean())


def vmap_predict(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str,
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]``: :func:`adapt` mapped over tasks."""
    params, buffers = _parameters(model)

    def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(model, p, buffers, x)  # [B, classes]

    def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        adapted = adapt(model, params, buffers, sx, sy, inner_lr=inner_lr, inner_steps=inner_steps)
        return query_logits(forward, adapted, sx, qx, batchnorm)  # [N*Q, classes]

    with torch.no_grad():  # torch.func.grad inside still computes the inner gradients
        return vmap(task)(support_x, support_y, query_x)  # [T, N*Q, classes]


# ------------------------------------------------------------------ batched and loop (autograd)


def _autograd_support_grad(
    forward: Forward, support_x: torch.Tensor, support_y: torch.Tensor
) -> Callable[..., Params]:
    """Support-loss gradient at ``p``; without ``create_graph`` the result is a constant."""

    def support_grad(p: Params, create_graph: bool = False) -> Params:
        if not create_graph:  # first order, finite differences, evaluation
            p = {k: v.detach().requires_grad_() for k, v in p.items()}
        loss = task_loss_sum(forward(p, support_x), support_y)
        g = torch.autograd.grad(
            loss, list(p.values()), create_graph=create_graph, materialize_grads=True
        )
        return dict(zip(p, g, strict=True))

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
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float,
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

    if order == "second":  # differentiate through the inner loop back to theta
        adapted = inner_loop(
            lambda p: support_grad(p, create_graph=True),
            _expand(theta, tasks),  # [(T,) ...], in theta's graph
            inner_lr=inner_lr,
            inner_steps=inner_steps,
        )[-1]
        return query_grad(adapted, theta)  # summed over tasks by autograd through expand
    start = _expand({k: p.detach() for k, p in theta.items()}, tasks)
    gates: list[Gates] = []  # finite differences: the gate pattern of each inner step

    def recording_grad(p: Params) -> Params:
        out: Params = {}
        gates.append(record_gates(lambda: out.update(support_grad(p))))
        return out

    grad_fn = recording_grad if order == "finite-difference" else support_grad
    trajectory = inner_loop(grad_fn, start, inner_lr=inner_lr, inner_steps=inner_steps)
    last = {k: p.detach().requires_grad_() for k, p in trajectory[-1].items()}
    g, loss, correct = query_grad(last, last)  # row t of g is task t's own gradient
    if order == "finite-difference":
        g = fd_meta_gradient(
            support_grad,
            trajectory,
            g,
            inner_lr=inner_lr,
            fd_epsilon=fd_epsilon,
            task_dim=tasks is not None,
            gates=gates,
        )
    return {k: v.sum(0) if tasks else v for k, v in g.items()}, loss, correct


def _autograd_predict(
    forward: Forward,
    theta: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str,
    tasks: int | None,
) -> torch.Tensor:
    """Query logits ``[(T,) N*Q, classes]`` after the inner loop, no graph kept."""
    start = _expand({k: p.detach() for k, p in theta.items()}, tasks)
    with torch.enable_grad():  # the inner gradients need autograd even under no_grad
        grad_fn = _autograd_support_grad(forward, support_x, support_y)
        adapted = inner_loop(grad_fn, start, inner_lr=inner_lr, inner_steps=inner_steps)[-1]
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
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float,
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
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        order=order,
        fd_epsilon=fd_epsilon,
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
    inner_lr: float,
    inner_steps: int,
    batchnorm: str,
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]`` with the task-batched forward."""
    return _autograd_predict(
        _batched(model),
        dict(model.named_parameters()),
        support_x,
        support_y,
        query_x,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
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
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float,
) -> MetaOutput:
    """One task at a time with the model's own forward (batch statistics per task)."""
    theta, forward = _leaves(model), _per_task(model)
    tasks = support_x.shape[0]
    total: Params = {k: torch.zeros_like(p) for k, p in theta.items()}
    loss, correct = 0.0, 0  # become 0-dim tensors on the model's device (no per-task sync)
    for t in range(tasks):
        g, task_loss, task_correct = _autograd_meta(
            forward,
            theta,
            support_x[t],
            support_y[t],
            query_x[t],
            query_y[t],
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            order=order,
            fd_epsilon=fd_epsilon,
            tasks=None,
        )
        total = {k: total[k] + g[k] for k in total}
        loss, correct = loss + task_loss, correct + task_correct
    accuracy = correct.double() / query_y.numel()
    return MetaOutput({k: v / tasks for k, v in total.items()}, loss / tasks, accuracy)


def loop_predict(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str,
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]``, one task at a time."""
    theta, forward = dict(model.named_parameters()), _per_task(model)
    logits = [
        _autograd_predict(
            forward,
            theta,
            support_x[t],
            support_y[t],
            query_x[t],
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            batchnorm=batchnorm,
            tasks=None,
        )
        for t in range(support_x.shape[0])
    ]
    return torch.stack(logits)  # [T, N*Q, classes]


STRATEGY_TABLE: dict[str, Strategy] = {
    "vmap": Strategy(vmap_meta, vmap_predict),
    "batched": Strategy(batched_meta, batched_predict),
    "loop": Strategy(loop_meta, loop_predict),
}
