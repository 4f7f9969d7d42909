"""Torch's own BatchNorm layers under MAML's BatchNorm policy (:mod:`mamlscope.models`).

MAML normalises with batch statistics in every forward and never reads or writes running
statistics. mamlscope's :class:`~mamlscope.models.BatchNorm` follows that policy inside
:func:`~mamlscope.models.batch_statistics`; torch's ``nn.BatchNorm1d/2d/3d`` follow it on
their own only when they track no running statistics (a tracking layer would update its
buffers in every inner step, or read them in eval mode). So:

* :func:`running_statistics_problem`: a tracking torch BatchNorm is refused, naming the
  layer, by every MAML entry point;
* :func:`torch_norms_from_first`: inside :func:`~mamlscope.models.statistics_from_first`
  (evaluation's ``batchnorm="support"``) torch's layers take their statistics from the
  first rows as mamlscope's do, through a module forward hook for the block only; without
  it they would silently stay transductive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_hook

from mamlscope.models import batch_norm, reference_rows


def running_statistics_problem(model: nn.Module) -> str | None:
    """Why ``model``'s torch BatchNorm layers break MAML's policy, or None."""
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            return (
                f"layer {name!r} ({type(m).__name__}) tracks running statistics, which MAML "
                "neither uses nor updates (every forward normalises with batch statistics); "
                "build it with track_running_stats=False"
            )
    return None


def _from_first(module: nn.Module, args: tuple[object, ...], output: object) -> object:
    """A torch BatchNorm's output with statistics of the first ``reference_rows()`` rows."""
    rows = reference_rows()
    if rows is None or not isinstance(module, _BatchNorm) or not args:
        return None
    x = args[0]
    assert isinstance(x, torch.Tensor)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)  # per channel, broadcast over [B, C, ...]
    one = x.new_ones(())
    weight = one if module.weight is None else module.weight.view(shape)
    bias = one * 0 if module.bias is None else module.bias.view(shape)
    dims = (0, *range(2, x.dim()))
    return batch_norm(x, weight, bias, dims, module.eps, x[:rows])


@contextlib.contextmanager
def torch_norms_from_first() -> Iterator[None]:
    """Inside ``statistics_from_first(rows)`` and this block, torch's BatchNorm layers
    normalise with the first ``rows`` rows' statistics, as mamlscope's BatchNorm does."""
    handle = register_module_forward_hook(_from_first)  # type: ignore[arg-type]
    try:
        yield
    finally:
        handle.remove()
