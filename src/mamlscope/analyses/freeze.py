"""Layer freezing (Raghu et al. 2020): accuracy when the inner loop adapts only the layers
from some depth on, the rest frozen at the meta-learned weights.

If accuracy barely drops when everything below the head is frozen, the model reuses its
features; if it collapses, it learns rapidly in its body. Each setting is the one inner
loop (:func:`mamlscope.evaluate.evaluate_maml`, the evaluation's own computation) told a
set of parameter names, so "from the first layer" is the full adaptation, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from torch import nn

from mamlscope.evaluate import evaluate_maml
from mamlscope.finetune import Batch
from mamlscope.maml import parameters_from, select_parameters


def freeze_settings(model: nn.Module) -> list[tuple[str, frozenset[str]]]:
    """``("from <k>", names)`` for every direct child ``k`` that owns parameters, in
    ``named_children`` order (``k`` and every child after it adapt), then ``("body",
    names)``: every parameter but the head's."""
    settings = [
        (f"from {name}", parameters_from(model, name))
        for name, child in model.named_children()
        if next(child.parameters(), None) is not None
    ]
    return [*settings, ("body", select_parameters(model, "body"))]


def adaptation_accuracy(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str,
    adapted: frozenset[str] | None,
) -> np.ndarray:
    """Per-episode query accuracy after ``inner_steps`` inner-loop steps on ``adapted``
    (None: every parameter), queries normalised as ``batchnorm`` says: the evaluation's
    computation, so a setting equal to the method's own is its evaluation exactly."""
    return evaluate_maml(
        model,
        batches,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        batchnorm=batchnorm,
        adapted=adapted,
    )
