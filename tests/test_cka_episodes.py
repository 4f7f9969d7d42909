"""CKA before against after adaptation, per test episode, and its summary over episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamlscope.errors import DataError
from mamlscope.features import cka_study
from mamlscope.features.activations import activations_frame, write_activations
from mamlscope.similarity import cka_matrix, linear_cka


def reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. 3-4: HSIC of centred linear Gram matrices, normalised."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n  # centring matrix
    k, l = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h  # noqa: E741

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ b))

    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def episode_frames(
    rng: np.random.Generator, episodes: int = 3, n: int = 12
) -> tuple[pd.DataFrame, dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]]:
    """A model's activations on ``episodes`` episodes (plus a probe), and what each
    (layer, episode) holds before and after adaptation."""
    frames = [activations_frame({"fc1": rng.normal(size=(7, 5))}, np.arange(7), np.zeros(7))]
    held = {}
    for e in range(episodes):
        ids = rng.permutation(100)[:n] + 1000 * e  # not sorted: CKA must line rows up by id
        labels = np.arange(n) % 4
        body = rng.normal(size=(n, 5))
        head = rng.normal(size=(n, 4))
        after = {"fc1": body + 0.3 * rng.normal(size=(n, 5)), "head": rng.normal(size=(n, 4))}
        before = {"fc1": body, "head": head}
        frames.append(activations_frame(before, ids, labels, stage="meta", episode=e))
        frames.append(activations_frame(after, ids, labels, stage="adapted", episode=e))
        order = np.argsort(ids)
        for layer in before:
            held[(layer, e)] = before[layer][order], after[layer][order]
    return pd.concat(frames, ignore_index=True), held


def test_episode_cka_matches_a_reference_implementation_per_episode() -> None:
    frame, held = episode_frames(np.random.default_rng(0))
    per = cka_study.episode_cka(frame)
    assert list(per.columns) == ["layer", "episode", "cka"]
    assert len(per) == len(held)  # the probe (episode -1) is not compared
    for row in per.itertuples():
        before, after = held[(row.layer, row.episode)]
        assert row.cka == pytest.approx(reference_cka(before, after), rel=1e-6)
    # The shuffled rows are matched by example id: a mismatch would give ~random CKA.
    assert per.loc[per["layer"] == "fc1", "cka"].min() > 0.8


def test_adaptation_summary_is_the_mean_of_the_episodes_with_a_fixed_interval() -> None:
    frame, _ = episode_frames(np.random.default_rng(1), episodes=8)
    per = cka_study.episode_cka(frame)
    first = cka_study.adaptation_cka(frame).set_index("layer")
    again = cka_study.adaptation_cka(frame).set_index("layer")
    pd.testing.assert_frame_equal(first, again)  # the bootstrap's seed is fixed
    for layer, row in first.iterrows():
        values = per.loc[per["layer"] == layer, "cka"].to_numpy()
        assert row["cka"] == pytest.approx(values.mean())
        assert row["episodes"] == 8
        assert row["low"] < row["cka"] < row["high"]
        assert values.min() <= row["low"] and row["high"] <= values.max()
        assert list(row["episode_cka"]) == pytest.approx(list(values))
        assert list(row["episode_ids"]) == list(range(8))


def test_mean_interval_edge_cases() -> None:
    assert cka_study.mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5, 3)
    mean, low, high, n = cka_study.mean_interval([0.4, np.nan])
    assert (mean, n) == (0.4, 1) and np.isnan(low) and np.isnan(high)
    assert cka_study.mean_interval([np.nan])[3] == 0
    # Equal up to rounding (a layer adaptation leaves as it is): BCa is 0/0 there, the
    # percentile interval is not.
    mean, low, high, n = cka_study.mean_interval([1.0, 1.0 - 1e-16, 1.0, 1.0 - 2e-16])
    assert np.isfinite([low, high]).all() and low <= mean <= high and n == 4
    values = np.random.default_rng(2).uniform(0.6, 0.9, size=30)
    narrow = cka_study.mean_interval(values)
    wide = cka_study.mean_interval(values[:6])
    assert narrow[2] - narrow[1] < wide[2] - wide[1]  # more episodes, a tighter interval


def test_a_fresh_head_is_near_one_per_episode_where_pooling_mixes_the_labels() -> None:
    """An adapted head's unit k is the episode's label k, a different class each episode:
    here the head after adaptation is the one before with its units permuted per episode.
    Per episode that is a rotation (CKA 1); pooled over episodes it is not."""
    rng = np.random.default_rng(3)
    way, shot, classes = 5, 4, 10
    prototypes = rng.normal(size=(classes, way)) * 3
    frames, pooled_before, pooled_after = [], [], []
    for e in range(6):
        chosen = rng.permutation(classes)[:way]  # label k is class chosen[k] in episode e
        labels = np.repeat(np.arange(way), shot)
        before = prototypes[chosen[labels]] + 0.1 * rng.normal(size=(way * shot, way))
        after = before[:, rng.permutation(way)]  # the units relabelled for this episode
        ids = np.arange(way * shot) + 100 * e
        frames.append(activations_frame({"head": before}, ids, labels, episode=e))
        frames.append(activations_frame({"head": after}, ids, labels, stage="adapted", episode=e))
        pooled_before.append(before)
        pooled_after.append(after)
    row = cka_study.adaptation_cka(pd.concat(frames, ignore_index=True)).iloc[0]
    pooled = linear_cka(np.concatenate(pooled_before), np.concatenate(pooled_after))
    assert row["cka"] == pytest.approx(1.0, abs=1e-6)
    assert pooled < 0.8


def test_a_layer_without_its_before_rows_or_with_other_images_is_refused() -> None:
    x = np.ones((4, 2)) * np.arange(4)[:, None]
    after = activations_frame({"fc1": x}, np.arange(4), np.zeros(4), stage="adapted", episode=0)
    with pytest.raises(DataError, match="recorded after adaptation but not before"):
        cka_study.episode_cka(after)
    other = activations_frame({"fc1": x}, np.arange(4) + 1, np.zeros(4), stage="meta", episode=0)
    with pytest.raises(DataError, match="images before and after adaptation differ"):
        cka_study.episode_cka(pd.concat([after, other], ignore_index=True))


def test_run_cka_writes_both_stages_and_the_per_episode_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    paths = {}
    for method in ("maml", "baseline"):
        frame, _ = episode_frames(rng, episodes=4)
        paths[method] = tmp_path / f"{method}.parquet"
        write_activations(paths[method], frame)
    table = cka_study.run_cka(
        paths,
        dataset="d",
        seed=3,
        table_out=tmp_path / "cka.parquet",
        methods_png=tmp_path / "methods.png",
        adaptation_png=tmp_path / "adaptation.png",
    )
    stored = pd.read_parquet(tmp_path / "cka.parquet")
    assert list(stored.columns) == list(cka_study.COLUMNS)
    assert (tmp_path / "adaptation.png").stat().st_size > 0
    assert (tmp_path / "methods.png").stat().st_size > 0
    meta = stored[stored["stage"] == "meta"]
    probe = {m: pd.read_parquet(p).query("episode == -1") for m, p in paths.items()}
    expected = cka_matrix(
        {"fc1": np.stack(probe["baseline"]["values"])}, {"fc1": np.stack(probe["maml"]["values"])}
    )
    assert meta["cka"].to_list() == pytest.approx(expected["cka"].to_list())
    assert (meta["episodes"] == 0).all() and meta["low"].isna().all()
    adaptation = stored[stored["stage"] == "adaptation"]
    assert len(adaptation) == 2 * 2  # one row per (model, layer)
    assert (adaptation["episodes"] == 4).all()
    assert list(adaptation["model_a"]) == ["baseline", "baseline", "maml", "maml"]
    long = cka_study.episode_values(stored)
    assert len(long) == 2 * 2 * 4 and set(long["episode"]) == {0, 1, 2, 3}
    means = long.groupby(["model", "layer"])["cka"].mean()
    for row in adaptation.itertuples():
        assert row.cka == pytest.approx(means[(row.model_a, row.layer_a)])
    pd.testing.assert_frame_equal(stored, table, check_dtype=False)
