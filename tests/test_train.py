"""Training on a tiny real dataset: bit-identical repeats, learning, metrics, config errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mamlscope.errors import ConfigError
from mamlscope.evaluate import EvalSettings, run_evaluation
from mamlscope.methods import method_names
from mamlscope.runtime import resolve_device
from mamlscope.train import run_training, train_maml

METHODS = method_names()  # every registered method, so a new one is tested too


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a shared CPU makes them spin for seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train(tiny: dict, out: Path, method: str, seed: int, cfg: dict | None = None):
    """Run one training job into `out`; return the result and the checkpoint path."""
    checkpoint = out / "model.pt"
    result = run_training(
        images=tiny["images"],
        index=tiny["index"],
        meta=tiny["meta"],
        pools=tiny["pools"],
        val_episodes=tiny["val_episodes"],
        config=cfg or tiny["cfg"],
        method=method,
        seed=seed,
        device="cpu",
        checkpoint=checkpoint,
        metrics=out / "metrics.parquet",
        progress=False,
    )
    return result, checkpoint


def evaluate(tiny: dict, checkpoint: Path, out: Path, method: str, cfg: dict | None = None):
    """Run the evaluation job on `checkpoint` into `out`; return its row."""
    return run_evaluation(
        checkpoint=checkpoint,
        images=tiny["images"],
        index=tiny["index"],
        meta=tiny["meta"],
        pools=tiny["pools"],
        test_episodes=tiny["test_episodes"],
        settings=EvalSettings.from_config(cfg or tiny["cfg"], method),
        dataset="digits8",
        device="cpu",
        summary_json=out / "evaluation.json",
        summary_parquet=out / "evaluation.parquet",
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(
    tiny_digits, tmp_path, method
):
    _, first = train(tiny_digits, tmp_path / "a", method, seed=3)
    _, again = train(tiny_digits, tmp_path / "b", method, seed=3)
    _, other = train(tiny_digits, tmp_path / "c", method, seed=4)
    a, b, c = weights(first), weights(again), weights(other)
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{method}: {name} differs between equal seeds"
    trainable = [n for n in a if n.endswith(("weight", "bias"))]
    assert any(not torch.equal(a[n], c[n]) for n in trainable), f"{method}: seed ignored"
    # The losses repeat too (elapsed time of course does not).
    ma = pd.read_parquet(tmp_path / "a" / "metrics.parquet")
    mb = pd.read_parquet(tmp_path / "b" / "metrics.parquet")
    cols = ["step", "phase", "loss", "accuracy"]
    pd.testing.assert_frame_equal(ma[cols], mb[cols])


def test_more_meta_steps_move_the_weights_further(tiny_digits, tmp_path):
    """Guards the determinism test: equal weights must not come from a no-op training."""
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["meta_steps"] = 1
    _, short = train(tiny_digits, tmp_path / "short", "maml", seed=0, cfg=cfg)
    _, full = train(tiny_digits, tmp_path / "full", "maml", seed=0)
    a, b = weights(short), weights(full)
    assert all(not torch.equal(a[n], b[n]) for n in a if n.endswith("weight"))


# --- learning ----------------------------------------------------------------------------


def test_maml_lowers_the_meta_loss_and_beats_chance(tiny_digits, tmp_path):
    result, path = train(tiny_digits, tmp_path, "maml", seed=0)
    train_rows = result.metrics[result.metrics["phase"] == "train"]
    assert len(train_rows) == tiny_digits["cfg"]["maml"]["meta_steps"]
    first, last = train_rows["loss"].head(5).mean(), train_rows["loss"].tail(5).mean()
    assert last < 0.8 * first, (first, last)
    row = evaluate(tiny_digits, path, tmp_path, "maml")
    chance = 1 / tiny_digits["cfg"]["episodes"]["way"]
    assert row["method"] == "maml"
    assert row["mean"] - row["ci95"] > chance + 0.3, row  # measured about 0.87
    assert np.isnan(row["test_accuracy"])  # MAML heads are per episode: no plain accuracy


def test_baseline_beats_chance_on_plain_and_episode_accuracy(tiny_digits, tmp_path):
    result, path = train(tiny_digits, tmp_path, "baseline", seed=0)
    train_rows = result.metrics[result.metrics["phase"] == "train"]
    assert train_rows["loss"].tail(5).mean() < 0.5 * train_rows["loss"].head(5).mean()
    row = evaluate(tiny_digits, path, tmp_path, "baseline")
    assert result.spec.num_classes == 10  # every digit is in the train pool (examples)
    assert row["test_accuracy"] > 0.1 + 0.5, row  # 10 classes; measured about 0.91
    chance = 1 / tiny_digits["cfg"]["episodes"]["way"]
    assert row["mean"] - row["ci95"] > chance + 0.3, row  # measured about 0.92


# --- metrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["baseline", "maml"])
def test_metrics_table_columns_and_validation_rows(tiny_digits, tmp_path, method):
    cfg = tiny_digits["cfg"]
    train(tiny_digits, tmp_path, method, seed=7)
    metrics = pd.read_parquet(tmp_path / "metrics.parquet")
    assert list(metrics.columns) == [
        "step",
        "phase",
        "loss",
        "accuracy",
        "elapsed_s",
        "method",
        "seed",
    ]
    assert set(metrics["method"]) == {method}
    assert set(metrics["seed"]) == {7}
    assert set(metrics["phase"]) == {"train", "val"}
    val = metrics[metrics["phase"] == "val"]
    train_rows = metrics[metrics["phase"] == "train"]
    if method == "maml":
        assert list(val["step"]) == [20, 40]  # every val_every steps and at the last
        assert list(train_rows["step"]) == list(range(1, cfg["maml"]["meta_steps"] + 1))
    else:
        assert len(val) == cfg["baseline"]["epochs"]  # one per epoch
        assert val["loss"].notna().all()
        assert train_rows["step"].is_monotonic_increasing
    assert val["accuracy"].between(0, 1).all()
    assert train_rows["accuracy"].between(0, 1).all()
    assert train_rows["loss"].notna().all() and (train_rows["loss"] > 0).all()
    assert metrics["elapsed_s"].is_monotonic_increasing
    assert (metrics["elapsed_s"] >= 0).all()


# --- configuration errors ----------------------------------------------------------------


def test_unknown_method_is_a_config_error_naming_it(tiny_digits, tmp_path):
    with pytest.raises(ConfigError, match="reptile"):
        train(tiny_digits, tmp_path, "reptile", seed=0)
    assert not (tmp_path / "model.pt").exists()
    assert not (tmp_path / "metrics.parquet").exists()


def test_train_maml_refuses_a_method_that_is_not_a_maml_flavour(tiny_digits):
    from mamlscope.data.prepared import PreparedDataset

    data = PreparedDataset.load(tiny_digits["data_dir"])
    pools = pd.read_parquet(tiny_digits["split_dir"] / "pools.parquet")
    with pytest.raises(ConfigError, match="baseline"):
        train_maml(
            data,
            pools,
            pools.iloc[:0],
            tiny_digits["cfg"],
            "baseline",
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_config_error(tiny_digits, tmp_path):
    with pytest.raises(ConfigError, match="cuda"):
        resolve_device("cuda")
    cfg = copy.deepcopy(tiny_digits["cfg"])
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run_training(
            images=tiny_digits["images"],
            index=tiny_digits["index"],
            meta=tiny_digits["meta"],
            pools=tiny_digits["pools"],
            val_episodes=tiny_digits["val_episodes"],
            config=cfg,
            method="maml",
            seed=0,
            device="cuda",
            checkpoint=tmp_path / "model.pt",
            metrics=tmp_path / "metrics.parquet",
            progress=False,
        )
    assert not (tmp_path / "model.pt").exists()


def test_auto_device_is_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_baseline_trains_on_disjoint_classes_protocol(tiny_digits, tmp_path):
    """Protocol `classes`: the baseline's head covers only the meta-train classes, and its
    validation holds out train images (the val pool's classes are unseen)."""
    from mamlscope.data.splits import write_split

    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["split"] = {"protocol": "classes", "train": 6, "val": 2, "keep_groups": False}
    cfg["episodes"] = {**cfg["episodes"], "way": 2}
    index = pd.read_parquet(Path(tiny_digits["data_dir"]) / "index.parquet")
    split_dir = tmp_path / "split"
    write_split(index, cfg["split"], cfg["episodes"], 0, split_dir)
    tiny = {
        **tiny_digits,
        "pools": split_dir / "pools.parquet",
        "val_episodes": split_dir / "episodes_val.parquet",
        "test_episodes": split_dir / "episodes_test.parquet",
    }
    result, checkpoint = train(tiny, tmp_path / "run", "baseline", 0, cfg)
    assert result.spec.num_classes == 6
    val = result.metrics[result.metrics["phase"] == "val"]
    assert len(val) == cfg["baseline"]["epochs"]
    assert val["accuracy"].iloc[-1] > 0.5  # chance is 1/6
    row = evaluate(tiny, checkpoint, tmp_path, "baseline", cfg)
    assert np.isnan(row["test_accuracy"])  # test classes were never seen
    assert row["episodes"] == cfg["episodes"]["test_episodes"]
