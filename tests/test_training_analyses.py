"""The analyses over training (mamlscope.analyses.run.analyze_snapshots and
mamlscope.analyses.training_cka): a snapshot is analysed exactly as the final model is, its
rows carry its fraction of training, and CKA over training is the feature studies' CKA."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from job_tools import train_job
from test_analyses import inner_settings, make_batches, meta_model

from mamlscope.analyses import (
    AnalysisSettings,
    analyze_model,
    analyze_snapshots,
    freeze_settings,
    gather_training_cka,
    run_analyses,
)
from mamlscope.analyses.training_cka import COLUMNS as CKA_COLUMNS
from mamlscope.analyses.training_cka import cka_episodes, training_cka
from mamlscope.checkpoint import load_checkpoint
from mamlscope.config import evaluate_section
from mamlscope.evaluate import EvalSettings
from mamlscope.features.activations import read_activations
from mamlscope.features.cka_study import episode_cka
from mamlscope.features.extract import extract_activations, write_probe
from mamlscope.methods import method
from mamlscope.snapshots import load_snapshots

KEYS = ["analysis", "setting", "batchnorm", "episode"]


def analysed(name: str, model, batches) -> pd.DataFrame:
    return analyze_model(
        model,
        method(name),
        lambda: iter(batches),
        inner_settings(name),
        AnalysisSettings(steps=(0, 1)),
        episode_ids=list(range(6)),
        seed=0,
        train_inner_steps=1,
    )


@pytest.mark.parametrize("name", ["maml", "anil", "boil"])
def test_the_final_weights_through_the_snapshot_path_give_the_main_paths_rows(name: str):
    model, batches = meta_model(), make_batches()
    main = analysed(name, model, batches)
    found = analyze_snapshots(
        [(0.5, model), (1.0, model)],  # the final weights are left to the main path
        method(name),
        lambda: iter(batches),
        inner_settings(name),
        AnalysisSettings(steps=(0, 1)),
        episode_ids=list(range(6)),
        seed=0,
    )
    assert [f for f, _ in found] == [0.5]
    rows = found[0][1]
    # What a verdict needs: every freeze setting, the own adaptation at the test steps (3),
    # nearest centroid; in each mode, on every episode.
    cells = {("freeze", s) for s, _ in freeze_settings(model)}
    assert set(zip(rows["analysis"], rows["setting"], strict=True)) == cells | {
        ("steps", "3"),
        ("centroid", "penultimate"),
    }
    assert len(rows) == (len(cells) + 2) * 2 * 6
    merged = rows.merge(main, on=KEYS, how="left", suffixes=("", "_main"), validate="1:1")
    assert merged["accuracy_main"].notna().all()
    assert np.array_equal(merged["accuracy"], merged["accuracy_main"])


def test_a_method_without_an_inner_loop_has_no_snapshot_rows():
    found = analyze_snapshots(
        [(0.5, meta_model())],
        method("baseline"),
        lambda: iter(make_batches()),
        EvalSettings(
            method="baseline", way=3, shot=2, query=4, batch=4, finetune_steps=2, finetune_lr=0.1
        ),  # fmt: skip
        AnalysisSettings(),
        episode_ids=list(range(6)),
        seed=0,
    )
    assert found == []


# --- the analyze job on trained runs --------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_digits, tmp_path_factory):
    """A baseline and a MAML run (3 meta-steps, 3 snapshots), analysed by the job."""
    root = tmp_path_factory.mktemp("training_analyses")
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"].update(meta_steps=3, snapshots=3)
    files = {k: tiny_digits[k] for k in ("images", "index", "meta")}
    out = {}
    for name in ("baseline", "maml"):
        folder = root / name
        train_job(tiny_digits, cfg, name, folder, seed=2, snapshots=True)
        settings = EvalSettings.from_config(evaluate_section(cfg, name), name)
        table = run_analyses(
            checkpoint=folder / "model.pt",
            **files,
            test_episodes=tiny_digits["test_episodes"],
            settings=settings,
            analyses={
                "batchnorm": ["support"],
                "steps": [0],
                "episodes": 7,
                "snapshot_episodes": 4,
            },  # fmt: skip
            protocol="examples",
            dataset="digits8",
            device="cpu",
            out=folder / "analyses.parquet",
            snapshots=folder / "snapshots.pt",
            cka_out=folder / "training_cka.parquet",
            adapt_episodes=2,
        )
        out[name] = dict(folder=folder, table=table, settings=settings)
    return out


def test_snapshot_rows_carry_their_fraction_of_training(runs, tiny_digits):
    table = runs["maml"]["table"]
    assert pd.read_parquet(runs["maml"]["folder"] / "analyses.parquet").equals(table)
    assert sorted(table["snapshot"].unique()) == pytest.approx([1 / 3, 2 / 3, 1.0])
    episodes = np.unique(pd.read_parquet(tiny_digits["test_episodes"])["episode"])
    final = table[table["snapshot"] == 1.0]
    assert sorted(final["episode"].unique()) == list(episodes[:7])
    assert set(final.loc[final["analysis"] == "steps", "setting"]) == {"0", "1", "5"}
    for fraction in (1 / 3, 2 / 3):
        rows = table[np.isclose(table["snapshot"], fraction)]
        assert sorted(rows["episode"].unique()) == list(episodes[:4])  # snapshot_episodes
        assert set(rows["analysis"]) == {"freeze", "steps", "centroid"}
        assert set(rows.loc[rows["analysis"] == "steps", "setting"]) == {"5"}  # test steps
        assert set(rows["setting"]) - {"5", "penultimate"} == set(
            final.loc[final["analysis"] == "freeze", "setting"]
        )
    # The standard-trained run keeps only its final weights: nothing over training.
    assert set(runs["baseline"]["table"]["snapshot"]) == {1.0}


def test_the_last_snapshot_is_the_final_model_and_analyses_like_it(runs, tiny_digits):
    folder = runs["maml"]["folder"]
    ckpt = load_checkpoint(folder / "model.pt", torch.device("cpu"))
    fraction, last = load_snapshots(folder / "snapshots.pt", ckpt)[-1]
    assert fraction == 1.0
    for key, value in ckpt.model.state_dict().items():
        assert torch.equal(last.state_dict()[key], value), key


def test_cka_over_training_is_the_feature_studies_cka_per_episode(runs, tiny_digits, tmp_path):
    folder = runs["maml"]["folder"]
    cka = pd.read_parquet(folder / "training_cka.parquet")
    assert {c: str(t) for c, t in cka.dtypes.items()} == CKA_COLUMNS
    assert sorted(cka["snapshot"].unique()) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert set(cka["episode"]) == {0, 1}  # the first adapt_episodes test episodes
    assert list(dict.fromkeys(cka["layer"])) == ["fc1", "bn1", "relu1", "fc2", "bn2", "relu2",
                                                 "head"]  # fmt: skip
    # The final weights: what the feature studies record and compute, episode by episode.
    probe = write_probe(
        tiny_digits["index"], tiny_digits["pools"], images=20, seed=0, out=tmp_path / "p.parquet"
    )
    assert len(probe) == 20
    extract_activations(
        checkpoint=folder / "model.pt",
        **{k: tiny_digits[k] for k in ("images", "index", "meta")},
        probe=tmp_path / "p.parquet",
        test_episodes=tiny_digits["test_episodes"],
        settings=runs["maml"]["settings"],
        adapt_episodes=2,
        device="cpu",
        out=tmp_path / "activations.parquet",
    )
    expected = episode_cka(read_activations(tmp_path / "activations.parquet"))
    mine = cka[cka["snapshot"] == 1.0][["layer", "episode", "cka"]].reset_index(drop=True)
    # Equal up to float32 rounding: evaluation batches the episodes' inner loops (vmap), the
    # feature studies adapt one episode at a time.
    pd.testing.assert_frame_equal(mine, expected, check_exact=False, rtol=1e-6, atol=1e-7)
    # Adaptation moves the layers differently early and late in training.
    early = cka[np.isclose(cka["snapshot"], 1 / 3)]["cka"].to_numpy()
    assert not np.allclose(early, mine.sort_values(["episode"])["cka"].to_numpy())


def test_a_snapshots_cka_is_that_models_cka(runs, tiny_digits):
    folder = runs["maml"]["folder"]
    ckpt = load_checkpoint(folder / "model.pt", torch.device("cpu"))
    snapshots = load_snapshots(folder / "snapshots.pt", ckpt)
    table = pd.read_parquet(tiny_digits["test_episodes"])
    from mamlscope.model_job import open_model_job

    job = open_model_job(
        checkpoint=folder / "model.pt",
        **{k: tiny_digits[k] for k in ("images", "index", "meta")},
        device="cpu",
    )
    fraction, model = snapshots[0]
    alone = training_cka(
        [(fraction, model)], method("maml"), runs["maml"]["settings"], cka_episodes(table, 2),
        job.images,
    )  # fmt: skip
    stored = pd.read_parquet(folder / "training_cka.parquet")
    stored = stored[stored["snapshot"] == fraction][["snapshot", "layer", "episode", "cka"]]
    pd.testing.assert_frame_equal(alone.reset_index(drop=True), stored.reset_index(drop=True))


def test_cka_over_training_gathers_and_the_baseline_has_none(runs, tmp_path):
    paths = [runs[n]["folder"] / "training_cka.parquet" for n in ("baseline", "maml")]
    assert pd.read_parquet(paths[0]).empty
    gathered = gather_training_cka(paths, tmp_path / "training_cka.parquet")
    assert set(gathered["method"]) == {"maml"} and set(gathered["seed"]) == {2}
    assert pd.read_parquet(tmp_path / "training_cka.parquet").equals(gathered)
    none = gather_training_cka(paths[:1], tmp_path / "none.parquet")
    assert none.empty and list(none.columns) == list(CKA_COLUMNS)
