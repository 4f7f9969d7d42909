"""Verdicts on synthetic per-episode tables built so that each verdict must appear.

:func:`episodes_table` writes the rows of ``results/episodes.parquet`` (the contract of
brief A) for chosen effects: each episode has a difficulty every setting of a run shares
and, less so, every run (so comparisons are paired), plus the setting's effect and a
little noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pytest

from mamlscope.methods import method as lookup_method
from mamlscope.report.verdicts import (
    INCONSISTENT,
    NO_ADAPTATION,
    NOT_ASSESSED,
    RAPID_BODY,
    REUSE,
    body_settings,
    rapid_from,
    verdict_sentences,
    verdicts,
)

LAYERS = ("fc1", "bn1", "fc2", "bn2", "head")
TEST_STEPS = 10
STEPS = ("0", "1", "2", "5", "10")
Effect = Callable[[str, str, str, str, int], float]


def no_effect(method: str, analysis: str, setting: str, mode: str, seed: int) -> float:
    return 0.0


def episodes_table(
    effect: Effect = no_effect,
    *,
    dataset: str = "d",
    methods: Sequence[str] = ("baseline", "maml"),
    seeds: Sequence[int] = (0, 1),
    episodes: int = 200,
    classes: str = "seen",
    layers: Sequence[str] = LAYERS,
    noise: float = 0.02,
    seed: int = 0,
) -> pd.DataFrame:
    """Every analysis of every run, columns and dtypes of the contract; accuracy = the
    episode's difficulty (shared by every run) + the run's own variation per episode +
    ``effect(method, analysis, setting, mode, seed)`` + noise per setting."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.45, 0.85, episodes)  # the same episodes for every run
    parts = []
    for method in methods:
        meta = lookup_method(method).evaluation == "inner-loop"
        cells = [("evaluation", "own", "transductive" if meta else "running")]
        modes = ("transductive", "support")
        if meta:
            cells += [("freeze", f"from {k}", m) for k in layers for m in modes]
            cells += [("freeze", "body", m) for m in modes]
            cells += [("steps", s, m) for s in STEPS for m in modes]
            cells += [("centroid", "penultimate", m) for m in modes]
        else:
            cells += [("centroid", "penultimate", m) for m in (*modes, "running")]
            cells += [("finetune", "fresh head", m) for m in (*modes, "running")]
        for s in seeds:
            base = difficulty + rng.normal(0, 0.05, episodes)  # this run's own
            for analysis, setting, mode in cells:
                value = base + effect(method, analysis, setting, mode, s)
                value = value + rng.normal(0, noise, episodes)
                parts.append(
                    pd.DataFrame(
                        dict(dataset=dataset, method=method, seed=np.int64(s), analysis=analysis,
                             setting=setting, batchnorm=mode,
                             episode=np.arange(episodes, dtype=np.int64),
                             accuracy=np.clip(value, 0.0, 1.0), classes=classes, snapshot=1.0)
                    )
                )  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def adapting(gains: dict[str, float], centroid: float = -0.15, full: float = 0.0) -> Effect:
    """An effect: ``gains`` per freeze setting (head-only 0), the method's own adaptation
    (evaluation and steps at the test count) ``full``, nearest centroid ``centroid``."""

    def effect(method: str, analysis: str, setting: str, mode: str, seed: int) -> float:
        if analysis == "freeze":
            return gains.get(setting, 0.0)
        if analysis == "centroid":
            return centroid
        if analysis == "steps":
            return full if setting == str(TEST_STEPS) else full * int(setting) / TEST_STEPS
        return full

    return effect


def one(frame: pd.DataFrame, method: str = "maml", mode: str = "transductive") -> pd.Series:
    rows = frame[(frame["method"] == method) & (frame["batchnorm"] == mode)]
    assert len(rows) == 1
    return rows.iloc[0]


def run(table: pd.DataFrame, **kw) -> pd.DataFrame:
    return verdicts(table, {"d": TEST_STEPS}, {"d": list(LAYERS)}, **kw)


def test_feature_reuse_when_no_body_setting_beats_head_only():
    found = run(episodes_table(adapting({}, full=0.0)))
    row = one(found)
    assert row["verdict"] == REUSE
    assert row["settings"] == 5  # from fc1, bn1, fc2, bn2 and body
    assert "no body-adapting setting is significantly better" in row["criterion"]
    assert row["low"] <= 0 and row["level"] == pytest.approx(0.99)
    assert row["classes"] == "seen" and row["centroid_high"] < 0
    # One row per inner-loop method and mode: the baseline gets none.
    assert list(zip(found["method"], found["batchnorm"], strict=True)) == [
        ("maml", "transductive"), ("maml", "support"),
    ]  # fmt: skip


def test_rapid_learning_from_the_highest_layer_that_must_adapt():
    gains = {"from fc1": 0.06, "from bn1": 0.06, "from fc2": 0.05, "body": 0.04}
    row = one(run(episodes_table(adapting(gains, full=0.06))))
    assert row["verdict"] == rapid_from("fc2")
    assert row["comparison"] == "from fc2 - from head"
    assert row["low"] > 0 and row["difference"] == pytest.approx(0.05, abs=0.01)
    assert "(the highest such layer)" in row["criterion"]


def test_the_layer_order_is_the_networks_not_the_tables():
    gains = {"from fc1": 0.06, "from bn1": 0.06}
    table = episodes_table(adapting(gains, full=0.06), layers=("fc1", "bn1", "fc2", "head"))
    table = table.sort_values(["setting", "seed", "episode"])  # bn1 first alphabetically
    row = one(verdicts(table, {"d": TEST_STEPS}, {"d": ["fc1", "bn1", "fc2", "head"]}))
    assert row["verdict"] == rapid_from("bn1")
    assert body_settings(["from head", "body", "from fc2", "from fc1"], ["fc1", "fc2"]) == [
        "from fc1", "from fc2", "body",
    ]  # fmt: skip


def test_rapid_learning_in_the_body_when_only_the_body_setting_beats_head_only():
    row = one(run(episodes_table(adapting({"body": 0.06}, full=0.06))))
    assert row["verdict"] == RAPID_BODY and row["comparison"] == "body - from head"


def test_no_adaptation_needed_when_the_centroid_is_not_significantly_worse():
    row = one(run(episodes_table(adapting({"from fc1": 0.05}, centroid=0.0, full=0.0))))
    assert row["verdict"] == NO_ADAPTATION
    assert row["comparison"] == "nearest centroid - full adaptation" and row["high"] >= 0
    assert row["settings"] == 1
    assert f"a loss of up to {-100 * row['low']:.2f} points" in row["criterion"]  # low < 0


def test_a_verdict_whose_seeds_disagree_says_so():
    def effect(method, analysis, setting, mode, seed):
        gain = 0.10 if seed == 0 else -0.02
        base = adapting({"from fc1": gain}, full=gain)
        return base(method, analysis, setting, mode, seed)

    row = one(run(episodes_table(effect)))
    assert row["verdict"] == f"{rapid_from('fc1')}, {INCONSISTENT}"
    assert not row["consistent"] and row["low"] > 0
    assert row["per_seed"][0] > 0 > row["per_seed"][1]
    assert row["seed_low"] < 0 < row["seed_high"]  # the across-seed interval holds 0
    consistent = one(run(episodes_table(adapting({"from fc1": 0.05}, full=0.05))))
    assert INCONSISTENT not in consistent["verdict"] and consistent["consistent"]


def test_each_mode_is_judged_on_its_own_rows():
    def effect(method, analysis, setting, mode, seed):
        gains = {"from fc1": 0.06} if mode == "support" else {}
        return adapting(gains, full=gains.get("from fc1", 0.0))(
            method, analysis, setting, mode, seed
        )

    found = run(episodes_table(effect))
    assert one(found, mode="transductive")["verdict"] == REUSE
    assert one(found, mode="support")["verdict"] == rapid_from("fc1")


def test_missing_rows_and_nan_give_not_assessed_never_a_verdict():
    table = episodes_table(adapting({"from fc1": 0.06}, full=0.06))
    no_centroid = table[~((table["analysis"] == "centroid") & (table["method"] == "maml"))]
    row = one(run(no_centroid))
    assert row["verdict"] == NOT_ASSESSED and "nearest centroid" in row["criterion"]
    nan = table.copy()
    nan.loc[nan["analysis"] == "centroid", "accuracy"] = math.nan
    row = one(run(nan))
    assert row["verdict"] == NOT_ASSESSED and "undefined" in row["criterion"]
    fewer = table[~((table["setting"] == "from head") & (table["episode"] == 3))]
    row = one(run(fewer))
    assert row["verdict"] == NOT_ASSESSED and "same (seed, episode) pairs" in row["criterion"]


def test_nan_accuracies_are_dropped_and_counted():
    table = episodes_table(adapting({"from fc1": 0.06}, full=0.06))
    hole = (table["setting"] == "from head") & (table["episode"] < 5) & (table["seed"] == 0)
    table.loc[hole & (table["batchnorm"] == "transductive"), "accuracy"] = math.nan
    row = one(run(table))
    assert row["verdict"] == rapid_from("fc1") and row["dropped"] == 5
    assert row["pairs"] == 2 * 200 - 5
    assert "5 with a missing accuracy left out" in verdict_sentences(run(table))[0]


def test_older_snapshots_are_ignored():
    table = episodes_table(adapting({"from fc1": 0.06}, full=0.06))
    early = episodes_table(adapting({}, full=0.0), seed=5).assign(snapshot=0.5)
    assert one(run(pd.concat([table, early])))["verdict"] == rapid_from("fc1")


def test_one_sentence_per_verdict_with_the_classes_and_both_intervals():
    table = episodes_table(adapting({"from fc1": 0.06}, full=0.06), classes="unseen")
    found = run(table)
    lines = verdict_sentences(found)
    assert len(lines) == len(found) == 2
    assert all("test classes unseen in training" in line for line in lines)
    assert "across seeds [" in lines[0] and "per seed +" in lines[0]
    single = verdict_sentences(run(episodes_table(adapting({}), seeds=(0,))))
    assert "one seed, so no across-seed interval" in single[0]


def test_verdict_rows_are_unique_for_every_method_and_dataset():
    names = ("baseline", "maml", "fomaml", "anil", "boil")
    tables = [
        episodes_table(adapting({"from fc1": 0.05}, full=0.05), dataset=d, methods=names, seed=i)
        for i, d in enumerate(("a", "b"))
    ]
    found = verdicts(pd.concat(tables), {"a": 10, "b": 10}, None)
    keys = found[["dataset", "method", "batchnorm"]]
    assert not keys.duplicated().any()
    assert len(found) == 2 * 4 * 2  # datasets x inner-loop methods x modes
