"""runs.parquet carries each run's key hyperparameters, read from its evaluation.json, so
runs of different settings can be told apart and selected in pandas."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from mamlscope.config import validate_config
from mamlscope.errors import DataError
from mamlscope.evaluate import EvalSettings
from mamlscope.io import write_json
from mamlscope.runs import HYPERPARAMETERS, gather_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset_config() -> dict[str, Any]:
    """tests/tiny.yaml's dataset, resolved (what a checkpoint stores as its config)."""
    cfg = validate_config(
        yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()), check_paths=False
    )
    return cfg["datasets"]["digits8"]


def write_run(
    root: Path,
    ds: dict[str, Any],
    method: str,
    seed: int = 0,
    settings: EvalSettings | None = None,
    **summary: Any,
) -> Path:
    """A run folder as the evaluate job leaves it: evaluation.parquet (the row) and
    evaluation.json (row, per-episode accuracies, training config, evaluation settings)."""
    settings = settings or EvalSettings.from_config(ds, method)
    folder = root / "digits8" / method / f"seed{seed}"
    folder.mkdir(parents=True)
    row = {
        "dataset": "digits8",
        "method": method,
        "seed": seed,
        "way": settings.way,
        "shot": settings.shot,
        "query": settings.query,
        "batchnorm": settings.batchnorm_used,
        "mean": 0.5,
        "ci95": 0.05,
        "test_accuracy": 0.4 if method == "baseline" else float("nan"),
    }
    pd.DataFrame([row]).to_parquet(folder / "evaluation.parquet", index=False)
    full = {**row, "per_episode": [0.5, 0.5], "config": ds, "evaluation": asdict(settings)}
    write_json(folder / "evaluation.json", {**full, **summary})
    return folder / "evaluation.parquet"


def test_each_run_carries_the_hyperparameters_its_method_reads(dataset_config, tmp_path):
    ds = dataset_config
    longer = copy.deepcopy(ds)
    longer["maml"]["meta_steps"] = 7
    tables = [
        write_run(tmp_path, ds, "baseline"),
        write_run(tmp_path, ds, "maml"),
        write_run(tmp_path, longer, "maml", seed=1),
    ]
    runs = gather_runs(tables, tmp_path / "runs.parquet", tmp_path / "runs.md")
    written = pd.read_parquet(tmp_path / "runs.parquet")
    pd.testing.assert_frame_equal(written, runs)
    assert set(HYPERPARAMETERS) <= set(written.columns)

    base = written[written["method"] == "baseline"].iloc[0]
    assert (base["lr"], base["epochs"], base["batch_size"]) == (
        ds["baseline"]["lr"],
        ds["baseline"]["epochs"],
        ds["baseline"]["batch_size"],
    )
    assert base["finetune_steps"] == ds["baseline"]["finetune_steps"]
    for meta_only in ("meta_lr", "meta_steps", "meta_batch", "inner_lr", "eval_batchnorm"):
        assert pd.isna(base[meta_only]), meta_only  # standard training reads none of these

    maml = written[written["method"] == "maml"].set_index("seed")
    assert list(maml["meta_steps"]) == [ds["maml"]["meta_steps"], 7]
    assert maml.loc[0, "meta_batch"] == ds["maml"]["meta_batch"]
    assert maml.loc[0, "meta_lr"] == ds["maml"]["meta_lr"]
    assert maml.loc[0, "train_inner_steps"] == ds["maml"]["inner_steps"]
    assert maml.loc[0, "test_inner_steps"] == ds["maml"]["test_inner_steps"]
    assert maml.loc[0, "eval_batchnorm"] == ds["maml"]["eval_batchnorm"]
    assert pd.isna(maml.loc[0, "lr"]) and pd.isna(maml.loc[0, "epochs"])

    for _, run in written.iterrows():  # what every run has
        assert run["arch"] == ds["model"]["arch"]
        assert json.loads(run["hidden"]) == ds["model"]["hidden"]
        assert run["protocol"] == ds["split"]["protocol"]
        assert run["split_seed"] == ds["split"]["seed"]

    # the runs of different settings are told apart by a query
    picked = written.query("method == 'maml' and meta_steps > 5")
    assert list(picked["seed"]) == [1]


def test_evaluation_settings_come_from_the_evaluation_not_the_training_config(
    dataset_config, tmp_path
):
    """Evaluation keys may be edited and re-evaluated without retraining: the columns say
    what the evaluation used."""
    settings = replace(
        EvalSettings.from_config(dataset_config, "maml"), inner_steps=9, batchnorm="support"
    )
    table = write_run(tmp_path, dataset_config, "maml", settings=settings)
    runs = gather_runs([table], tmp_path / "runs.parquet", tmp_path / "runs.md")
    assert runs.loc[0, "test_inner_steps"] == 9
    assert runs.loc[0, "eval_batchnorm"] == "support"
    assert runs.loc[0, "train_inner_steps"] == dataset_config["maml"]["inner_steps"]


def test_an_older_evaluation_without_settings_gives_null_columns(dataset_config, tmp_path):
    table = write_run(tmp_path, dataset_config, "maml", config=None, evaluation=None)
    runs = gather_runs([table], tmp_path / "runs.parquet", tmp_path / "runs.md")
    assert runs[list(HYPERPARAMETERS)].isna().all(axis=None)
    assert runs.loc[0, "mean"] == 0.5


def test_an_evaluation_of_another_run_is_refused(dataset_config, tmp_path):
    baseline = write_run(tmp_path, dataset_config, "baseline")
    maml = write_run(tmp_path, dataset_config, "maml")
    with pytest.raises(DataError, match="is the evaluation of digits8/maml/0, not of"):
        gather_runs(
            [baseline],
            tmp_path / "runs.parquet",
            tmp_path / "runs.md",
            evaluations=[maml.with_suffix(".json")],
        )
    assert not (tmp_path / "runs.parquet").exists()
