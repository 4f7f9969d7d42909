"""The report's verdict over training (mamlscope.report.training) on a synthetic table with
several snapshots: each snapshot judged on its own rows, as `verdicts` judges that slice,
and the table, figures and captions the report shows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_findings import config_for, results_of
from test_verdicts import LAYERS, TEST_STEPS, adapting, episodes_table

from mamlscope.analyses.training_cka import COLUMNS as CKA_COLUMNS
from mamlscope.features.cka_study import mean_interval
from mamlscope.report import show, training
from mamlscope.report.verdicts import REUSE, rapid_from, verdicts

METHODS = ("baseline", "maml", "anil")
# Per snapshot, what the meta methods do: nothing gained by adapting the body early, then
# the layers from fc2 up must adapt, then from fc1 (the final model).
EFFECTS = {
    0.25: adapting({}, full=0.0),
    0.5: adapting({"from fc1": 0.06, "from bn1": 0.06, "from fc2": 0.05, "body": 0.04}, full=0.06),
    1.0: adapting({"from fc1": 0.06, "body": 0.05}, full=0.06),
}


def snapshot_table() -> pd.DataFrame:
    """The final models' full table, and at 25% and 50% what a snapshot holds (the meta
    methods' freeze rows, own adaptation at the test steps and nearest centroid) on the
    first 60 episodes."""
    parts = [episodes_table(EFFECTS[1.0], methods=METHODS, episodes=120, seed=1)]
    for i, fraction in enumerate((0.25, 0.5)):
        rows = episodes_table(EFFECTS[fraction], methods=METHODS, episodes=60, seed=2 + i)
        own = (rows["analysis"] == "steps") & (rows["setting"] == str(TEST_STEPS))
        keep = (rows["method"] != "baseline") & (
            rows["analysis"].isin(["freeze", "centroid"]) | own
        )
        parts.append(rows[keep].assign(snapshot=fraction))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return snapshot_table()


def judge(table: pd.DataFrame, **kw) -> pd.DataFrame:
    return verdicts(table, {"d": TEST_STEPS}, {"d": list(LAYERS)}, **kw)


def test_each_snapshot_is_judged_on_its_own_rows_as_verdicts_judges_that_slice(table):
    found = training.verdicts_over_training(table, {"d": TEST_STEPS}, {"d": list(LAYERS)})
    assert sorted(found["snapshot"].unique()) == [0.25, 0.5, 1.0]
    for fraction in (0.25, 0.5, 1.0):
        mine = found[found["snapshot"] == fraction].drop(columns="snapshot")
        alone = table[table["snapshot"] == fraction].assign(snapshot=1.0)
        for expected in (judge(table, snapshot=fraction), judge(alone)):
            pd.testing.assert_frame_equal(mine.reset_index(drop=True), expected)
    # Today's verdicts (the final models) do not move with snapshot rows in the table.
    pd.testing.assert_frame_equal(judge(table), judge(table[table["snapshot"] == 1.0]))
    at = found.set_index(["snapshot", "method", "batchnorm"])["verdict"]
    assert at[(0.25, "maml", "transductive")] == REUSE
    assert at[(0.5, "maml", "transductive")] == rapid_from("fc2")
    assert at[(1.0, "maml", "support")] == rapid_from("fc1")


def test_the_verdict_over_training_table_has_a_column_per_snapshot(table):
    found = training.verdicts_over_training(table, {"d": TEST_STEPS}, {"d": list(LAYERS)})
    shown = training.verdict_over_training_table(found, "d")
    assert list(shown.columns) == ["dataset", "method", "BatchNorm", "25%", "50%", "100%"]
    assert list(zip(shown["method"], shown["BatchNorm"], strict=True)) == [
        ("maml", "transductive"), ("maml", "support"), ("anil", "transductive"),
        ("anil", "support"),
    ]  # fmt: skip
    assert list(shown.iloc[0, 3:]) == [REUSE, rapid_from("fc2"), rapid_from("fc1")]
    assert training.verdict_over_training_table(found, "other").empty


def test_the_figure_shows_each_setting_against_head_only_with_the_verdicts(table):
    found = training.verdicts_over_training(table, {"d": TEST_STEPS}, {"d": list(LAYERS)})
    fig = training.over_training_figure(table, "d", found, list(LAYERS))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"{m} · BatchNorm: {b}" for m in ("maml", "anil")
                      for b in ("transductive", "support")]  # fmt: skip
    settings = ["from fc1", "from bn1", "from fc2", "from bn2", "body"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == settings
    first = fig.axes[0]
    assert len(first.containers) == len(settings)
    assert [t.get_text() for t in first.texts] == ["reuse", "rapid ≥fc2", "rapid ≥fc1"]
    # A point is the paired difference: setting - head-only, pooled over seeds' episodes.
    points = training.difference_points(table, "d", "maml", "transductive", settings)
    row = points[(points["snapshot"] == 0.5) & (points["setting"] == "from fc2")].iloc[0]
    rows = table[(table["method"] == "maml") & (table["batchnorm"] == "transductive")]
    rows = rows[(rows["snapshot"] == 0.5) & (rows["analysis"] == "freeze")]
    a = rows[rows["setting"] == "from fc2"].sort_values(["seed", "episode"])["accuracy"]
    b = rows[rows["setting"] == "from head"].sort_values(["seed", "episode"])["accuracy"]
    assert row["difference"] == pytest.approx(np.mean(a.to_numpy() - b.to_numpy()))
    assert row["pairs"] == 2 * 60 and row["low"] < row["difference"] < row["high"]


def cka_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for method in ("maml", "anil"):
        for seed in (0, 1):
            for fraction in (0.25, 0.5, 1.0):
                for layer in ("fc1", "bn1", "head"):
                    parts.append(pd.DataFrame(dict(
                        dataset="d", method=method, seed=seed, snapshot=fraction, layer=layer,
                        episode=np.arange(5), cka=rng.uniform(0.5, 1.0, 5),
                    )))  # fmt: skip
    return pd.concat(parts, ignore_index=True).astype(CKA_COLUMNS)


def test_cka_over_training_is_the_mean_with_its_bootstrap_interval():
    cka = cka_rows()
    summary = training.cka_summary(cka, "d")
    assert len(summary) == 2 * 3 * 3
    row = summary[(summary["method"] == "anil") & (summary["snapshot"] == 0.5)].iloc[1]
    values = cka[(cka["method"] == "anil") & (cka["snapshot"] == 0.5) & (cka["layer"] == "bn1")]
    assert row["layer"] == "bn1"
    assert (row["cka"], row["low"], row["high"], row["values"]) == mean_interval(values["cka"])
    fig = training.training_cka_figure(cka, "d")
    assert [ax.get_title() for ax in fig.axes] == ["maml", "anil"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fc1", "bn1", "head"]
    assert "first 5 test episodes (numbers 0 to 4)" in training.cka_note(cka, "d")


def test_the_report_shows_the_table_and_both_figures_with_their_episodes(
    table, tmp_path, monkeypatch
):
    results = results_of(table, config_for({"d": "examples"}, methods=METHODS))
    results.root = tmp_path
    cka_rows().to_parquet(tmp_path / training.TRAINING_CKA)
    shown: list = []
    monkeypatch.setattr(show, "markdown", lambda text: shown.append(("md", text, "")))
    monkeypatch.setattr(show, "table", lambda f, caption="": shown.append(("table", "", caption)))
    monkeypatch.setattr(
        show, "figure", lambda f, alt, caption="": shown.append(("fig", alt, caption))
    )
    show.analyses(results)
    figures = [(alt, caption) for kind, alt, caption in shown if kind == "fig"]
    assert [alt for alt, _ in figures][-2:] == ["over training, d", "CKA over training, d"]
    assert "25%: 60 test episodes (numbers 0 to 59)" in figures[-2][1]
    assert "100%: 120 test episodes (numbers 0 to 119); 2 seed(s)" in figures[-2][1]
    assert "first 5 test episodes" in figures[-1][1]
    captions = [caption for kind, _, caption in shown if kind == "table"]
    assert "Verdict over training" in captions[-1]
    # Without snapshots before the final weights: a note, no table and no figure.
    shown.clear()
    final = results_of(table[table["snapshot"] == 1.0], results.config)
    show.analyses(final)
    assert not any("over training" in alt for kind, alt, _ in shown if kind == "fig")
    assert any("no training snapshot before the final weights" in t for _, t, _ in shown)
