"""The training, evaluation and summarise jobs: files in, summary files out, the interval,
evaluation settings from the config at evaluation time, and the run table."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch

import mamlscope
from mamlscope.checkpoint import load_checkpoint
from mamlscope.config import train_section
from mamlscope.errors import ConfigError
from mamlscope.evaluate import EvalSettings, run_evaluation
from mamlscope.runs import HYPERPARAMETERS, gather_runs
from mamlscope.train import run_training

METHODS = ("baseline", "maml", "fomaml")


pytestmark = pytest.mark.usefixtures("one_thread")


def train(tiny: dict, folder, method: str, config: dict | None = None, **kw):
    """The training job on the tiny digits, as the rule calls it."""
    kw = {"val_episodes": tiny["val_episodes"], **kw}
    return run_training(
        images=tiny["images"],
        index=tiny["index"],
        meta=tiny["meta"],
        pools=tiny["pools"],
        config=tiny["cfg"] if config is None else config,
        method=method,
        seed=0,
        device="cpu",
        checkpoint=folder / "model.pt",
        metrics=folder / "metrics.parquet",
        progress=False,
        **kw,
    )


def evaluate(tiny: dict, checkpoint, out, method: str, settings: EvalSettings | None = None):
    """The evaluation job, with settings from the dataset's config unless given."""
    return run_evaluation(
        checkpoint=checkpoint,
        images=tiny["images"],
        index=tiny["index"],
        meta=tiny["meta"],
        pools=tiny["pools"],
        test_episodes=tiny["test_episodes"],
        settings=settings or EvalSettings.from_config(tiny["cfg"], method),
        dataset="digits8",
        device="cpu",
        summary_json=out / "evaluation.json",
        summary_parquet=out / "evaluation.parquet",
    )


@pytest.fixture(scope="module")
def runs(tiny_digits, tmp_path_factory) -> dict[str, dict]:
    """Each method trained and evaluated once: its folder and the returned row."""
    out = {}
    for method in METHODS:
        folder = tmp_path_factory.mktemp(method)
        train(tiny_digits, folder, method)
        row = evaluate(tiny_digits, folder / "model.pt", folder, method)
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
    assert summary["config"] == tiny_digits["cfg"]  # the checkpoint's training config
    assert summary["evaluation"] == asdict(EvalSettings.from_config(tiny_digits["cfg"], method))

    table = pd.read_parquet(folder / "evaluation.parquet")
    assert len(table) == 1
    assert "per_episode" not in table.columns and "config" not in table.columns
    assert summary["batchnorm"] == ("running" if method == "baseline" else "transductive")
    for key in ("mean", "ci95", "std", "episodes", "method", "seed", "way", "device", "batchnorm"):
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
    again = evaluate(tiny_digits, folder / "model.pt", tmp_path, "baseline")
    first = json.loads((folder / "evaluation.json").read_text())["per_episode"]
    assert json.loads((tmp_path / "evaluation.json").read_text())["per_episode"] == first
    assert again["test_accuracy"] == runs["baseline"]["row"]["test_accuracy"]


def test_gather_runs_concatenates_rows_and_writes_markdown(runs, tmp_path):
    tables = [runs[m]["folder"] / "evaluation.parquet" for m in reversed(METHODS)]
    out_parquet, out_md = tmp_path / "runs.parquet", tmp_path / "runs.md"
    result = gather_runs(tables, out_parquet, out_md)

    written = pd.read_parquet(out_parquet)
    pd.testing.assert_frame_equal(written, result)
    assert len(written) == len(METHODS)
    # by dataset, then method in its declared display order (not by name), then seed
    assert list(written["method"]) == ["baseline", "maml", "fomaml"]
    single = pd.read_parquet(tables[0])
    assert list(written.columns) == [*single.columns, *HYPERPARAMETERS]
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
        assert len(cells) == 7
        assert (cells[-1] == "") == (method != "baseline")  # plain accuracy: baseline only
        assert cells[4] == ("running" if method == "baseline" else "transductive")


def test_gather_runs_over_two_seeds_keeps_every_row(runs, tmp_path):
    row = pd.read_parquet(runs["maml"]["folder"] / "evaluation.parquet")
    other = row.assign(seed=1, mean=0.5)
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    other.to_parquet(paths[0], index=False)
    row.to_parquet(paths[1], index=False)
    summary = json.loads((runs["maml"]["folder"] / "evaluation.json").read_text())
    for path, seed in zip(paths, (1, 0), strict=True):  # each table's evaluation.json beside it
        path.with_suffix(".json").write_text(json.dumps({**summary, "seed": seed}))
    result = gather_runs(paths, tmp_path / "runs.parquet", tmp_path / "runs.md")
    assert list(result["seed"]) == [0, 1]
    assert result.loc[1, "mean"] == 0.5
    assert len((tmp_path / "runs.md").read_text().splitlines()) == 4


# --- what each job reads ---------------------------------------------------------------


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("method", METHODS)
def test_training_from_its_section_gives_the_same_run(runs, tiny_digits, tmp_path, method):
    """The training section carries everything training reads: the same weights and
    metrics as from the whole dataset config; the checkpoint records `saved_config`."""
    cfg = tiny_digits["cfg"]
    section = train_section(cfg, method)
    assert "finetune_steps" not in section.get("baseline", {})
    assert "fd_epsilon" not in section.get("maml", {})  # maml-fd only
    train(tiny_digits, tmp_path, method, config=section, saved_config=cfg)
    first = weights(runs[method]["folder"] / "model.pt")
    again = weights(tmp_path / "model.pt")
    assert first.keys() == again.keys()
    for name in first:
        assert torch.equal(first[name], again[name]), name
    columns = ["step", "phase", "loss", "accuracy"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(runs[method]["folder"] / "metrics.parquet")[columns],
        pd.read_parquet(tmp_path / "metrics.parquet")[columns],
    )
    assert load_checkpoint(tmp_path / "model.pt").config == cfg


def test_maml_fd_trains_from_its_section(tiny_digits, tmp_path):
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["meta_steps"] = 2
    section = train_section(cfg, "maml-fd")
    assert section["maml"]["fd_epsilon"] == cfg["maml"]["fd_epsilon"]
    result = train(tiny_digits, tmp_path, "maml-fd", config=section)
    assert (result.metrics["phase"] == "train").sum() == 2


def test_evaluation_uses_the_settings_given_not_the_checkpoints(runs, tiny_digits, tmp_path):
    """Editing an evaluation key changes the evaluation of the same checkpoint: the job
    reads its settings from the config at evaluation time."""
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["baseline"]["finetune_steps"] = 1  # the checkpoint's config says 30
    settings = EvalSettings.from_config(cfg, "baseline")
    folder = runs["baseline"]["folder"]
    evaluate(tiny_digits, folder / "model.pt", tmp_path, "baseline", settings)
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    before = json.loads((folder / "evaluation.json").read_text())
    assert summary["evaluation"]["finetune_steps"] == 1
    assert summary["config"]["baseline"]["finetune_steps"] == 30  # the training config
    assert summary["per_episode"] != before["per_episode"]


def test_settings_for_another_method_are_refused(runs, tiny_digits, tmp_path):
    settings = EvalSettings.from_config(tiny_digits["cfg"], "maml")
    with pytest.raises(ConfigError, match="'maml'.*'baseline'"):
        evaluate(tiny_digits, runs["baseline"]["folder"] / "model.pt", tmp_path, "x", settings)
    assert not (tmp_path / "evaluation.json").exists()


def test_eval_settings_from_a_config_and_from_its_section_agree(tiny_digits):
    from mamlscope.config import evaluate_section

    cfg = tiny_digits["cfg"]
    for method in ("baseline", "maml", "maml-fd"):
        whole = EvalSettings.from_config(cfg, method)
        assert EvalSettings.from_config(evaluate_section(cfg, method), method) == whole
    maml = EvalSettings.from_config(cfg, "maml")
    assert (maml.inner_lr, maml.inner_steps, maml.batch) == (0.4, 5, 50)
    assert maml.batchnorm == "transductive" and maml.finetune_steps is None
    base = EvalSettings.from_config(cfg, "baseline")
    assert (base.finetune_steps, base.finetune_lr, base.finetune_all) == (30, 0.05, False)
    assert (base.way, base.shot, base.query, base.batch) == (5, 1, 5, 50)
    with pytest.raises(AttributeError):
        base.way = 3  # type: ignore[misc]  # frozen


def test_eval_settings_of_a_checkpoint_older_than_eval_batchnorm(tiny_digits):
    cfg = copy.deepcopy(tiny_digits["cfg"])
    del cfg["maml"]["eval_batchnorm"]
    assert EvalSettings.from_config(cfg, "maml").batchnorm == "transductive"
    del cfg["maml"]["test_inner_steps"]
    with pytest.raises(ConfigError, match=r"maml\.test_inner_steps"):
        EvalSettings.from_config(cfg, "maml")


def test_eval_batchnorm_reaches_the_maml_evaluation(runs, tiny_digits, tmp_path):
    """`maml.eval_batchnorm` from the settings decides how queries are normalised."""
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["eval_batchnorm"] = "support"
    settings = EvalSettings.from_config(cfg, "maml")
    assert settings.batchnorm == "support"
    evaluate(tiny_digits, runs["maml"]["folder"] / "model.pt", tmp_path, "maml", settings)
    summary = json.loads((tmp_path / "evaluation.json").read_text())
    before = json.loads((runs["maml"]["folder"] / "evaluation.json").read_text())
    assert summary["evaluation"]["batchnorm"] == summary["batchnorm"] == "support"
    assert before["evaluation"]["batchnorm"] == before["batchnorm"] == "transductive"
    assert summary["per_episode"] != before["per_episode"]


def test_maml_training_needs_its_val_episodes(tiny_digits, tmp_path):
    with pytest.raises(ConfigError, match="val_episodes"):
        train(tiny_digits, tmp_path, "maml", val_episodes=None)


@pytest.mark.slow
def test_evaluation_does_not_import_training():
    """One home per stage: the evaluation job needs runtime and evaluate, not train."""
    code = "import sys, mamlscope.evaluate; print('mamlscope.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
