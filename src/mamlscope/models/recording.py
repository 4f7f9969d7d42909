"""Reading layers out of any network's forward: forward hooks, removed whatever happens.

Hooks, not a walk over the children, so that any registered network (a residual network
as well as an ``nn.Sequential``) can be studied, and adapted weights swapped in by
``torch.func.functional_call`` are seen too (the hooks sit on the modules, whose
parameters ``functional_call`` replaces). The forward stops as soon as every requested
layer has run, so reading an early layer does not pay for the rest of the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


class _Recorded(BaseException):  # not Exception: a forward catching those must not eat it
    """Raised by a hook once everything asked for is recorded: ends the forward early."""


def layer_outputs(
    model: nn.Module,
    names: Sequence[str],
    forward: Callable[[], Any],
    *,
    stop: bool = True,
) -> dict[str, torch.Tensor]:
    """Run ``forward()`` and return the output of each submodule in ``names`` (in that order).

    A module that runs more than once keeps its first output. With ``stop`` the forward
    ends once every layer has run. A layer that never ran is a ``RuntimeError``.
    """
    wanted = list(dict.fromkeys(names))
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            captured.setdefault(name, output)
            if stop and len(captured) == len(wanted):
                raise _Recorded

        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in wanted]
    try:
        forward()
    except _Recorded:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in wanted if name not in captured]
    if missing:
        raise RuntimeError(f"layer(s) {missing} of {type(model).__name__} did not run")
    return {name: captured[name] for name in wanted}


def head_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``model.head`` for ``x``: the penultimate features (the forward stops
    there). Every network built by :func:`mamlscope.models.build_model` has a ``head``."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"{type(model).__name__} has no 'head' layer to read the features of")
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])
        raise _Recorded

    handle = head.register_forward_pre_hook(record)
    try:
        model(x)
    except _Recorded:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the forward of {type(model).__name__} did not reach its 'head'")
    return captured[0]


def layer_widths(model: nn.Module, in_shape: tuple[int, int, int]) -> dict[str, int | None]:
    """Units of each recorded layer's output (features, or a conv layer's channels, as the
    feature studies store them), from a forward of two blank images ``in_shape``; ``None``
    for an output that is not ``[N, F, ...]``. The model is left in eval mode."""
    from mamlscope.models.batchnorm import batch_statistics
    from mamlscope.models.registry import layer_names

    model.eval()
    with torch.no_grad(), batch_statistics():
        outputs = layer_outputs(model, layer_names(model), lambda: model(torch.zeros(2, *in_shape)))
    return {name: int(v.shape[1]) if v.dim() >= 2 else None for name, v in outputs.items()}
