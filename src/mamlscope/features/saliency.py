"""Input-gradient saliency (Simonyan et al. 2014) under the model's BatchNorm policy.

With running statistics (the baseline in eval mode) examples are independent, so one
backward pass of the summed class scores gives every example's own gradient. With batch
statistics (MAML) BatchNorm couples the examples of a batch: example ``j``'s score depends
on example ``i``'s pixels through the batch mean and variance. The map of example ``i`` is
then ``d score_i / d x_i`` with the rest of the batch held as context (it includes ``x_i``'s
own effect on the batch statistics, and excludes the other examples' scores), computed as
the diagonal blocks of the batch Jacobian, several rows per backward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from mamlscope.features.activations import bn_policy


def _scores(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = model(x)  # [N, classes]
    return logits.gather(1, target.view(-1, 1)).squeeze(1)  # [N]


def saliency_maps(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_statistics: bool,
    chunk: int = 32,
) -> torch.Tensor:
    """``|d score_target / d input|``, max over channels: ``[N, C, H, W] -> [N, H, W]``.

    ``x`` is a normalised float batch, ``target`` ``[N]`` class indices (the true or the
    predicted class). ``batch_statistics`` follows the project's BatchNorm policy
    (True for MAML models). ``chunk`` bounds the memory of the batched Jacobian rows
    (``chunk * N * C * H * W`` floats) in the batch-statistics case. The model's
    parameters get no ``.grad``.
    """
    if target.shape != x.shape[:1]:
        raise ValueError(f"target must be [N] = [{x.shape[0]}]; got {tuple(target.shape)}")
    x = x.detach().requires_grad_(True)  # [N, C, H, W]
    target = target.to(device=x.device, dtype=torch.long)
    with torch.enable_grad(), bn_policy(model, batch_statistics=batch_statistics):
        scores = _scores(model, x, target)  # [N]
        if not batch_statistics:
            (grad,) = torch.autograd.grad(scores.sum(), x)  # [N, C, H, W]
        else:
            grad = torch.empty_like(x)
            n = len(x)
            for start in range(0, n, chunk):
                rows = torch.arange(start, min(start + chunk, n), device=x.device)
                one_hot = torch.zeros(len(rows), n, device=x.device, dtype=scores.dtype)
                one_hot[torch.arange(len(rows)), rows] = 1.0  # [r, N]: score_i for row i
                (jac,) = torch.autograd.grad(
                    scores, x, grad_outputs=one_hot, is_grads_batched=True, retain_graph=True
                )  # [r, N, C, H, W]
                grad[rows] = jac[torch.arange(len(rows)), rows]  # d score_i / d x_i
    return grad.abs().amax(dim=1).detach()  # [N, H, W]
