"""Three ways to run MAML's per-task computation over a batch of tasks, one shape for all.

Each entry of :data:`STRATEGY_TABLE` is a :class:`~mamlscope.maml.strategy_parts.Strategy`
with the same two functions, ``meta`` and ``predict`` (their shape:
:mod:`mamlscope.maml.strategy_parts`). The strategies differ only in how tasks are batched:

* ``vmap`` (:mod:`~mamlscope.maml.strategy_vmap`): one pure per-task function
  (``torch.func.functional_call`` and ``grad``) mapped over tasks with ``torch.func.vmap``;
  runs any module;
* ``batched`` (:mod:`~mamlscope.maml.strategy_autograd`): parameters expanded to
  ``[T, ...]`` and the task-batched forward of :mod:`mamlscope.maml.batched_forward`,
  differentiated with ``torch.autograd.grad``; an ``nn.Sequential`` of known layers;
* ``loop`` (:mod:`~mamlscope.maml.strategy_autograd`): a Python loop over tasks with
  ``torch.autograd.grad`` (reference and fallback).

All inner loops are :func:`mamlscope.maml.inner_loop.inner_loop`.
"""

from __future__ import annotations

from mamlscope.maml.strategy_autograd import batched_meta, batched_predict, loop_meta, loop_predict
from mamlscope.maml.strategy_parts import MetaOutput, Strategy, query_logits
from mamlscope.maml.strategy_vmap import adapt, adapt_task, vmap_meta, vmap_predict

STRATEGY_TABLE: dict[str, Strategy] = {
    "vmap": Strategy(vmap_meta, vmap_predict),
    "batched": Strategy(batched_meta, batched_predict),
    "loop": Strategy(loop_meta, loop_predict),
}

__all__ = [
    "STRATEGY_TABLE",
    "MetaOutput",
    "Strategy",
    "adapt",
    "adapt_task",
    "batched_meta",
    "batched_predict",
    "loop_meta",
    "loop_predict",
    "query_logits",
    "vmap_meta",
    "vmap_predict",
]
