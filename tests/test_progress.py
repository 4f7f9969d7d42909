"""Progress in the jobs' logs, as training has it (`mamlscope.train_log.progress`: a line
every 30 s in a log file): evaluation, activation extraction, the figure jobs and the
analyses, each run as its rule runs it inside `mamlscope.logs.logged` on the tiny digits."""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import pytest
import torch
from job_tools import evaluate_job, extract_job, train_job
from tqdm import tqdm

from mamlscope.analyses.run import run_analyses
from mamlscope.config import evaluate_section
from mamlscope.evaluate import EvalSettings, counted
from mamlscope.features.extract import write_probe
from mamlscope.features.plots import plot_model_features
from mamlscope.logs import logged


def batch(episodes: int) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(episodes, 5, 1), torch.zeros(episodes, 5), torch.zeros(1), torch.zeros(1))


def test_counted_adds_each_batch_once_it_is_done():
    bar = tqdm(total=8, file=io.StringIO())
    stream = counted([batch(3), batch(3), batch(2)], bar)
    next(stream)
    assert bar.n == 0  # the first batch is still being worked on
    next(stream)
    assert bar.n == 3
    assert sum(1 for _ in stream) == 1 and bar.n == 8


@pytest.fixture(scope="module")
def trained(tiny_digits, tmp_path_factory) -> dict:
    """A maml run of two meta-steps and its probe set."""
    folder = tmp_path_factory.mktemp("progress")
    cfg = copy.deepcopy(tiny_digits["cfg"])
    cfg["maml"]["meta_steps"] = 2
    train_job(tiny_digits, cfg, "maml", folder)
    probe = folder / "probe.parquet"
    write_probe(tiny_digits["index"], tiny_digits["pools"], images=20, seed=0, out=probe)
    settings = EvalSettings.from_config(evaluate_section(cfg, "maml"), "maml")
    files = {k: tiny_digits[k] for k in ("images", "index", "meta")}
    return {"folder": folder, "probe": probe, "settings": settings, "files": files}


def final_line(log: Path, desc: str) -> str:
    """The last state the progress bar ``desc`` wrote to the log (tqdm rewrites its line
    with carriage returns)."""
    text = log.read_text()
    states = [part for part in re.split(r"[\r\n]", text) if part.startswith(desc)]
    assert states, f"no progress line {desc!r} in the log:\n{text}"
    return states[-1]


def test_evaluation_logs_its_progress(trained, tiny_digits, tmp_path):
    log = tmp_path / "evaluate.log"
    with logged(log):
        evaluate_job(tiny_digits, trained["folder"], trained["settings"], out=tmp_path)
    episodes = tiny_digits["cfg"]["episodes"]["test_episodes"]
    assert "100%" in final_line(log, "evaluate digits8 maml seed 0")
    assert f"{episodes}/{episodes}" in final_line(log, "evaluate digits8 maml seed 0")


@pytest.fixture(scope="module")
def extraction(trained, tiny_digits, tmp_path_factory) -> dict[str, Path]:
    """Activations of the trained run on its probe (3 adapted episodes), and the job's log."""
    folder = tmp_path_factory.mktemp("extraction")
    log, out = folder / "extract.log", folder / "activations.parquet"
    with logged(log):
        extract_job(tiny_digits, trained["folder"], trained["settings"], trained["probe"], out, 3)
    return {"log": log, "activations": out}


def test_extraction_logs_its_progress(extraction):
    assert "3/3" in final_line(extraction["log"], "extract maml seed 0")


def test_figure_job_logs_its_progress(trained, extraction, tmp_path):
    log = tmp_path / "plot.log"
    with logged(log):
        plot_model_features(
            checkpoint=trained["folder"] / "model.pt",
            **trained["files"],
            probe=trained["probe"],
            activations=extraction["activations"],
            metrics=trained["folder"] / "metrics.parquet",
            features={"neurons": None},  # all that the curves study reads
            title="digits8 maml",
            out={"curves": tmp_path / "curves.png"},
        )
    assert "1/1" in final_line(log, "figures digits8 maml")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_analyses_log_the_episodes_they_adapted(trained, tiny_digits, tmp_path):
    log = tmp_path / "analyze.log"
    with logged(log):
        table = run_analyses(
            checkpoint=trained["folder"] / "model.pt",
            **trained["files"],
            test_episodes=tiny_digits["test_episodes"],
            settings=trained["settings"],
            analyses={"batchnorm": ["support"], "steps": [0], "episodes": 7},
            protocol="examples",
            dataset="digits8",
            device="cpu",
            out=tmp_path / "analyses.parquet",
        )
    found = re.match(r".*?: (\d+)episode", final_line(log, "analyze digits8 maml seed 0"))
    assert found, "no episode count in the analyses' progress line"
    # every analysis passes over the same 7 episodes: the bar counts each pass
    passes = table.groupby(["analysis", "setting", "batchnorm"]).ngroups
    assert int(found.group(1)) >= 7 * 2 and int(found.group(1)) % 7 == 0
    assert int(found.group(1)) <= 7 * passes
