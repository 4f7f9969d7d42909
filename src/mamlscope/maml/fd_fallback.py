"""maml-fd on a model whose gates cannot all be held: plain central differences in float64.

Held gates (:mod:`mamlscope.gates`) let finite differences run in the model's dtype with a
perturbation float32 resolves. A kink that cannot be held (``F.relu`` or ``clamp`` in a
custom ``forward``, ``nn.ReLU6``, an adaptive max-pool...) would be crossed by such a
perturbation and add an error of order ``1/r``. For such a model the differences run
instead on a float64 copy of the model and the tasks, with a perturbation small enough
that crossings are rare (:data:`~mamlscope.maml.settings.FD_EPSILON_UNHELD`), and the
meta-gradients are cast back to the model's dtype. One forward on a support set finds
such kinks (:func:`mamlscope.gates.unheld_kink_calls`); the answer is kept per model and
the reason logged once.
"""

from __future__ import annotations

import copy
import logging
import weakref

import torch
from torch import nn

from mamlscope.gates import unheld_kink_calls
from mamlscope.maml.settings import FD_EPSILON_UNHELD, Gradient
from mamlscope.models import batch_statistics

log = logging.getLogger("mamlscope")

# model -> (its modules when checked, the reason or None): a model is checked once.
_CHECKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], str | None]] = (
    weakref.WeakKeyDictionary()
)


def unheld_reason(model: nn.Module, support_x: torch.Tensor) -> str | None:
    """Why finite differences cannot hold every gate of ``model`` (found by one forward of
    one task's ``support_x`` ``[N*K, C, H, W]``), or None. Logged once per model."""
    modules = tuple(id(m) for m in model.modules())
    known = _CHECKED.get(model)
    if known is not None and known[0] == modules:
        return known[1]
    with torch.no_grad(), batch_statistics():
        calls = unheld_kink_calls(model, lambda: model(support_x))
    reason = "; ".join(calls) if calls else None
    _CHECKED[model] = (modules, reason)
    if reason is not None:
        log.warning(
            "maml-fd cannot hold the gates of this %s (%s): its finite differences run "
            "un-held on a float64 copy (fd_epsilon %g)",
            type(model).__name__,
            reason,
            FD_EPSILON_UNHELD,
        )
    return reason


def unheld_plan(
    model: nn.Module, tensors: tuple[torch.Tensor, ...], gradient: Gradient
) -> tuple[nn.Module, tuple[torch.Tensor, ...], Gradient]:
    """The float64 model, tasks and un-held :class:`Gradient` the fallback runs with (the
    model itself where it is float64 already; labels as they are)."""
    if next(model.parameters()).dtype != torch.float64:
        model = copy.deepcopy(model).to(torch.float64)
        tensors = tuple(t.to(torch.float64) if t.is_floating_point() else t for t in tensors)
    epsilon = min(gradient.fd_epsilon, FD_EPSILON_UNHELD)
    return model, tensors, Gradient(gradient.order, epsilon, held=False)
