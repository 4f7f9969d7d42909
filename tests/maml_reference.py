"""MAML's meta-gradient spelled out per task with torch.autograd (Finn et al. 2017, Alg. 1):
the reference the MAML tests compare every strategy and order with, in float64."""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def reference_meta_gradients(
    model: nn.Module,
    sx: torch.Tensor,
    sy: torch.Tensor,
    qx: torch.Tensor,
    qy: torch.Tensor,
    *,
    inner_lr: float,
    inner_steps: int,
    second: bool,
    adapted: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Mean over tasks of the query-loss gradient after ``inner_steps`` SGD steps on the
    support loss that move only ``adapted`` (None: all). ``second``: differentiated through
    the inner loop (create_graph) w.r.t. the initial parameters; else first order: the
    query-loss gradient at the adapted parameters w.r.t. the adapted parameters."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    moves = [adapted is None or n in adapted for n in names]
    theta = [p.detach().clone().requires_grad_() for _, p in model.named_parameters()]
    total = [torch.zeros_like(p) for p in theta]
    tasks = sx.shape[0]
    for t in range(tasks):
        params = list(theta)
        for _ in range(inner_steps):
            logits = functional_call(
                model, dict(zip(names, params, strict=True)), (sx[t].double(),)
            )
            grads = torch.autograd.grad(F.cross_entropy(logits, sy[t]), params, create_graph=second)
            params = [
                p - inner_lr * (g if second else g.detach()) if m else p
                for p, g, m in zip(params, grads, moves, strict=True)
            ]
        if not second:
            params = [p.detach().requires_grad_() for p in params]
        logits = functional_call(model, dict(zip(names, params, strict=True)), (qx[t].double(),))
        outer = torch.autograd.grad(F.cross_entropy(logits, qy[t]), theta if second else params)
        total = [a + g / tasks for a, g in zip(total, outer, strict=True)]
    return dict(zip(names, total, strict=True))


def rel_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Norm of the difference over all parameters, relative to the norm of ``b``."""
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in b])
    return float(diff.norm() / torch.cat([v.double().flatten() for v in b.values()]).norm())


def assert_close_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every parameter's gradient within 1e-5 relative (absolute 1e-9 for near-zero ones)."""
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k].double(), want[k], rtol=1e-5, atol=1e-9, msg=k)
