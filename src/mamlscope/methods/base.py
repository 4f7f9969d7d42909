"""What a method is: one frozen declaration that every consumer reads instead of its name.

Training, evaluation, the config check, the CLI, the feature studies and the report ask a
:class:`Method` how it trains, what its inner loop adapts, which config keys it reads and
how its results are shown, so that a new method is one module defining ``METHOD =
Method(...)`` (:mod:`mamlscope.methods`) and no other module compares method names.

Config keys are dotted (``"maml.inner_lr"``); a key without a dot is a whole section
(``"model"``). The sections themselves (``baseline``: standard training and fine-tuning,
``maml``: meta-training and the inner loop) are config keys, not methods: a method says
which of them it reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mamlscope.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

TRAININGS = ("standard", "meta")
# The meta-gradient orders of mamlscope.maml.ORDERS, spelled here so that reading the table
# needs no torch import (the config check and `mamlscope --help` read it).
ORDERS = ("second", "first", "finite-difference")
ADAPTS = ("all", "head", "body")
# "finetune": a fresh N-way head fitted per episode on frozen features (`baseline.finetune_*`);
# "inner-loop": the method's own inner loop on each support set (`maml.inner_lr`, ...).
EVALUATIONS = ("finetune", "inner-loop")
# A method name is a folder name and a Snakemake wildcard value.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

EPISODE_SHAPE_KEYS = ("episodes.way", "episodes.shot", "episodes.query")
# Standard training: the network and the `baseline` section's optimiser keys (not
# `finetune_*`, which only evaluation reads).
STANDARD_TRAIN_KEYS = (
    "model",
    "baseline.lr",
    "baseline.betas",
    "baseline.weight_decay",
    "baseline.batch_size",
    "baseline.epochs",
)
# Meta-training. Validation on the fixed meta-val episodes during training adapts as
# evaluation does (`test_inner_steps`, `eval_batch`): its accuracies are part of the
# training job's metrics, so these two keys rerun meta-training too.
META_TRAIN_KEYS = (
    "model",
    "maml.meta_batch",
    "maml.inner_lr",
    "maml.inner_steps",
    "maml.meta_lr",
    "maml.meta_steps",
    "maml.strategy",
    "maml.max_tasks_in_flight",
    "maml.val_every",
    "maml.snapshots",
    "maml.test_inner_steps",
    "maml.eval_batch",
    *EPISODE_SHAPE_KEYS,
)
# `maml.eval_batch` also batches fine-tuned episodes: it changes no number (the fresh heads
# are seeded per episode) but the job batches by it.
FINETUNE_EVAL_KEYS = (
    *EPISODE_SHAPE_KEYS,
    "baseline.finetune_steps",
    "baseline.finetune_lr",
    "baseline.finetune_all",
    "maml.eval_batch",
)
# The inner loop adapts with the `vmap` strategy whatever `maml.strategy` says (the fastest
# for its many steps, docs/benchmarks.md), so `strategy` is a training key only.
INNER_LOOP_EVAL_KEYS = (
    *EPISODE_SHAPE_KEYS,
    "maml.inner_lr",
    "maml.test_inner_steps",
    "maml.eval_batch",
    "maml.eval_batchnorm",
)
# Keys a checkpoint saved before they existed may lack, with the value they implied then.
LEGACY_DEFAULTS: Mapping[str, object] = {"maml.eval_batchnorm": "transductive"}

# What each kind of training and evaluation reads at least, by the name of its key set.
_REQUIRED = {
    "standard": ("STANDARD_TRAIN_KEYS", STANDARD_TRAIN_KEYS),
    "meta": ("META_TRAIN_KEYS", META_TRAIN_KEYS),
    "finetune": ("FINETUNE_EVAL_KEYS", FINETUNE_EVAL_KEYS),
    "inner-loop": ("INNER_LOOP_EVAL_KEYS", INNER_LOOP_EVAL_KEYS),
}
_SECTION = {"standard": "baseline", "meta": "maml"}
# How each kind of training is evaluated: a network with running statistics by a fresh
# head on its frozen features; a meta-learned one (batch statistics) by its inner loop.
_EVALUATED_BY = {"standard": "finetune", "meta": "inner-loop"}


@dataclass(frozen=True)
class Method:
    """One method: how it trains, adapts and is evaluated, and how its results are shown.

    The defaults describe second-order MAML adapting every parameter (Finn et al. 2017); a
    meta-learning variant changes only what differs (``order``, ``adapts``, ...).

    ``training``: ``"standard"`` (supervised training on the meta-train pool, the
    ``baseline`` section) or ``"meta"`` (meta-training, the ``maml`` section).
    ``order``: a meta method's meta-gradient (:data:`ORDERS`); None for standard training.
    ``adapts``: what adaptation to an episode changes (:data:`ADAPTS`): its inner loop's
    parameters, or ``"head"`` for a fresh head fitted on frozen features.
    ``evaluation``: :data:`EVALUATIONS` (``"finetune"`` for standard training,
    ``"inner-loop"`` for meta-training). ``train_keys``/``evaluate_keys``: the dotted config
    keys training and evaluation read (what `config.train_section`/`evaluate_section`
    cut out, so an edit reruns only the jobs that read it). ``batchnorm``: the BatchNorm
    mode its results report when the method fixes it (``"running"``: standard training's
    running statistics); None: batch statistics as ``maml.eval_batchnorm`` says.
    ``plain_accuracy``: it reports plain test accuracy on its own training classes.
    ``cka_reference``: CKA compares every other model's layers against this one's.
    ``label``/``position``: its display name and place in tables and figures.
    """

    name: str
    label: str
    position: int
    description: str
    training: str = "meta"
    order: str | None = "second"
    adapts: str = "all"
    evaluation: str = "inner-loop"
    train_keys: tuple[str, ...] = META_TRAIN_KEYS
    evaluate_keys: tuple[str, ...] = INNER_LOOP_EVAL_KEYS
    batchnorm: str | None = None
    plain_accuracy: bool = False
    cka_reference: bool = False

    def __post_init__(self) -> None:
        where = f"method {self.name!r}"
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ConfigError(
                f"method name {self.name!r}: use letters, digits, '_' and '-' (a folder "
                "name), starting with a letter or digit"
            )
        for field, value, allowed in (
            ("training", self.training, TRAININGS),
            ("adapts", self.adapts, ADAPTS),
            ("evaluation", self.evaluation, EVALUATIONS),
        ):
            if value not in allowed:
                raise ConfigError(f"{where}: {field} {value!r} is not one of {list(allowed)}")
        if self.is_meta and self.order not in ORDERS:
            raise ConfigError(f"{where}: order {self.order!r} is not one of {list(ORDERS)}")
        if not self.is_meta and self.order is not None:
            raise ConfigError(f"{where}: standard training has no meta-gradient; set order=None")
        wanted_evaluation = _EVALUATED_BY[self.training]
        if self.evaluation != wanted_evaluation:
            raise ConfigError(
                f"{where}: {self.training} training is evaluated by {wanted_evaluation!r}; "
                f"set evaluation={wanted_evaluation!r}"
            )
        if self.evaluation == "finetune" and self.adapts != "head":
            raise ConfigError(f"{where}: evaluation 'finetune' fits a head only; set adapts='head'")
        wanted = "running" if self.training == "standard" else None
        if self.batchnorm != wanted:
            raise ConfigError(
                f"{where}: {self.training} training reports BatchNorm {wanted!r}; "
                f"set batchnorm={wanted!r}"
            )
        self._check_keys("train_keys", self.train_keys, self.training)
        self._check_keys("evaluate_keys", self.evaluate_keys, self.evaluation)
        if self.order == "finite-difference" and "maml.fd_epsilon" not in self.train_keys:
            raise ConfigError(
                f"{where}: order 'finite-difference' reads maml.fd_epsilon; add it to train_keys"
            )

    def _check_keys(self, field: str, keys: tuple[str, ...], kind: str) -> None:
        name, required = _REQUIRED[kind]
        missing = [k for k in required if k not in keys]
        if missing:
            raise ConfigError(
                f"method {self.name!r}: {field} lacks {missing}, which its {self.training} "
                f"training and {self.evaluation} evaluation read; start {field} from "
                f"mamlscope.methods.base.{name}"
            )

    @property
    def is_meta(self) -> bool:
        """Meta-trained: its network keeps no running statistics, so every forward (in
        adaptation, evaluation and the feature studies) uses batch statistics."""
        return self.training == "meta"

    @property
    def section(self) -> str:
        """The config section its training hyperparameters come from."""
        return _SECTION[self.training]

    @property
    def step_unit(self) -> str:
        """What one training step is, for axis labels."""
        return "meta-step" if self.is_meta else "step (batch)"

    @property
    def adapts_body(self) -> bool:
        """Whether adaptation can change the body (else a frozen body is no evidence of
        feature reuse: it stays put by design)."""
        return self.evaluation == "inner-loop" and self.adapts != "head"

    def adapted(self, model: nn.Module) -> frozenset[str] | None:
        """The parameter names its inner loop adapts in ``model``; None for all of them
        (the inner loop's default, so methods adapting everything run unchanged)."""
        if self.adapts == "all":
            return None
        from mamlscope.maml import select_parameters  # torch only where a model is

        return select_parameters(model, self.adapts)
