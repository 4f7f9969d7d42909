"""MAML meta-gradients (Finn, Abbeel & Levine 2017, Algorithm 1), vectorised over tasks.

For each task ``i`` the inner loop takes ``K = inner_steps`` SGD steps on the support loss,
``theta_{k+1} = theta_k - alpha * grad L_s(theta_k)`` (Algorithm 1, lines 6-7; :func:`adapt`),
and the meta-gradient is the gradient of the mean over tasks of the query loss at
``theta_K`` with respect to ``theta_0`` (line 8). Three ``order`` s:

* ``"second"``: exact, differentiating through the inner loop;
* ``"first"``: first-order MAML, ``grad L_q(theta_K)`` (the inner gradients are constants);
* ``"finite-difference"``: the exact recursion ``v <- (I - alpha H_s(theta_k)) v`` for
  ``k = K-1 .. 0`` from ``v = grad L_q(theta_K)``, with each Hessian-vector product by central
  differences ``H v ~ (grad L_s(theta + r v) - grad L_s(theta - r v)) / 2r``. ``r`` is
  ``fd_epsilon / ||v||`` per task and per step, so the perturbation ``r v`` always has norm
  ``fd_epsilon`` whatever the scale of ``v`` (the same scaling as DARTS, Liu et al. 2019).
  Costs two gradients per step and no second-order graph. With ReLU the loss is only
  piecewise smooth: a perturbation that moves any unit across its kink adds an error of
  order ``1/r`` (measured while training ``fc`` on mnist5k: in float32 at ``fd_epsilon``
  1e-5, 8 of 60 meta-steps were off by 17x to 1,300x the exact meta-gradient; in float64 at
  1e-5, 2 of 40; at 1e-7, none of 40, the rest exact to 1e-9). So this order runs on a
  float64 copy of the model and inputs, with ``fd_epsilon`` 1e-8 by default, and returns
  gradients in the model's dtype.

Four ``strategy`` s compute the same numbers (the tests check them against one another):

* ``"vmap"``: one pure per-task function of ``torch.func`` (``functional_call``, ``grad``)
  mapped over tasks with ``vmap``;
* ``"batched"``: parameters expanded to ``[T, ...]`` and an explicitly task-batched forward
  (:mod:`mamlscope.batched_forward`), differentiated with ``torch.autograd.grad``;
* ``"loop"``: a Python loop over tasks with ``torch.autograd.grad`` (reference and fallback);
* ``"auto"``: the fastest measured for the device type and model kind (:data:`AUTO`).
  On CPU, conv nets run ``"batched"`` in chunks of 4 tasks (:data:`AUTO_CHUNK`): all 32
  tasks at once stream every task's activations (120 MB per conv1 output here) through
  memory for each elementwise op, one task at a time pays Python and small-kernel
  overhead, and 4 measured fastest; small dense nets run ``"batched"`` on all tasks. On
  CUDA ``"batched"``.

Milliseconds per meta-step, 28x28 inputs, 5-way 1-shot 15 queries, meta-batch 32, 1 inner
step, float32, minimum of 5-10 interleaved runs (order: second / first / finite-difference)::

    conv4 (64 filters)   CPU here, 2 cores     GPU host's CPU, 2      H200 GPU
                         torch 2.14.1          torch 2.11             torch 2.11
      vmap               1739 / 1703 / 2103    1624 / 1672 / 1890     26 / 16 / 30
      batched            1401 / 1287 / 1440    1163 / 1482 / 1476     21 / 12 / 20
      loop                861 /  652 / 1102    1001 /  966 / 1241    407 / 245 / 516
    fc (256-128-64-64)
      vmap                 90 /   54 /  124     154 /   81 /  184     22 / 12 / 25
      batched              72 /   60 /  150     140 /   84 /  214     12 /  6 / 14
      loop                240 /  148 /  224     338 /  196 /  392    400 / 206 / 465

"CPU here" is the 2-core machine this was written on (measured while otherwise idle; when
other jobs shared it, times rose 2-10x, the loop's most); "GPU host's CPU" is the H200
machine's CPU restricted to 2 cores (``taskset``, ``OMP_NUM_THREADS=2``).

``fd_epsilon``: central differences are ``O(r^2)``-accurate only where the loss is smooth.
With ReLU, a perturbation that pushes a unit across its kink adds an error of order
``1/r``, so the error does not shrink with ``fd_epsilon`` until the perturbation is too
small to cross any kink. Measured at initialisation (conv4 as above, 8 tasks, float64,
relative error against ``"second"``): ``fd_epsilon`` 1e-1: 2.7, 1e-2: 8.8, 1e-3: 29,
1e-4: 134, 1e-5: 1e-10 (float32 at 1e-5: 0.04); with GELU instead of ReLU the same model
gives 1e-2, 1e-4, 1e-6, 1e-8, 2e-10. ``first`` vs ``second`` differ by 0.86 there.

BatchNorm: every forward here runs inside :func:`mamlscope.models.batch_statistics`, so BN
uses each task's batch statistics during adaptation and evaluation (Finn et al.'s protocol)
and never reads or writes running statistics, even for a model built with them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from mamlscope.batched_forward import unsupported_reason
from mamlscope.errors import ConfigError
from mamlscope.inner_loop import GradFn, Params, fd_meta_gradient, inner_loop
from mamlscope.maml_autograd import batched_meta, batched_predict, loop_meta, loop_predict
from mamlscope.models import functional_forward

ORDERS = ("second", "first", "finite-difference")
STRATEGIES = ("auto", "vmap", "batched", "loop")
# What "auto" runs, by device type and model kind: the fastest measured (module docstring).
AUTO = {
    "cpu": {"conv": "batched", "dense": "batched"},
    "cuda": {"conv": "batched", "dense": "batched"},  # measured on one H200
}
# Tasks per call of the strategy under "auto" (absent: all tasks at once). On 2 CPU cores
# conv4 5-way 1-shot, 32 tasks, ms per meta-step (second / first order): loop 1156 / 943,
# batched in chunks of 3: 1000 / 924, of 4: 838 / 797, of 6: 1070 / 870, all 32: ~1400.
AUTO_CHUNK = {"cpu": {"conv": 4}}


@dataclass(frozen=True)
class MetaStepResult:
    """Meta-gradients by parameter name; mean query loss and accuracy after adaptation."""

    grads: dict[str, torch.Tensor]
    query_loss: float
    query_accuracy: float
    strategy: str  # the strategy that ran ("auto" resolved)


# ---------------------------------------------------------------- the torch.func path


def _loss(
    params: Params, model: nn.Module, buffers: Params, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(functional_forward(model, params, buffers, x), y)


def _support_grad_fn(model: nn.Module, buffers: Params, x: torch.Tensor, y: torch.Tensor) -> GradFn:
    return lambda p: grad(_loss)(p, model, buffers, x, y)


def adapt(
    model: nn.Module,
    params: Params,
    buffers: Params,
    x_s: torch.Tensor,
    y_s: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
) -> Params:
    """One task's adapted parameters ``theta_K`` (Finn et al. 2017, Alg. 1, lines 6-7).

    Pure, so safe under ``vmap`` and ``grad``; ``x_s`` is ``[N*K, C, H, W]``. Differentiating
    the result w.r.t. ``params`` with an outer ``torch.func.grad`` gives second-order MAML;
    using it outside any outer differentiation gives first-order MAML. Training
    (``strategy="vmap"``) and evaluation (:func:`adapt_and_predict`) both call this.
    """
    grad_fn = _support_grad_fn(model, buffers, x_s, y_s)
    return inner_loop(grad_fn, params, inner_lr=inner_lr, inner_steps=inner_steps)[-1]


def _vmap_meta(
    model: nn.Module,
    sx: torch.Tensor,
    sy: torch.Tensor,
    qx: torch.Tensor,
    qy: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    order: str,
    fd_epsilon: float,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    kw = {"inner_lr": inner_lr, "inner_steps": inner_steps}

    def query(p: Params, xq: torch.Tensor, yq: torch.Tensor):
        logits = functional_forward(model, p, buffers, xq)  # [N*Q, classes]
        return F.cross_entropy(logits, yq), logits.detach()

    def task(xs, ys, xq, yq):  # one task: [N*K, C, H, W], [N*K], [N*Q, C, H, W], [N*Q]
        if order == "second":
            g, logits = grad(
                lambda p: query(adapt(model, p, buffers, xs, ys, **kw), xq, yq), has_aux=True
            )(params)
        else:  # no outer transform over the inner loop: its steps are constants
            grad_fn = _support_grad_fn(model, buffers, xs, ys)
            trajectory = inner_loop(grad_fn, params, **kw)
            g, logits = grad(query, has_aux=True)(trajectory[-1], xq, yq)
            if order == "finite-difference":
                g = fd_meta_gradient(
                    grad_fn, trajectory, g, inner_lr=inner_lr, fd_epsilon=fd_epsilon
                )
        accuracy = (logits.argmax(-1) == yq).to(logits.dtype).mean()
        return g, F.cross_entropy(logits, yq), accuracy

    grads, loss, acc = vmap(task)(sx, sy, qx, qy)  # grads [T, ...], loss [T], acc [T]
    return {k: g.mean(0) for k, g in grads.items()}, loss.mean(), acc.mean()


# ---------------------------------------------------------------- public entry points


def _kind(model: nn.Module) -> str:
    return "conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "dense"


def _in_chunks(run: Callable, chunk: int | None, model: nn.Module, sx, sy, qx, qy, **kw):  # type: ignore[no-untyped-def]
    """``run`` over slices of ``chunk`` tasks, combined into the mean over all tasks."""
    tasks = sx.shape[0]
    if chunk is None or chunk >= tasks:
        return run(model, sx, sy, qx, qy, **kw)
    total: Params = {}
    loss = acc = 0.0
    for i in range(0, tasks, chunk):
        j = min(i + chunk, tasks)
        weight = (j - i) / tasks
        g, chunk_loss, chunk_acc = run(model, sx[i:j], sy[i:j], qx[i:j], qy[i:j], **kw)
        total = {k: total.get(k, 0) + weight * v for k, v in g.items()}
        loss, acc = loss + weight * chunk_loss, acc + weight * chunk_acc
    return total, loss, acc


def resolve_strategy(strategy: str, model: nn.Module, device: torch.device) -> str:
    """The strategy that runs: ``"auto"`` becomes :data:`AUTO`'s choice for the device type
    and model kind (``"conv"`` if it has a ``Conv2d``, else ``"dense"``); ``"vmap"`` replaces
    ``"batched"`` for a model the batched forward cannot run. Others pass through."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    reason = unsupported_reason(model)
    if strategy == "batched" and reason is not None:
        raise ConfigError(f"strategy 'batched' cannot run this model: {reason}; use 'vmap'")
    if strategy != "auto":
        return strategy
    choice = AUTO.get(device.type, AUTO["cuda"])[_kind(model)]
    return "vmap" if choice == "batched" and reason is not None else choice


def _check_args(sx, sy, qx, qy, inner_lr, inner_steps, order, fd_epsilon) -> None:
    if order not in ORDERS:
        raise ConfigError(f"order must be one of {list(ORDERS)}, got {order!r}")
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
        raise ConfigError(f"inner_steps must be an integer >= 0, got {inner_steps!r}")
    if not math.isfinite(inner_lr) or inner_lr < 0:
        raise ConfigError(f"inner_lr must be a finite number >= 0, got {inner_lr!r}")
    if not math.isfinite(fd_epsilon) or fd_epsilon <= 0:
        raise ConfigError(f"fd_epsilon must be a finite number > 0, got {fd_epsilon!r}")
    for name, x, y in (("support", sx, sy), ("query", qx, qy)):
        if x.dim() < 3 or y.dim() != 2 or x.shape[:2] != y.shape:
            raise ConfigError(
                f"{name}_x must be [tasks, examples, ...] and {name}_y [tasks, examples]; "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
    if sx.shape[0] != qx.shape[0] or sx.shape[0] < 1:
        raise ConfigError(
            f"support and query need the same tasks >= 1: {sx.shape[0]}, {qx.shape[0]}"
        )


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
    fd_epsilon: float = 1e-8,
    strategy: str = "auto",
) -> MetaStepResult:
    """Meta-gradients of the mean post-adaptation query loss, plus that loss and accuracy.

    ``support_x`` ``[T, N*K, C, H, W]``, ``support_y`` ``[T, N*K]``, ``query_x``
    ``[T, N*Q, C, H, W]``, ``query_y`` ``[T, N*Q]``. ``grads`` has the names and shapes of
    ``model.named_parameters()``; apply them with any optimiser (Finn et al.'s line 10 uses
    Adam). Neither parameters, ``.grad`` nor buffers of ``model`` are changed.
    """
    _check_args(support_x, support_y, query_x, query_y, inner_lr, inner_steps, order, fd_epsilon)
    first = next(model.parameters())
    chosen = resolve_strategy(strategy, model, first.device)
    run = {"vmap": _vmap_meta, "batched": batched_meta, "loop": loop_meta}[chosen]
    dtype = first.dtype
    if order == "finite-difference" and dtype != torch.float64:
        # Central differences need a perturbation too small to move any ReLU across its
        # kink (each crossing adds an error of order 1/r); float32 cannot resolve one that
        # small, so the finite-difference step runs on a float64 copy (module docstring).
        model = copy.deepcopy(model).double()
        support_x, query_x = support_x.double(), query_x.double()
    chunk = None
    if strategy == "auto" and chosen == "batched" and unsupported_reason(model) is None:
        chunk = AUTO_CHUNK.get(first.device.type, {}).get(_kind(model))
    grads, loss, acc = _in_chunks(
        run,
        chunk,
        model,
        support_x,
        support_y,
        query_x,
        query_y,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        order=order,
        fd_epsilon=fd_epsilon,
    )
    grads = {k: g.detach().to(dtype) for k, g in grads.items()}
    return MetaStepResult(grads, float(loss), float(acc), chosen)


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
    fd_epsilon: float = 1e-8,
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
) -> torch.Tensor:
    """Query logits ``[T, N*Q, classes]`` after adapting on each task's support set.

    Evaluation with the same inner loop as training (:func:`adapt` under ``vmap``, or the
    ``"batched"``/``"loop"`` strategies; ``"auto"`` uses the training table), batch
    statistics in BN, no graph returned; the model is not changed. ``"vmap"`` by default,
    the fastest or within 11% here (with few support images and many steps the loop's
    per-task overhead dominates, unlike in training). Measured on the 2-core CPU, 50
    episodes, 5-way 1-shot 15 queries, 10 steps, ms: conv4 vmap 1533, batched 1381,
    loop 1876; fc vmap 269, batched 374, loop 735.
    """
    dummy_y = torch.zeros(query_x.shape[:2], dtype=torch.long, device=query_x.device)
    _check_args(support_x, support_y, query_x, dummy_y, inner_lr, inner_steps, "first", 1.0)
    chosen = resolve_strategy(strategy, model, next(model.parameters()).device)
    kw = {"inner_lr": inner_lr, "inner_steps": inner_steps}
    if chosen == "batched":
        return batched_predict(model, support_x, support_y, query_x, **kw)
    if chosen == "loop":
        return loop_predict(model, support_x, support_y, query_x, **kw)
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def task(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        adapted = adapt(model, params, buffers, xs, ys, **kw)
        return functional_forward(model, adapted, buffers, xq)  # [N*Q, classes]

    with torch.no_grad():  # torch.func.grad inside still computes the inner gradients
        return vmap(task)(support_x, support_y, query_x)  # [T, N*Q, classes]
