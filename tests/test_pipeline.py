"""The evaluate and summarise jobs: summary files, the interval, and the run table."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import mamlscope
from mamlscope.pipeline import gather_runs, run_evaluation
from mamlscope.train import run_training

METHODS = ("baseline", "maml", "fomaml")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tiny_digits, tmp_path_factory) -> dict[str, dict]:
    """Each method trained and evaluated once: its folder and the returned row."""
    out = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method)
        run_training(
            data_dir=tiny_digits["data_dir"],
            split_dir=tiny_digits["split_dir"],
            ds_cfg=tiny_digits["cfg"],
            method=method,
            seed=0,
            device="cpu",
            checkpoint=folder / "model.pt",
            metrics=folder / "metrics.parquet",
            progress=False,
        )
        row = run_evaluation(
            checkpoint=folder / "model.pt",
            data_dir=tiny_digits["data_dir"],
            split_dir=tiny_digits["split_dir"],
            dataset="digits8",
            device="cpu",
            summary_json=folder / "evaluation.json",
            summary_parquet=folder / "evaluation.parquet",
        )
        out[method] = {"folder": folder, "row": row}
    return out


def test_only_the_summary_files_appear(runs):
    names = {p.name for p in runs["maml"]["folder"].iterdir()}
    assert names == {"model.pt", "metrics.parquet", "evaluation.json", "evaluation.parquet"}


@pytest.mark.parametrize("method", METHODS)
def test_evaluation_json_and_parquet(runs, tiny_digits, method):
    folder, row = runs[method]["folder"], runs[method]["row"]
    test_episodes = pd.read_parquet(tiny_digits["split_dir"] / "episodes_test.parquet")
    n = test_episodes["episode"].nunique()
    assert n == tiny_digits["cfg"]["episodes"]["test_episodes"]

    summary = json.loads((folder / "evaluation.json").read_text())
    per_episode = np.asarray(summary["per_episode"])
    assert len(per_episode) == n
    query = tiny_digits["cfg"]["episodes"]["way"] * tiny_digits["cfg"]["episodes"]["query"]
    assert np.allclose(per_episode * query, np.round(per_episode * query))  # hits / queries
    assert per_episode.min() >= 0 and per_episode.max() <= 1
    assert summary["episodes"] == n
    assert summary["mean"] == pytest.approx(per_episode.mean())
    assert summary["std"] == pytest.approx(per_episode.std(ddof=1))
    assert summary["ci95"] == pytest.approx(1.96 * per_episode.std(ddof=1) / math.sqrt(n))
    assert summary["ci95"] > 0  # the episodes do not all score alike
    assert summary["method"] == method and summary["seed"] == 0
    assert summary["dataset"] == "digits8"
    assert (summary["way"], summary["shot"], summary["query"]) == (5, 1, 5)
    assert summary["version"] == mamlscope.__version__
    assert summary["config"] == tiny_digits["cfg"]

    table = pd.read_parquet(folder / "evaluation.parquet")
    assert len(table) == 1
    assert "per_episode" not in table.columns and "config" not in table.columns
    for key in ("mean", "ci95", "std", "episodes", "method", "seed", "way", "device"):
        value = table.loc[0, key]
        if isinstance(value, float):
            assert value == pytest.approx(summary[key])
        else:
            assert value == summary[key], key
        assert row[key] == summary[key] or row[key] == pytest.approx(summary[key])
    plain = table.loc[0, "test_accuracy"]
    assert np.isnan(plain) if method != "baseline" else 0 < plain <= 1


def test_evaluation_repeats_exactly(runs, tiny_digits, tmp_path):
    """The same checkpoint on the same fixed episodes gives the same numbers."""
    folder = runs["baseline"]["folder"]
    again = run_evaluation(
        checkpoint=folder / "model.pt",
        data_dir=tiny_digits["data_dir"],
        split_dir=tiny_digits["split_dir"],
        dataset="digits8",
        device="cpu",
        summary_json=tmp_path / "e.json",
        summary_parquet=tmp_path / "e.parquet",
    )
    first = json.loads((folder / "evaluation.json").read_text())["per_episode"]
    assert json.loads((tmp_path / "e.json").read_text())["per_episode"] == first
    assert again["test_accuracy"] == runs["baseline"]["row"]["test_accuracy"]


def test_gather_runs_concatenates_rows_and_writes_markdown(runs, tmp_path):
    tables = [runs[m]["folder"] / "evaluation.parquet" for m in METHODS]
    out_parquet, out_md = tmp_path / "runs.parquet", tmp_path / "runs.md"
    result = gather_runs(tables, out_parquet, out_md)

    written = pd.read_parquet(out_parquet)
    pd.testing.assert_frame_equal(written, result)
    assert len(written) == len(METHODS)
    assert list(written["method"]) == sorted(METHODS)  # sorted by dataset, method, seed
    single = pd.read_parquet(tables[0])
    assert list(written.columns) == list(single.columns)
    by_method = written.set_index("method")
    for method in METHODS:
        assert by_method.loc[method, "mean"] == pytest.approx(runs[method]["row"]["mean"])

    lines = out_md.read_text().splitlines()
    assert lines[0].startswith("| dataset | method |")
    assert set(lines[1].replace(" ", "")) <= set("|-")
    body = lines[2:]
    assert len(body) == len(METHODS)
    for method in METHODS:
        (line,) = [x for x in body if f"| {method} |" in x]
        mean = 100 * runs[method]["row"]["mean"]
        assert "| digits8 |" in line and "5-way 1-shot" in line
        assert f"{mean:.2f} +- " in line
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6
        assert (cells[-1] == "") == (method != "baseline")  # plain accuracy: baseline only


def test_gather_runs_over_two_seeds_keeps_every_row(runs, tmp_path):
    row = pd.read_parquet(runs["maml"]["folder"] / "evaluation.parquet")
    other = row.assign(seed=1, mean=0.5)
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    other.to_parquet(paths[0], index=False)
    row.to_parquet(paths[1], index=False)
    result = gather_runs(paths, tmp_path / "runs.parquet", tmp_path / "runs.md")
    assert list(result["seed"]) == [0, 1]
    assert result.loc[1, "mean"] == 0.5
    assert len((tmp_path / "runs.md").read_text().splitlines()) == 4
