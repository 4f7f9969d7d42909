"""The two recurrences of MAML that every strategy and order shares.

* :func:`inner_loop`: the inner SGD trajectory (Finn et al. 2017, Algorithm 1, lines 6-7);
* :func:`fd_meta_gradient`: the backward pass through that trajectory with finite-difference
  Hessian-vector products (the ``"finite-difference"`` order).

Both take a ``grad_fn`` (support-loss gradient at given parameters), so the same code runs
with ``torch.func.grad`` under ``vmap``, with ``torch.autograd.grad`` per task, and with
``torch.autograd.grad`` on task-batched parameters ``[T, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]
GradFn = Callable[[Params], Params]


def inner_loop(
    grad_fn: GradFn, params: Params, *, inner_lr: float, inner_steps: int
) -> list[Params]:
    """The SGD trajectory ``[theta_0, ..., theta_K]``, ``theta_{k+1} = theta_k - a grad(theta_k)``.

    Whether the steps are differentiable is up to ``grad_fn`` and the caller, so this one
    recurrence serves training (every order) and evaluation.
    """
    trajectory = [params]
    for _ in range(inner_steps):
        grads = grad_fn(params)
        params = {k: p - inner_lr * grads[k] for k, p in params.items()}
        trajectory.append(params)
    return trajectory


def _per_task(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a per-task ``[T]`` factor against ``like`` (``[T, ...]``)."""
    return r if r.dim() == 0 else r.view(-1, *([1] * (like.dim() - 1)))


def _norm(v: Params, task_dim: bool) -> torch.Tensor:
    """Norm over all parameters together: a scalar, or ``[T]`` per task with ``task_dim``."""
    if task_dim:
        return sum(p.reshape(p.shape[0], -1).square().sum(1) for p in v.values()).sqrt()  # [T]
    return sum(p.square().sum() for p in v.values()).sqrt()  # []


def fd_meta_gradient(
    grad_fn: GradFn,
    trajectory: list[Params],
    v: Params,
    *,
    inner_lr: float,
    fd_epsilon: float,
    task_dim: bool = False,
) -> Params:
    """``(I - a H_0) ... (I - a H_{K-1}) v`` with ``H_k v`` by central differences.

    ``v`` starts as ``grad L_q(theta_K)``; the Hessians are those of the support loss along
    ``trajectory`` (``[theta_0, ..., theta_K]``), applied from the last step back, and
    ``H v ~ (grad(theta + r v) - grad(theta - r v)) / 2r`` with ``r = fd_epsilon / ||v||``
    per task, so the perturbation has norm ``fd_epsilon`` (DARTS, Liu et al. 2019).

    Central differences are exact to ``O(r^2)`` only where the loss is smooth: with ReLU or
    max-pool a perturbation that moves a unit across its kink adds an error of order
    ``1/r`` times the gradient jump; docs/benchmarks.md gives measured errors.
    """
    for theta in reversed(trajectory[:-1]):
        norm = _norm(v, task_dim)  # [] or [T]
        r = fd_epsilon / norm.clamp_min(torch.finfo(norm.dtype).tiny)  # [] or [T]
        plus = grad_fn({k: p + _per_task(r, p) * v[k] for k, p in theta.items()})
        minus = grad_fn({k: p - _per_task(r, p) * v[k] for k, p in theta.items()})
        v = {k: v[k] - inner_lr * (plus[k] - minus[k]) / (2 * _per_task(r, v[k])) for k in theta}
    return v


def task_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of each task's mean cross-entropy; logits ``[(T,) B, classes]``.

    Summing (not averaging) over tasks makes the gradient w.r.t. task-batched parameters
    ``[T, ...]`` equal, row by row, to each task's own gradient.
    """
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
    return ce / y.shape[-1]
