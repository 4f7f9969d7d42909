"""The two recurrences of MAML that every strategy and order shares.

* :func:`inner_loop`: the inner SGD trajectory (Finn et al. 2017, Algorithm 1, lines 6-7);
* :func:`fd_meta_gradient`: the backward pass through that trajectory with finite-difference
  Hessian-vector products (the ``"finite-difference"`` order), ReLU/max-pool gates held.

Both take a ``grad_fn`` (support-loss gradient at given parameters), so the same code runs
with ``torch.func.grad`` under ``vmap``, with ``torch.autograd.grad`` per task, and with
``torch.autograd.grad`` on task-batched parameters ``[T, ...]``.

Both also take the set of adapted parameters (:class:`mamlscope.maml.settings.InnerLoop`'s
``adapted``; None: all): with projection ``P`` onto those coordinates the inner step is
``theta_{k+1} = theta_k - a P g(theta_k)``, so the backward recursion is
``v <- v - a H_k (P v)``: every parameter gets a meta-gradient, only the adapted ones move.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
import torch.nn.functional as F

from mamlscope.maml.settings import InnerLoop
from mamlscope.models import Gates, hold_gates

Params = dict[str, torch.Tensor]
GradFn = Callable[[Params], Params]


def inner_loop(grad_fn: GradFn, params: Params, inner: InnerLoop) -> list[Params]:
    """The SGD trajectory ``[theta_0, ..., theta_K]``, ``theta_{k+1} = theta_k - a grad(theta_k)``
    on the adapted parameters; the others are carried along unchanged (the same tensors).

    ``grad_fn`` needs to return the gradients of the adapted parameters only. Whether the
    steps are differentiable is up to ``grad_fn`` and the caller, so this one recurrence
    serves training (every order) and evaluation.
    """
    trajectory = [params]
    for _ in range(inner.steps):
        grads = grad_fn(params)
        if inner.adapted is None:
            params = {k: p - inner.lr * grads[k] for k, p in params.items()}
        else:
            params = {
                k: p - inner.lr * grads[k] if k in inner.adapted else p for k, p in params.items()
            }
        trajectory.append(params)
    return trajectory


def _per_task(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a per-task ``[T]`` factor against ``like`` (``[T, ...]``)."""
    return r if r.dim() == 0 else r.view(-1, *([1] * (like.dim() - 1)))


def _norm(v: Params, task_dim: bool) -> torch.Tensor:
    """Norm over all parameters together: a scalar, or ``[T]`` per task with ``task_dim``."""
    if task_dim:  # no reshape: weight gradients of bmm can be transposed views (a copy)
        squares = [torch.linalg.vector_norm(p, dim=tuple(range(1, p.dim()))) for p in v.values()]
    else:
        squares = [torch.linalg.vector_norm(p) for p in v.values()]
    return torch.stack(squares).square().sum(0).sqrt()  # [T] or []


def _moved(theta: Params, u: Params, r: torch.Tensor) -> Params:
    """``theta + r u`` on the coordinates ``u`` has; the other parameters as they are."""
    return {n: torch.addcmul(p, _per_task(r, p), u[n]) if n in u else p for n, p in theta.items()}


def fd_meta_gradient(
    grad_fn: GradFn,
    trajectory: list[Params],
    v: Params,
    *,
    inner_lr: float,
    fd_epsilon: float,
    task_dim: bool = False,
    gates: Sequence[Gates] | None = None,
    adapted: Collection[str] | None = None,
) -> Params:
    """``(I - a H_0 P) ... (I - a H_{K-1} P) v`` with ``H_k (P v)`` by central differences.

    ``v`` starts as ``grad L_q(theta_K)``; the Hessians are those of the support loss along
    ``trajectory`` (``[theta_0, ..., theta_K]``), applied from the last step back, and
    ``H v ~ (grad(theta + r v) - grad(theta - r v)) / 2r`` with ``r = fd_epsilon / ||v||``
    per task, so the perturbation has norm ``fd_epsilon`` (DARTS, Liu et al. 2019).
    ``adapted`` (None: all): ``P`` keeps those coordinates, so only they are perturbed (and
    the norm is theirs) while the difference of gradients is taken over every parameter.
    ``grad_fn`` returns the gradients of every parameter.

    ``gates[k]``: the ReLU masks and max-pool choices of the support forward at
    ``theta_k`` (:func:`mamlscope.models.record_gates`). Both perturbed gradients then run
    with them held (:func:`mamlscope.models.hold_gates`): no kink is crossed, the
    piecewise-linear part is exactly linear, and the error is the smooth ``O(r^2)`` part
    (BatchNorm, softmax), so ``fd_epsilon`` can be large enough for float32 rounding. The
    limit ``r -> 0`` is the Hessian-vector product autograd differentiates (ReLU'' = 0),
    wherever no unit sits exactly on its kink. Without ``gates`` a perturbation that moves a
    unit across its kink adds an error of order ``1/r`` times the gradient jump
    (docs/benchmarks.md). Fused ops (``addcmul``, in-place differences): on CPU the
    per-task parameter copies are memory-bound.
    """
    for k in reversed(range(len(trajectory) - 1)):
        theta, held = trajectory[k], None if gates is None else gates[k]
        u = v if adapted is None else {n: v[n] for n in theta if n in adapted}  # P v
        if not u:  # nothing adapts: the step is the identity, and so is its Jacobian
            continue
        norm = _norm(u, task_dim)  # [] or [T]
        r = fd_epsilon / norm.clamp_min(torch.finfo(norm.dtype).tiny)  # [] or [T]
        with hold_gates(held):
            plus = grad_fn(_moved(theta, u, r))
        with hold_gates(held):
            minus = grad_fn(_moved(theta, u, -r))
        scale = -inner_lr / (2 * r)  # [] or [T]
        diff = {n: plus[n].sub_(minus[n]) for n in theta}  # grad_fn's fresh outputs, no graph
        v = {n: torch.addcmul(v[n], diff[n], _per_task(scale, v[n])) for n in theta}
    return v


def task_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over tasks of each task's mean cross-entropy; logits ``[(T,) B, classes]``.

    Summing (not averaging) over tasks makes the gradient w.r.t. task-batched parameters
    ``[T, ...]`` equal, row by row, to each task's own gradient.
    """
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
    return ce / y.shape[-1]
