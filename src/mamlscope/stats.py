"""Paired statistics for comparisons on the fixed test episodes.

Every run of a dataset is tested on the same episodes (one split per dataset, shared by all
training seeds), so two methods or two settings are compared episode by episode: the
difference per (seed, episode) pair, its mean and a Student t interval (a paired t test).
Pairing removes the episode-to-episode difficulty both sides share, which is most of the
spread, so it separates differences that overlapping intervals of the two sides cannot.

Two intervals answer two questions:

- pooled (:func:`paired_difference` over every seed's episodes): do these trained models
  differ on these episodes? It ignores that a new training seed moves a model's accuracy;
- across seeds (:func:`seed_interval` over the per-seed mean differences, n - 1 = seeds - 1
  degrees of freedom): would a new training run differ the same way? Wide with few seeds.

A missing accuracy (NaN) is dropped with its pair and counted (``Interval.dropped``); a
comparison with fewer than two pairs has NaN bounds, never an error and never a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
# The columns that identify one test episode of one run within a dataset and method.
PAIR_KEYS = ("seed", "episode")


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided ``level`` interval ``[low, high]`` over ``n`` values.

    ``dropped``: values left out because one side was missing (NaN). Bounds are NaN when
    ``n < 2``; the mean is NaN when ``n == 0``.
    """

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL
    dropped: int = 0

    @property
    def defined(self) -> bool:
        """Both bounds are numbers (at least two values)."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def above_zero(self) -> bool:
        """The interval lies above 0: significantly positive at its level."""
        return self.defined and self.low > 0

    @property
    def below_zero(self) -> bool:
        """The interval lies below 0: significantly negative at its level."""
        return self.defined and self.high < 0

    @property
    def excludes_zero(self) -> bool:
        return self.above_zero or self.below_zero


def _t_interval(values: np.ndarray, level: float, dropped: int = 0) -> Interval:
    """Mean and Student t interval (n - 1 degrees of freedom) of finite ``values``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    n = int(values.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level, dropped)
    mean = float(values.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, level, dropped)
    sem = float(values.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem
    return Interval(mean, mean - half, mean + half, n, level, dropped)


def _floats(values: Sequence[float] | np.ndarray | pd.Series, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def paired_difference(
    a: Sequence[float] | np.ndarray | pd.Series,
    b: Sequence[float] | np.ndarray | pd.Series,
    level: float = LEVEL,
) -> Interval:
    """Mean of ``a - b`` over pairs and its Student t interval: scipy's
    ``ttest_rel(a, b).confidence_interval(level)`` for complete pairs. A pair with a NaN on
    either side is dropped and counted."""
    x, y = _floats(a, "a"), _floats(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    diff = x - y
    keep = np.isfinite(diff)
    return _t_interval(diff[keep], level, dropped=int((~keep).sum()))


def seed_interval(
    per_seed_means: Sequence[float] | np.ndarray | pd.Series, level: float = LEVEL
) -> Interval:
    """Student t interval over training seeds (one value per seed); NaN seeds dropped."""
    x = _floats(per_seed_means, "per_seed_means")
    keep = np.isfinite(x)
    return _t_interval(x[keep], level, dropped=int((~keep).sum()))


@dataclass(frozen=True)
class Paired:
    """Two slices of the episodes table compared pair by pair.

    ``pooled``: the paired interval over every seed's episodes; ``seeds``: the interval over
    the per-seed mean differences; ``per_seed``: ``{seed: mean difference}``;
    ``within_seed``: ``{seed: the paired interval over that seed's episodes}``.
    """

    pooled: Interval
    seeds: Interval
    per_seed: dict[int, float] = field(default_factory=dict)
    within_seed: dict[int, Interval] = field(default_factory=dict)

    @property
    def consistent(self) -> bool:
        """No two seeds differ in opposite directions, each significantly on its own
        episodes. A sign change inside every seed's own noise is not counted: it is what a
        true difference of zero gives half the time."""
        found = self.within_seed.values()
        return not (any(i.above_zero for i in found) and any(i.below_zero for i in found))

    @property
    def dropped(self) -> int:
        return self.pooled.dropped


def _keyed(frame: pd.DataFrame, name: str) -> pd.Series:
    missing = [c for c in (*PAIR_KEYS, "accuracy") if c not in frame.columns]
    if missing:
        raise ValueError(f"slice {name} lacks the columns {missing}")
    keyed = frame.set_index(list(PAIR_KEYS))["accuracy"].astype(np.float64)
    if keyed.index.has_duplicates:
        dup = keyed.index[keyed.index.duplicated()][0]
        raise ValueError(
            f"slice {name} has more than one row for (seed, episode) = {dup}: select one "
            "dataset, method, analysis, setting and BatchNorm mode before pairing"
        )
    return keyed


def compare(a: pd.DataFrame, b: pd.DataFrame, level: float = LEVEL) -> Paired:
    """``a - b`` paired on (seed, episode): the pooled and the across-seed interval.

    Both slices must hold the same (seed, episode) pairs, one row each (a ValueError names
    what differs): a comparison on different episodes is not a paired one.
    """
    x, y = _keyed(a, "a"), _keyed(b, "b")
    if not x.index.sort_values().equals(y.index.sort_values()):
        only_a, only_b = x.index.difference(y.index), y.index.difference(x.index)
        raise ValueError(
            "the slices do not hold the same (seed, episode) pairs: "
            f"{len(only_a)} only in a (e.g. {list(only_a[:3])}), "
            f"{len(only_b)} only in b (e.g. {list(only_b[:3])})"
        )
    y = y.reindex(x.index)
    pooled = paired_difference(x.to_numpy(), y.to_numpy(), level)
    seeds = x.index.get_level_values("seed")
    within = {
        int(s): paired_difference(x[seeds == s].to_numpy(), y[seeds == s].to_numpy(), level)
        for s in sorted(set(seeds))
    }
    means = [i.mean for i in within.values()]
    return Paired(
        pooled=pooled,
        seeds=seed_interval(means, level),
        per_seed=dict(zip(within, means, strict=True)),
        within_seed=within,
    )


def bonferroni(level: float, comparisons: int) -> float:
    """The per-comparison level that keeps the family-wise level over ``comparisons``."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be at least 1, got {comparisons}")
    return 1 - (1 - level) / comparisons
