"""The report's analyses section on a synthetic per-episode table: each table and figure."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats
from test_findings import config_for, results_of
from test_verdicts import adapting, episodes_table

from mamlscope.report import analyses as tables
from mamlscope.report import show

METHODS = ("baseline", "maml", "anil")


@pytest.fixture(scope="module")
def results():
    gains = {"from fc1": 0.05, "from bn1": 0.04, "from fc2": 0.03, "body": 0.02}
    table = episodes_table(
        adapting(gains, full=0.05), dataset="d", methods=METHODS, classes="unseen", episodes=50
    )
    return results_of(table, config_for({"d": "classes"}, methods=METHODS))


def test_freezing_table_runs_from_head_only_to_every_layer_then_body(results):
    found = tables.freezing_table(results, "d")
    settings = ["from head", "from bn2", "from fc2", "from bn1", "from fc1", "body"]
    assert list(found.columns) == ["method", "BatchNorm", *settings]
    assert list(zip(found["method"], found["BatchNorm"], strict=True)) == [
        ("maml", "transductive"), ("maml", "support"), ("anil", "transductive"),
        ("anil", "support"),
    ]  # fmt: skip
    rows = results.analyses
    cell = rows[(rows["method"] == "maml") & (rows["setting"] == "from fc1")]
    cell = cell[cell["batchnorm"] == "transductive"].groupby("seed")["accuracy"].mean()
    half = stats.t.ppf(0.975, 1) * cell.std(ddof=1) / 2**0.5
    assert found.loc[0, "from fc1"] == f"{100 * cell.mean():.2f} ± {100 * half:.2f}"


def test_the_figures_have_a_panel_per_mode_and_a_line_per_method(results):
    fig = tables.freezing_figure(results, "d")
    assert [ax.get_title() for ax in fig.axes] == ["BatchNorm: transductive", "BatchNorm: support"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["maml", "anil"]
    assert len(fig.axes[0].containers) == 2 * 2  # per method: the "from" line, the body point
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[0] == "from head" and ticks[-1] == "body"
    steps = tables.steps_figure(results, "d")
    assert len(steps.axes) == 2 and len(steps.axes[1].containers) == 2


def test_centroid_steps_and_baseline_tables(results):
    centroid = tables.centroid_table(results, "d").set_index(["method", "BatchNorm"])
    assert ("baseline", "running") in centroid.index and ("maml", "support") in centroid.index
    assert centroid.loc[("maml", "support"), "paired difference"].startswith("-")
    steps = tables.steps_table(results, "d")
    assert [c for c in steps.columns if c.endswith("steps")] == [
        "0 steps", "1 steps", "2 steps", "5 steps", "10 steps",
    ]  # fmt: skip
    baseline = tables.baseline_table(results, "d")
    assert list(baseline["BatchNorm"]) == ["transductive", "support", "running"]


def test_like_for_like_is_the_paired_t_interval(results):
    found = tables.like_for_like_of(results)
    assert len(found) == 2 * 2  # maml and anil, both pairings
    row = found[(found["method"] == "anil") & (found["pairing"] == "non-transductive")].iloc[0]
    rows = results.analyses
    a = rows[(rows["method"] == "anil") & (rows["analysis"] == "steps")]
    a = a[(a["setting"] == "10") & (a["batchnorm"] == "support")]
    b = rows[(rows["analysis"] == "finetune") & (rows["batchnorm"] == "running")]
    a, b = a.sort_values(["seed", "episode"]), b.sort_values(["seed", "episode"])
    ci = stats.ttest_rel(a["accuracy"], b["accuracy"]).confidence_interval(0.95)
    assert (row["low"], row["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    shown = tables.like_for_like_table(results, "d")
    assert list(shown["BatchNorm (method / baseline)"]) == [
        "transductive / transductive", "support / running",
    ] * 2  # fmt: skip


def test_show_analyses_says_seen_or_unseen_and_shows_every_table_and_figure(results, monkeypatch):
    shown: list = []
    monkeypatch.setattr(show, "markdown", lambda text: shown.append(("md", text)))
    monkeypatch.setattr(show, "table", lambda frame, caption="": shown.append(("table", caption)))
    monkeypatch.setattr(show, "figure", lambda fig, alt, caption="": shown.append(("fig", alt)))
    show.analyses(results)
    assert ("md", "### d (test classes unseen in training)") in shown
    assert [k for k, _ in shown].count("table") == 6  # verdicts and the five analyses
    assert [a for k, a in shown if k == "fig"] == ["freezing, d", "steps, d"]
    captions = [c for k, c in shown if k == "table"]
    assert all(c.startswith("d (test classes unseen in training).") for c in captions[1:])
    shown.clear()
    empty = results_of(results.analyses.iloc[:0], results.config)
    empty.analyses = pd.DataFrame(columns=results.analyses.columns)
    show.analyses(empty)
    assert len(shown) == 1 and "not produced by this run" in shown[0][1]
