"""The report's CKA section: the per-episode table as description, no verdict."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamlscope.features import cka_study
from mamlscope.features.activations import activations_frame, write_activations
from mamlscope.report import show, studies
from mamlscope.report.results import Results


def activations(rng: np.random.Generator, episodes: int, move: float) -> pd.DataFrame:
    """A model whose body moves by ``move`` in adaptation; its head is refitted."""
    frames = [activations_frame({"fc1": rng.normal(size=(6, 4))}, np.arange(6), np.zeros(6))]
    for e in range(episodes):
        ids, labels = np.arange(10) + 10 * e, np.arange(10) % 2
        body = rng.normal(size=(10, 4))
        before = {"fc1": body, "head": rng.normal(size=(10, 2))}
        after = {"fc1": body + move * rng.normal(size=(10, 4)), "head": rng.normal(size=(10, 2))}
        frames.append(activations_frame(before, ids, labels, stage="meta", episode=e))
        frames.append(activations_frame(after, ids, labels, stage="adapted", episode=e))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def results(tmp_path: Path) -> Results:
    rng = np.random.default_rng(0)
    root = tmp_path / "results"
    for seed in (0, 1):
        paths = {}
        for method, move in (("baseline", 0.0), ("maml", 0.5)):
            paths[method] = tmp_path / f"{method}{seed}.parquet"
            write_activations(paths[method], activations(rng, 5, move))
        out = studies.cka_file(root, "d", seed)
        cka_study.run_cka(
            paths,
            dataset="d",
            seed=seed,
            table_out=out,
            methods_png=out.with_name("cka_methods.png"),
            adaptation_png=out.with_name("cka_adaptation.png"),
        )
    config = {"datasets": {"d": {}}, "methods": ["baseline", "maml"], "seeds": [0, 1]}
    return Results(root, config, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())


def test_adaptation_table_shows_each_seeds_mean_and_interval(results: Results) -> None:
    cka = studies.cka_table(results.root, results.datasets, results.seeds)
    assert list(cka.columns) == list(cka_study.COLUMNS)
    shown = studies.adaptation_table(cka, ["maml", "baseline"])
    assert list(shown.columns) == ["dataset", "seed", "layer", "maml", "baseline", "episodes"]
    assert list(zip(shown["seed"], shown["layer"], strict=True)) == [
        (0, "fc1"),
        (0, "head"),
        (1, "fc1"),
        (1, "head"),
    ]
    assert (shown["episodes"] == 5).all()
    rows = studies.adaptation_rows(cka).set_index(["seed", "model_a", "layer_a"])
    for row in shown.itertuples():
        expected = rows.loc[(row.seed, "maml", row.layer)]
        numbers = [float(v) for v in re.findall(r"[0-9.]+", row.maml)]
        assert numbers == pytest.approx(
            [expected["cka"], expected["low"], expected["high"]], abs=5e-4
        )
    # The baseline's body did not move: every episode 1, a point interval.
    assert shown.loc[shown["layer"] == "fc1", "baseline"].tolist() == ["1.000 [1.000, 1.000]"] * 2


def test_the_cka_section_describes_the_table_without_a_verdict(
    results: Results, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[str] = []
    monkeypatch.setattr(show, "display", lambda obj: shown.append(str(obj.data)))
    show.cka(results)
    text = "\n".join(shown)
    assert "per test episode" in text and "support and query images" in text
    assert "95% bootstrap interval" in text
    assert "1.000 [1.000, 1.000]" in text  # the table itself
    assert "mamlscope-figure" in text  # the figures
    for verdict in ("supports feature reuse", "does not support", "reuse</th>", "at least 0.9"):
        assert verdict not in text


def test_the_cka_section_says_when_the_run_has_no_cka(tmp_path: Path, monkeypatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr(show, "display", lambda obj: shown.append(str(obj.data)))
    config = {"datasets": {"d": {}}, "methods": ["maml"], "seeds": [0]}
    show.cka(Results(tmp_path, config, pd.DataFrame(), pd.DataFrame(), pd.DataFrame()))
    assert "CKA before against after adaptation: not produced by this run" in "\n".join(shown)
