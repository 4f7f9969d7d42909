"""The two settings every MAML computation takes, checked once where they are made.

* :class:`InnerLoop`: how each task adapts (Finn et al. 2017, Algorithm 1, lines 6-7): the
  step size, the number of steps and which parameters the steps move;
* :class:`Gradient`: how the meta-gradient goes back through that loop (line 8): the order
  and, for finite differences, the perturbation and whether gates are held.

The public functions (:func:`mamlscope.maml.meta_step` and friends) take plain keywords and
build these; the strategies and the inner loop take the objects, so a new setting is one
field here instead of one more keyword threaded through every function.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from mamlscope.errors import ConfigError

ORDERS = ("second", "first", "finite-difference")
# Norm of maml-fd's perturbation: with gates held, float32 resolves it and the smooth
# O(r^2) error stays small (measured in docs/benchmarks.md, "maml-fd fidelity and cost").
FD_EPSILON = 1e-3
# Norm of the perturbation when gates cannot be held (mamlscope.maml.fd_fallback): the
# differences then run in float64, where a perturbation this small is resolved (rounding
# ~1e-16/1e-6) and rarely moves a unit across a kink.
FD_EPSILON_UNHELD = 1e-6


def _finite(value: object) -> bool:
    """A real finite number (not a bool): int, float, numpy scalar or 0-dim tensor."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _names(adapted: Collection[str] | None) -> frozenset[str] | None:
    """``adapted`` as a frozenset of names; a bare string is refused (it would be letters)."""
    if adapted is None:
        return None
    if isinstance(adapted, str) or not all(isinstance(n, str) for n in adapted):
        raise ConfigError(
            f"adapted must be a collection of parameter names, got {adapted!r}; "
            "wrap a single name in a set: adapted={'head.weight'}"
        )
    return frozenset(adapted)


@dataclass(frozen=True)
class InnerLoop:
    """``steps`` SGD steps of size ``lr`` on the support loss, moving only ``adapted``.

    ``adapted``: names as in ``model.named_parameters()`` (None: all). The others stay
    fixed through the inner loop but still get a meta-gradient (ANIL, BOIL, freezing).
    """

    lr: float
    steps: int
    adapted: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError(f"inner_steps must be an integer >= 0, got {self.steps!r}")
        if not _finite(self.lr) or self.lr < 0:
            raise ConfigError(f"inner_lr must be a finite number >= 0, got {self.lr!r}")
        object.__setattr__(self, "adapted", _names(self.adapted))

    def moves(self, name: str) -> bool:
        """Whether the inner loop updates parameter ``name``."""
        return self.adapted is None or name in self.adapted


@dataclass(frozen=True)
class Gradient:
    """How the meta-gradient is taken: ``order`` (:data:`ORDERS`), for finite differences
    the perturbation norm ``fd_epsilon`` and ``held`` (hold the ReLU/max-pool gates of the
    unperturbed point; False: plain central differences, the float64 fallback)."""

    order: str
    fd_epsilon: float = FD_EPSILON
    held: bool = True

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {list(ORDERS)}, got {self.order!r}")
        if not _finite(self.fd_epsilon) or self.fd_epsilon <= 0:
            raise ConfigError(f"fd_epsilon must be a finite number > 0, got {self.fd_epsilon!r}")
