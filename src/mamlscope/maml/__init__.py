"""MAML meta-gradients (Finn, Abbeel & Levine 2017, Algorithm 1), vectorised over tasks.

For each task the inner loop takes ``K = inner_steps`` SGD steps on the support loss
(Algorithm 1, lines 6-7), and the meta-gradient is the gradient of the mean over tasks of
the query loss at ``theta_K`` with respect to ``theta_0`` (line 8), exact (``"second"``),
first-order (``"first"``) or with finite-difference Hessian-vector products
(``"finite-difference"``).

* :mod:`~mamlscope.maml.api`: :func:`meta_step`, :func:`meta_gradients`,
  :func:`adapt_and_predict`, the ``"auto"`` strategy choice;
* :mod:`~mamlscope.maml.settings`: :class:`InnerLoop` and :class:`Gradient`, the settings
  every strategy takes;
* :mod:`~mamlscope.maml.parameters`: which parameters the inner loop adapts
  (:func:`select_parameters`, :func:`parameters_from`; ANIL, BOIL, layer freezing);
* :mod:`~mamlscope.maml.strategies`: ``vmap`` (:mod:`~mamlscope.maml.strategy_vmap`),
  ``batched`` and ``loop`` (:mod:`~mamlscope.maml.strategy_autograd`), each a ``meta`` and
  a ``predict`` function of the same shape (:mod:`~mamlscope.maml.strategy_parts`);
* :mod:`~mamlscope.maml.inner_loop`: the inner SGD trajectory and the finite-difference
  recursion every strategy shares;
* :mod:`~mamlscope.maml.batched_forward`: the explicitly task-batched forward pass;
* :mod:`~mamlscope.maml.fd_fallback`: maml-fd where a kink cannot be held (float64, un-held);
* :mod:`~mamlscope.maml.torch_norms`: torch's own BatchNorm layers under MAML's policy;
* :mod:`~mamlscope.maml.graph`: the training step captured as a CUDA graph.

Models: any ``nn.Module`` whose forward ``torch.func.functional_call`` can run, in every
order; ``"auto"`` runs an ``nn.Sequential`` of known layers task-batched, anything else
with ``vmap``.

BatchNorm: every forward here uses batch statistics during adaptation and evaluation
(Finn et al.'s protocol) and never reads or writes running statistics; at evaluation the
queries can instead be normalised with the support set's statistics (``batchnorm=
"support"``). Measured speeds and the choice of ``fd_epsilon`` are in docs/benchmarks.md.
"""

from mamlscope.maml.api import (
    AUTO,
    AUTO_CHUNK,
    BATCHNORM_MODES,
    FD_EPSILON,
    ORDERS,
    STRATEGIES,
    MetaStepResult,
    adapt_and_predict,
    meta_gradients,
    meta_step,
    resolve_strategy,
)
from mamlscope.maml.inner_loop import fd_meta_gradient, inner_loop
from mamlscope.maml.parameters import parameters_from, select_parameters
from mamlscope.maml.settings import Gradient, InnerLoop
from mamlscope.maml.strategies import STRATEGY_TABLE, adapt

__all__ = [
    "AUTO",
    "AUTO_CHUNK",
    "BATCHNORM_MODES",
    "FD_EPSILON",
    "ORDERS",
    "STRATEGIES",
    "STRATEGY_TABLE",
    "Gradient",
    "InnerLoop",
    "MetaStepResult",
    "adapt",
    "adapt_and_predict",
    "fd_meta_gradient",
    "inner_loop",
    "meta_gradients",
    "meta_step",
    "parameters_from",
    "resolve_strategy",
    "select_parameters",
]
