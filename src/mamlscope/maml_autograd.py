"""The ``"batched"`` and ``"loop"`` strategies of :mod:`mamlscope.maml`: plain ``torch.autograd``.

* ``loop``: a Python loop over tasks; each task runs the model's own forward
  (:func:`mamlscope.models.functional_forward`) and ``torch.autograd.grad``. Reference-style,
  and the fallback when ``torch.func`` cannot handle a model.
* ``batched``: parameters expanded to ``[T, ...]`` and the explicitly task-batched forward of
  :mod:`mamlscope.batched_forward`; all tasks in one graph.

``*_meta`` return ``(mean meta-gradient, mean query loss, query accuracy)``; ``*_predict``
return adapted query logits for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mamlscope.batched_forward import batched_forward
from mamlscope.inner_loop import Params, fd_meta_gradient, inner_loop, task_loss_sum
from mamlscope.models import functional_forward

Forward = Callable[[Params, torch.Tensor], torch.Tensor]
Result = tuple[Params, torch.Tensor, torch.Tensor]


def _support_grad_fn(forward: Forward, x: torch.Tensor, y: torch.Tensor) -> Callable[..., Params]:
    """Support-loss gradient at ``p``; without ``create_graph`` the result is a constant."""

    def support_grad(p: Params, create_graph: bool = False) -> Params:
        if not create_graph:  # first order, finite differences, evaluation
            p = {k: v.detach().requires_grad_() for k, v in p.items()}
        loss = task_loss_sum(forward(p, x), y)
        g = torch.autograd.grad(
            loss, list(p.values()), create_graph=create_graph, materialize_grads=True
        )
        return dict(zip(p, g, strict=True))

    return support_grad


def _meta(
    forward: Forward,
    theta: Params,
    sx: torch.Tensor,
    sy: torch.Tensor,
    qx: torch.Tensor,
    qy: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float,
    tasks: int | None,
) -> Result:
    """Meta-gradient summed over tasks, query loss summed over tasks, correct-query count.

    ``theta`` are leaves requiring grad. With ``tasks`` the forward is task-batched and
    ``theta`` is expanded to ``[T, ...]``; with ``None`` this is one task of the loop.
    """
    task_dim = tasks is not None

    def expand(p: torch.Tensor) -> torch.Tensor:
        return p.expand(tasks, *p.shape) if task_dim else p  # [(T,) ...]

    support_grad = _support_grad_fn(forward, sx, sy)

    def query_grad(p: Params, wrt: Params) -> Result:
        logits = forward(p, qx)  # [(T,) N*Q, classes]
        loss = task_loss_sum(logits, qy)
        g = torch.autograd.grad(loss, list(wrt.values()), materialize_grads=True)
        correct = (logits.argmax(-1) == qy).sum()
        return dict(zip(wrt, g, strict=True)), loss.detach(), correct

    kw = {"inner_lr": inner_lr, "inner_steps": inner_steps}
    if order == "second":  # differentiate through the inner loop back to theta
        start = {k: expand(p) for k, p in theta.items()}  # [(T,) ...], in theta's graph
        adapted = inner_loop(lambda p: support_grad(p, create_graph=True), start, **kw)[-1]
        return query_grad(adapted, theta)  # summed over tasks by autograd through expand
    trajectory = inner_loop(support_grad, {k: expand(p.detach()) for k, p in theta.items()}, **kw)
    last = {k: p.detach().requires_grad_() for k, p in trajectory[-1].items()}
    g, loss, correct = query_grad(last, last)  # row t of g is task t's own gradient
    if order == "finite-difference":
        g = fd_meta_gradient(
            support_grad, trajectory, g, inner_lr=inner_lr, fd_epsilon=fd_epsilon,
            task_dim=task_dim,
        )  # fmt: skip
    return {k: v.sum(0) if task_dim else v for k, v in g.items()}, loss, correct


def _leaves(model: nn.Module) -> Params:
    return {k: p.detach().requires_grad_() for k, p in model.named_parameters()}


def batched_meta(
    model: nn.Module, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, **kw
) -> Result:
    """All tasks at once through :func:`mamlscope.batched_forward.batched_forward`."""
    tasks = sx.shape[0]
    g, loss, correct = _meta(
        lambda p, x: batched_forward(model, p, x), _leaves(model), sx, sy, qx, qy, tasks=tasks, **kw
    )
    return {k: v / tasks for k, v in g.items()}, loss / tasks, correct.double() / qy.numel()


def loop_meta(
    model: nn.Module, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, **kw
) -> Result:
    """One task at a time with the model's own forward (batch statistics per task)."""
    theta = _leaves(model)
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(model, p, buffers, x)  # [B, classes]

    tasks = sx.shape[0]
    total: Params = {k: torch.zeros_like(p) for k, p in theta.items()}
    loss, correct = 0.0, 0  # become 0-dim tensors on the model's device (no per-task sync)
    for t in range(tasks):
        g, task_loss, task_correct = _meta(
            forward, theta, sx[t], sy[t], qx[t], qy[t], tasks=None, **kw
        )
        total = {k: total[k] + g[k] for k in total}
        loss, correct = loss + task_loss, correct + task_correct
    return {k: v / tasks for k, v in total.items()}, loss / tasks, correct.double() / qy.numel()


def _adapted_logits(
    forward: Forward,
    theta: Params,
    sx: torch.Tensor,
    sy: torch.Tensor,
    qx: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    tasks: int | None,
) -> torch.Tensor:
    """Query logits ``[(T,) N*Q, classes]`` after the inner loop, no graph kept (evaluation)."""
    start = {
        k: p.detach().expand(tasks, *p.shape) if tasks else p.detach() for k, p in theta.items()
    }
    with torch.enable_grad():  # the inner gradients need autograd even under no_grad
        grad_fn = _support_grad_fn(forward, sx, sy)
        adapted = inner_loop(grad_fn, start, inner_lr=inner_lr, inner_steps=inner_steps)[-1]
    with torch.no_grad():
        return forward(adapted, qx)


def batched_predict(
    model: nn.Module, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, **kw
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]`` with the task-batched forward."""

    def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
        return batched_forward(model, p, x)  # [T, B, classes]

    theta = dict(model.named_parameters())
    return _adapted_logits(forward, theta, sx, sy, qx, tasks=sx.shape[0], **kw)


def loop_predict(
    model: nn.Module, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, **kw
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]``, one task at a time."""
    theta = dict(model.named_parameters())
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(model, p, buffers, x)  # [B, classes]

    logits = [
        _adapted_logits(forward, theta, sx[t], sy[t], qx[t], tasks=None, **kw)
        for t in range(sx.shape[0])
    ]
    return torch.stack(logits)  # [T, N*Q, classes]
