"""The findings on synthetic per-episode tables: each verdict where it should be, both
like-for-like pairings, paired best method and ordering, no two sentences that contradict."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_verdicts import TEST_STEPS, adapting, episodes_table

from mamlscope.config import validate_config
from mamlscope.report.findings import findings
from mamlscope.report.results import Results
from mamlscope.report.verdicts import INCONSISTENT, NO_ADAPTATION, REUSE, rapid_from

METHODS = ("baseline", "maml", "fomaml", "maml-fd")
EPISODES = {"way": 5, "shot": 1, "query": 5, "test_episodes": 20, "val_episodes": 5}


def config_for(datasets: dict[str, str], methods=METHODS, seeds=(0, 1)) -> dict:
    """A resolved config: each dataset scikit-learn digits, protocol ``examples`` (test
    classes seen) or ``classes`` (unseen), fc [16, 16] (layers fc1, bn1, fc2, bn2, head)."""
    split = {
        "examples": {"protocol": "examples", "train": 0.6, "val": 0.2},
        "classes": {"protocol": "classes", "train": 4, "val": 3},
    }
    raw = {
        "seeds": list(seeds),
        "device": "cpu",
        "methods": list(methods),
        "model": {"arch": "fc", "hidden": [16, 16]},
        "maml": {"test_inner_steps": TEST_STEPS},
        "datasets": {
            name: {"source": "digits", "image_size": 8, "split": split[protocol],
                   "episodes": {**EPISODES, "way": 3}}
            for name, protocol in datasets.items()
        },
    }  # fmt: skip
    return validate_config(raw, check_paths=False)


def results_of(table: pd.DataFrame, config: dict) -> Results:
    """Results as load_results builds them: the evaluation rows are the runs' episodes."""
    own = table[table["analysis"] == "evaluation"]
    episodes = own[["dataset", "method", "seed", "episode", "accuracy"]].reset_index(drop=True)
    runs = own.groupby(["dataset", "method", "seed"], as_index=False)["batchnorm"].first()
    return Results(Path("."), config, runs, episodes, pd.DataFrame(), {}, table)


def line_of(lines: list[str], *parts: str) -> str:
    found = [line for line in lines if all(p in line for p in parts)]
    assert len(found) == 1, (parts, lines)
    return found[0]


@pytest.fixture(scope="module")
def four_datasets():
    """One dataset per verdict, the meta methods all behaving alike within a dataset."""

    def inconsistent(method, analysis, setting, mode, seed):
        gain = 0.10 if seed == 0 else -0.02
        return adapting({"from fc1": gain}, full=gain)(method, analysis, setting, mode, seed)

    # Where a setting should not differ from head-only it is a point worse, so that a 5%
    # family-wise error over eight (method, mode) families cannot flip a verdict.
    worse = {f"from {k}": -0.01 for k in ("fc1", "bn1", "fc2", "bn2")} | {"body": -0.01}
    rapid = {"from fc1": 0.05, "from bn1": 0.05, "from fc2": 0.05, "from bn2": -0.01}
    effects = {
        "reuse": ("examples", adapting(worse, full=-0.01)),
        "rapid": ("classes", adapting(rapid, full=0.05)),
        "none": ("examples", adapting({"from fc1": 0.04}, centroid=0.05, full=0.04)),
        "mixed": ("classes", inconsistent),
    }
    tables = [
        episodes_table(
            effect, dataset=name, methods=METHODS, seed=i,
            classes="seen" if protocol == "examples" else "unseen",
        )
        for i, (name, (protocol, effect)) in enumerate(effects.items())
    ]  # fmt: skip
    config = config_for({name: protocol for name, (protocol, _) in effects.items()})
    return findings(results_of(pd.concat(tables, ignore_index=True), config))


@pytest.mark.parametrize(
    "dataset, classes, verdict",
    [
        ("reuse", "seen", REUSE),
        ("rapid", "unseen", rapid_from("fc2")),
        ("none", "seen", NO_ADAPTATION),
        ("mixed", "unseen", f"{rapid_from('fc1')}, {INCONSISTENT}"),
    ],
)
def test_each_verdict_appears_where_it_should(four_datasets, dataset, classes, verdict):
    lines = four_datasets["Rapid learning or feature reuse?"]
    for method in METHODS[1:]:
        for mode in ("transductive", "support"):
            line = line_of(lines, f"**{dataset}**", f", {method}, {mode} BatchNorm")
            assert f"test classes {classes} in training" in line
            assert f": **{verdict}**." in line


def test_like_for_like_shows_both_pairings_with_both_intervals():
    def effect(method, analysis, setting, mode, seed):
        if method == "baseline":
            return 0.0
        full = 0.05 if mode == "transductive" else -0.05
        return adapting({}, full=full)(method, analysis, setting, mode, seed)

    config = config_for({"d": "examples"})
    table = episodes_table(effect, dataset="d", methods=METHODS)
    lines = findings(results_of(table, config))["MAML against standard training, like for like"]
    assert len(lines) == 3 * 2  # every meta method, both pairings
    for method in METHODS[1:]:
        both = line_of(lines, f": {method}'s full adaptation (transductive)", "(transductive)")
        assert "significantly above it" in both and "across seeds [" in both
        assert "test classes seen in training" in both
        neither = line_of(lines, f": {method}'s full adaptation (support)", "(running)")
        assert "significantly below it" in neither and "non-transductive" in neither


def test_best_method_and_ordering_are_paired():
    def effect(method, analysis, setting, mode, seed):
        shift = {"baseline": 0.0, "maml": 0.03, "fomaml": 0.015, "maml-fd": 0.0}[method]
        return shift if analysis == "evaluation" else 0.0

    config = config_for({"d": "examples"})
    table = episodes_table(effect, dataset="d", methods=METHODS, noise=0.01)
    found = findings(results_of(table, config))
    best = found["Best method per dataset"][0]
    assert best.startswith("- **d**: maml is best by its own evaluation")
    assert all(f"significantly above {m}" in best for m in ("baseline", "fomaml", "maml-fd"))
    order = found["MAML > FOMAML >= FD?"][0]
    assert "maml > fomaml >= maml-fd holds" in order
    assert "maml is significantly above fomaml" in order


def test_a_missing_method_and_missing_rows_are_said_never_concluded():
    config = config_for({"d": "examples"})
    table = episodes_table(adapting({}), dataset="d", methods=METHODS)
    fd = (table["method"] == "maml-fd") & (table["analysis"] == "evaluation")
    table.loc[fd, "accuracy"] = math.nan
    no_support = (table["method"] == "fomaml") & (table["batchnorm"] == "support")
    found = findings(results_of(table[~no_support], config))
    best = found["Best method per dataset"][0]
    assert "No accuracy for maml-fd: left out." in best and "maml-fd (" not in best
    assert "not assessed (no finite-difference-order method" in found["MAML > FOMAML >= FD?"][0]
    like = found["MAML against standard training, like for like"]
    line = line_of(like, ": fomaml's full adaptation (support)")
    assert "missing (no rows for fomaml under support), so not compared." in line


def _relations(line: str, best: str) -> list[tuple[str, str, str]]:
    """(a, relation, b) stated in a line; a relation without a subject is the best's."""
    pattern = (
        r"(?:^|[:;.] )(?:([\w-]+) is )?"
        r"(significantly above|significantly below|not separated from) ([\w-]+)"
    )
    return [(a or best, r, b) for a, r, b in re.findall(pattern, line)]


@pytest.mark.parametrize("seed", range(6))
def test_no_two_findings_contradict_each_other(seed):
    rng = np.random.default_rng(seed)
    shifts = dict(zip(METHODS, rng.normal(0, 0.01, len(METHODS)), strict=True))

    def effect(method, analysis, setting, mode, s):
        gains = {f"from {k}": float(rng_gain[k]) for k in ("fc1", "bn1", "fc2", "bn2")}
        base = adapting(gains, centroid=float(rng_centroid), full=gains["from fc1"])
        return base(method, analysis, setting, mode, s) + shifts[method]

    rng_gain = dict(zip(("fc1", "bn1", "fc2", "bn2"), rng.uniform(0, 0.03, 4), strict=True))
    rng_centroid = rng.uniform(-0.05, 0.01)
    config = config_for({"d": "examples"})
    table = episodes_table(effect, dataset="d", methods=METHODS, seed=seed, episodes=60)
    table.loc[rng.random(len(table)) < 0.01, "accuracy"] = math.nan  # a few missing
    found = findings(results_of(table, config))
    best_line = found["Best method per dataset"][0]
    best = best_line.split(": ")[1].split(" is best")[0]
    stated: dict[tuple[str, str], set[str]] = {}
    for heading in ("Best method per dataset", "MAML > FOMAML >= FD?"):
        for line in found[heading]:
            for a, r, b in _relations(line, best):
                stated.setdefault((a, b), set()).add(r)
    assert len(stated) >= len(METHODS) - 1  # the best against each other, the orderings
    assert all(a in METHODS and b in METHODS for a, b in stated)
    for (a, b), relations in stated.items():
        assert len(relations) == 1, (a, b, relations)  # one relation per pair everywhere
        flipped = stated.get((b, a), set())
        opposite = {"significantly above": "significantly above",
                    "significantly below": "significantly below"}  # fmt: skip
        assert not {opposite[r] for r in relations if r in opposite} & flipped
    assert not any("significantly below" in rs for (a, _), rs in stated.items() if a == best)
    verdicts = found["Rapid learning or feature reuse?"]
    keys = [re.match(r"- \*\*(\S+)\*\* \([^)]*\), (\S+), (\S+) BatchNorm", v).groups()
            for v in verdicts]  # fmt: skip
    assert len(keys) == len(set(keys)) == 3 * 2
