"""The ``vmap`` strategy: one pure per-task function mapped over tasks.

The per-task computation is ``torch.func.functional_call`` of the model and
``torch.func.grad``; ``torch.func.vmap`` maps it over tasks. It runs any ``nn.Module``
that ``functional_call`` and ``vmap`` can (no task-batched form needed), which is why
``"auto"`` falls back to it. :func:`adapt` is the per-task inner loop.
"""

from __future__ import annotations

import functools
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from mamlscope.maml.inner_loop import GradFn, Params, fd_meta_gradient, inner_loop
from mamlscope.maml.parameters import resolve_adapted
from mamlscope.maml.settings import Gradient, InnerLoop
from mamlscope.maml.strategy_parts import MetaOutput, detached_state, query_logits
from mamlscope.models import Gates, functional_forward, record_gates


def _loss(
    params: Params, model: nn.Module, buffers: Params, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(functional_forward(model, params, buffers, x), y)


def support_grad(
    model: nn.Module,
    buffers: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    wrt: frozenset[str] | None = None,
) -> GradFn:
    """Support-loss gradient at given parameters by ``torch.func.grad`` (one task), of the
    parameters in ``wrt`` only (None: all); the others enter as constants of the call."""
    if wrt is None:
        return lambda p: grad(_loss)(p, model, buffers, support_x, support_y)

    def partial(p: Params) -> Params:
        fixed = {k: v for k, v in p.items() if k not in wrt}
        moving = {k: v for k, v in p.items() if k in wrt}
        if not moving:
            return {}
        loss = lambda m: _loss({**fixed, **m}, model, buffers, support_x, support_y)  # noqa: E731
        return grad(loss)(moving)

    return partial


def adapt_task(
    model: nn.Module,
    params: Params,
    buffers: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    inner: InnerLoop,
) -> Params:
    """One task's adapted parameters ``theta_K`` under ``inner`` (pure; see :func:`adapt`)."""
    grad_fn = support_grad(model, buffers, support_x, support_y, inner.adapted)
    return inner_loop(grad_fn, params, inner)[-1]


def adapt(
    model: nn.Module,
    params: Params,
    buffers: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    adapted: Collection[str] | None = None,
) -> Params:
    """One task's adapted parameters ``theta_K`` (Finn et al. 2017, Alg. 1, lines 6-7).

    Pure, so safe under ``vmap`` and ``grad``; ``support_x`` is ``[N*K, C, H, W]``.
    Differentiating the result w.r.t. ``params`` with an outer ``torch.func.grad`` gives
    second-order MAML; using it outside any outer differentiation gives first-order MAML.
    ``adapted``: the parameter names the inner loop moves (None: all).
    """
    inner = InnerLoop(inner_lr, inner_steps, resolve_adapted(model, adapted))
    return adapt_task(model, params, buffers, support_x, support_y, inner)


def _step_gates(
    model: nn.Module, buffers: Params, support_x: torch.Tensor, trajectory: list[Params]
) -> list[Gates]:
    """The gate pattern of the support forward at each inner step, each by a forward of
    its own (a pattern recorded inside ``grad`` would leak its transform's tensors)."""
    return [
        record_gates(functools.partial(functional_forward, model, p, buffers, support_x))
        for p in trajectory[:-1]
    ]


def vmap_meta(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    *,
    inner: InnerLoop,
    gradient: Gradient,
) -> MetaOutput:
    """Per-task ``torch.func`` meta-gradients mapped over tasks with ``vmap``."""
    params, buffers = detached_state(model)

    def query(p: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_forward(model, p, buffers, x)  # [N*Q, classes]
        return F.cross_entropy(logits, y), logits.detach()

    def task(
        sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor, torch.Tensor]:
        if gradient.order == "second":
            g, logits = grad(
                lambda p: query(adapt_task(model, p, buffers, sx, sy, inner), qx, qy),
                has_aux=True,
            )(params)
        else:  # no outer transform over the inner loop: its steps are constants
            grad_fn = support_grad(model, buffers, sx, sy, inner.adapted)
            trajectory = inner_loop(grad_fn, params, inner)
            g, logits = grad(query, has_aux=True)(trajectory[-1], qx, qy)
            if gradient.order == "finite-difference":
                full = grad_fn if inner.adapted is None else support_grad(model, buffers, sx, sy)
                gates = _step_gates(model, buffers, sx, trajectory) if gradient.held else None
                g = fd_meta_gradient(
                    full,
                    trajectory,
                    g,
                    inner_lr=inner.lr,
                    fd_epsilon=gradient.fd_epsilon,
                    gates=gates,
                    adapted=inner.adapted,
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
    inner: InnerLoop,
    batchnorm: str,
) -> torch.Tensor:
    """Adapted query logits ``[T, N*Q, classes]``: :func:`adapt_task` mapped over tasks."""
    params, buffers = detached_state(model)

    def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_forward(model, p, buffers, x)  # [B, classes]

    def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        adapted = adapt_task(model, params, buffers, sx, sy, inner)
        return query_logits(forward, adapted, sx, qx, batchnorm)  # [N*Q, classes]

    with torch.no_grad():  # torch.func.grad inside still computes the inner gradients
        return vmap(task)(support_x, support_y, query_x)  # [T, N*Q, classes]
