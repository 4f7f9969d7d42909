"""What every strategy shares: its two functions' shape, outputs and query normalisation.

Each strategy (:data:`mamlscope.maml.strategies.STRATEGY_TABLE`) is a :class:`Strategy`:

* ``meta(model, support_x, support_y, query_x, query_y, *, inner, gradient)`` ->
  :class:`MetaOutput`, means over tasks (``inner``: :class:`~mamlscope.maml.settings.InnerLoop`,
  ``gradient``: :class:`~mamlscope.maml.settings.Gradient`);
* ``predict(model, support_x, support_y, query_x, *, inner, batchnorm)`` -> adapted query
  logits ``[T, N*Q, classes]``, no graph kept.

Episode tensors are always named ``support_x`` ``[T, N*K, C, H, W]``, ``support_y``
``[T, N*K]``, ``query_x`` ``[T, N*Q, C, H, W]``, ``query_y`` ``[T, N*Q]`` (one task: the
same without ``T``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from mamlscope.maml.inner_loop import Params
from mamlscope.maml.torch_norms import torch_norms_from_first
from mamlscope.models import statistics_from_first

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
    whose BatchNorm statistics come from the support rows only (mamlscope's BatchNorm and
    torch's alike), so each query is normalised independently of every other query.
    """
    if batchnorm == "transductive":
        return forward(params, query_x)
    n_support = support_x.shape[-4]
    with statistics_from_first(n_support), torch_norms_from_first():
        logits = forward(params, torch.cat([support_x, query_x], dim=-4))  # [(T,) N*K+N*Q, C]
    return logits[..., n_support:, :]


def detached_state(model: nn.Module) -> tuple[Params, Params]:
    """The model's parameters and buffers by name, detached (the model is never changed)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    return params, buffers
