"""How meta-training runs one meta-step and its Adam update: eagerly with
:func:`mamlscope.maml.meta_step`, or as :class:`mamlscope.maml.graph.GraphedMetaStep`
(one CUDA graph where it can be captured)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mamlscope.maml import meta_step
from mamlscope.maml.graph import GraphedMetaStep, StepPlan

log = logging.getLogger("mamlscope")

Runner = Callable[..., tuple[Any, Any]]


def meta_step_runner(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    plan: StepPlan,
    *,
    strategy: str,
    max_tasks_in_flight: int | None,
    adapted: frozenset[str] | None,
    **kw: Any,
) -> tuple[Runner, Callable[[], str]]:
    """``(run_step, mode)`` for the step ``plan`` (:func:`mamlscope.maml.graph.
    plan_training_step`) says: ``run_step(*task_batch)`` takes one meta-step and updates the
    model, returning the step's query loss and accuracy (device tensors on the graphed
    path, read only when training logs them); ``mode()`` says how it runs. ``adapted``:
    what the inner loop adapts (None: every parameter); ``kw``: the inner loop's and the
    order's other arguments of :func:`meta_step`."""
    if plan.graphed:
        # Captures where it can (plan.capture); otherwise the same step eagerly, and why.
        graphed = GraphedMetaStep(
            model, optimizer, max_tasks_in_flight=max_tasks_in_flight, adapted=adapted, **kw
        )
        if plan.reason is not None:
            log.warning("strategy 'graph': the meta-step runs eagerly: %s", plan.reason)
        return graphed, graphed.describe
    params = dict(model.named_parameters())

    def run_step(*batch: torch.Tensor) -> tuple[float, float]:
        result = meta_step(
            model,
            *batch,
            strategy=strategy,
            max_tasks_in_flight=max_tasks_in_flight,
            adapted=adapted,
            **kw,
        )
        for name, grad in result.grads.items():
            params[name].grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result.query_loss, result.query_accuracy

    def mode() -> str:
        return f"eager ({plan.reason})"

    return run_step, mode
