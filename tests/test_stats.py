"""Paired statistics: scipy's paired t interval, seeds, pairing slices, NaN as missing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mamlscope.stats import bonferroni, compare, paired_difference, seed_interval


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_paired_difference_is_scipys_paired_t_interval(level):
    rng = np.random.default_rng(1)
    a = rng.uniform(0.4, 1.0, 150)
    b = np.clip(a - 0.03 + rng.normal(0, 0.05, 150), 0, 1)
    found = paired_difference(a, b, level)
    ci = stats.ttest_rel(a, b).confidence_interval(level)
    assert found.mean == pytest.approx(np.mean(a - b))
    assert (found.low, found.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert found.n == 150 and found.level == level and found.dropped == 0


def test_too_few_pairs_give_nan_bounds_not_an_error():
    one = paired_difference([0.5], [0.4])
    assert one.n == 1 and one.mean == pytest.approx(0.1)
    assert math.isnan(one.low) and math.isnan(one.high) and not one.excludes_zero
    none = paired_difference([math.nan, 0.3], [0.2, math.nan])
    assert none.n == 0 and none.dropped == 2 and math.isnan(none.mean)
    assert not paired_difference([], []).defined


def test_nan_pairs_are_dropped_and_counted():
    a = np.array([0.9, math.nan, 0.8, 0.7, 0.6])
    b = np.array([0.5, 0.5, math.nan, 0.6, 0.4])
    found = paired_difference(a, b)
    expected = stats.ttest_rel([0.9, 0.7, 0.6], [0.5, 0.6, 0.4]).confidence_interval(0.95)
    assert found.n == 3 and found.dropped == 2
    assert (found.low, found.high) == (pytest.approx(expected.low), pytest.approx(expected.high))


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([0.1, 0.2], [0.1])


def test_seed_interval_is_student_t_over_seeds():
    means = [0.91, 0.88, 0.93]
    found = seed_interval(means)
    half = stats.t.ppf(0.975, 2) * np.std(means, ddof=1) / math.sqrt(3)
    assert found.mean == pytest.approx(np.mean(means))
    assert found.high - found.mean == pytest.approx(half)
    assert math.isnan(seed_interval([0.9]).low)


def slice_of(values: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [dict(seed=s, episode=e, accuracy=v) for s, vs in values.items() for e, v in enumerate(vs)]
    )


def test_compare_pairs_on_seed_and_episode_whatever_the_row_order():
    a = slice_of({0: [0.9, 0.8, 0.7, 0.6], 1: [0.5, 0.6, 0.7, 0.9]})
    b = slice_of({0: [0.8, 0.71, 0.6, 0.49], 1: [0.6, 0.71, 0.8, 0.99]})
    found = compare(a, b.sample(frac=1.0, random_state=3))
    diff = a["accuracy"] - b["accuracy"]
    assert found.pooled.mean == pytest.approx(diff.mean()) and found.pooled.n == 8
    assert found.per_seed == {0: pytest.approx(0.1), 1: pytest.approx(-0.1)}
    assert found.within_seed[1].n == 4 and found.within_seed[1].below_zero
    assert not found.consistent  # seed 0 significantly above, seed 1 significantly below
    ci = stats.ttest_1samp([0.1, -0.1], 0).confidence_interval(0.95)
    assert (found.seeds.low, found.seeds.high) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_a_sign_change_inside_each_seeds_noise_is_not_inconsistent():
    a = slice_of({0: [0.9, 0.5, 0.7, 0.6], 1: [0.5, 0.9, 0.7, 0.9]})
    b = slice_of({0: [0.8, 0.6, 0.7, 0.58], 1: [0.6, 0.8, 0.72, 0.9]})
    found = compare(a, b)
    assert found.per_seed[0] > 0 > found.per_seed[1]
    assert found.consistent


def test_compare_refuses_slices_on_other_episodes_or_with_duplicates():
    a = slice_of({0: [0.9, 0.8, 0.7]})
    with pytest.raises(ValueError, match="same \\(seed, episode\\) pairs"):
        compare(a, slice_of({0: [0.9, 0.8]}))
    with pytest.raises(ValueError, match="same \\(seed, episode\\) pairs"):
        compare(a, slice_of({1: [0.9, 0.8, 0.7]}))
    with pytest.raises(ValueError, match="more than one row"):
        compare(pd.concat([a, a]), a)


def test_compare_counts_missing_accuracies_per_seed():
    a = slice_of({0: [0.9, math.nan, 0.7], 1: [0.8, 0.8, 0.8]})
    b = slice_of({0: [0.8, 0.8, 0.6], 1: [0.7, 0.7, 0.7]})
    found = compare(a, b)
    assert found.dropped == 1 and found.pooled.n == 5
    assert found.per_seed == {0: pytest.approx(0.1), 1: pytest.approx(0.1)}
    assert found.consistent


def test_bonferroni_level():
    assert bonferroni(0.95, 1) == pytest.approx(0.95)
    assert bonferroni(0.95, 5) == pytest.approx(0.99)
    with pytest.raises(ValueError):
        bonferroni(0.95, 0)
