"""`mamlscope results-doc` on a synthetic results tree: every printed number recomputed here
from the per-episode table, the block written between its markers only, clear errors."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats
from test_findings import config_for
from test_verdicts import TEST_STEPS, adapting, episodes_table
from workflow_tools import TINY_RESULTS

from mamlscope import __version__
from mamlscope.cli import main
from mamlscope.errors import DataError
from mamlscope.report.results import load_results
from mamlscope.report.results_doc import (
    DocError,
    cpu_model,
    machine_line,
    markers,
    read_block,
    require_results,
    results_block,
    write_block,
)
from mamlscope.report.verdicts import REUSE, rapid_from

METHODS = ("baseline", "maml")
# Two datasets, test classes seen (protocol examples) and unseen (classes); maml adapting
# its body in the one and reusing features in the other.
DATASETS = {
    "seen": ("examples", adapting({"from fc1": -0.01, "body": -0.01}, full=0.02)),
    "unseen": ("classes", adapting({"from fc1": 0.06, "from bn1": 0.06}, full=0.06)),
}
EPISODES = 40


def write_tree(root: Path) -> tuple[Path, dict, pd.DataFrame]:
    """runs.parquet, episodes.parquet and every run's evaluation.json, metrics.parquet and
    its dataset's pools.parquet, as the workflow writes them; returns the root, the
    resolved config and the per-episode table."""
    config = config_for({name: protocol for name, (protocol, _) in DATASETS.items()}, METHODS)
    tables = [
        episodes_table(
            effect, dataset=name, methods=METHODS, episodes=EPISODES, seed=i,
            classes="seen" if protocol == "examples" else "unseen",
        )
        for i, (name, (protocol, effect)) in enumerate(DATASETS.items())
    ]  # fmt: skip
    table = pd.concat(tables, ignore_index=True)
    root.mkdir(parents=True)
    table.to_parquet(root / "episodes.parquet")
    runs = []
    for dataset in config["datasets"]:
        split = root / dataset / "split"
        split.mkdir(parents=True)
        pools = pd.DataFrame({"example_id": range(10), "pool": ["train"] * 6 + ["test"] * 4})
        pools.to_parquet(split / "pools.parquet")
        for (method, seed), own in table[
            (table["dataset"] == dataset) & (table["analysis"] == "evaluation")
        ].groupby(["method", "seed"]):
            acc = own.sort_values("episode")["accuracy"].to_numpy()
            row = {
                "dataset": dataset, "method": method, "seed": int(seed), "way": 3, "shot": 1,
                "query": 5, "batchnorm": own["batchnorm"].iloc[0], "mean": float(acc.mean()),
                "ci95": 0.0, "std": 0.0, "episodes": len(acc),
                "test_accuracy": 0.9 + 0.01 * seed if method == "baseline" else math.nan,
                "device": "cpu", "version": __version__,
            }  # fmt: skip
            runs.append(row)
            folder = root / dataset / method / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "evaluation.json").write_text(json.dumps({**row, "per_episode": list(acc)}))
            pd.DataFrame(
                {"step": [1], "phase": ["train"], "loss": [1.0], "accuracy": [0.5]}
            ).to_parquet(folder / "metrics.parquet")
    pd.DataFrame(runs).to_parquet(root / "runs.parquet")
    return root, config, table


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    return write_tree(tmp_path_factory.mktemp("doc") / "results")


@pytest.fixture(scope="module")
def block(tree) -> str:
    root, config, _ = tree
    return results_block(load_results(root, config), "the test")


def tables_of(text: str) -> list[pd.DataFrame]:
    """Every Markdown table in ``text``, cells as strings."""
    found, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            found.append(pd.DataFrame(rows[2:], columns=rows[0]))
            rows = []
    return found


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean, by scipy."""
    sem = stats.sem(values)
    return stats.t.interval(level, len(values) - 1, loc=values.mean(), scale=sem)


def difference(a: pd.DataFrame, b: pd.DataFrame, level: float = 0.95) -> str:
    """``a - b`` paired on (seed, episode) with scipy's paired t interval, as printed."""
    a, b = (t.set_index(["seed", "episode"])["accuracy"].sort_index() for t in (a, b))
    ci = stats.ttest_rel(a, b).confidence_interval(level)
    return f"{100 * (a - b).mean():+.2f} [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}]"


def rows(table: pd.DataFrame, **where: object) -> pd.DataFrame:
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        mask &= (table[column] == value).to_numpy()
    return table[mask]


def test_the_accuracy_tables_are_the_pooled_episodes_and_the_t_interval_over_seeds(tree, block):
    _, _, table = tree
    accuracy = tables_of(block)[:2]
    assert len(accuracy) == len(DATASETS)
    for printed, (dataset, (protocol, _)) in zip(accuracy, DATASETS.items(), strict=True):
        assert f"**{dataset}**: 3-way 1-shot" in block
        assert list(printed["method"]) == list(METHODS)
        for r in printed.itertuples(index=False):
            own = rows(table, dataset=dataset, method=r.method, analysis="evaluation")
            acc = own["accuracy"].to_numpy()
            half = 1.96 * acc.std(ddof=1) / math.sqrt(acc.size)
            assert r[3] == f"{pct(acc.mean())} ± {pct(half)}%"  # pooled over seeds
            seed_means = own.groupby("seed")["accuracy"].mean().to_numpy()
            low, high = interval(seed_means)
            assert r[4] == f"{pct(seed_means.mean())} ± {pct((high - low) / 2)}%"
            assert r[5] == ", ".join(f"{pct(m)}%" for m in seed_means)
            assert r[1] == ("unseen" if protocol == "classes" else "seen")
            assert r[2] == ("running" if r.method == "baseline" else "transductive")
            assert r[6] == ("90.00%, 91.00%" if r.method == "baseline" else "")


def test_the_verdicts_print_the_paired_difference_they_rest_on(tree, block):
    _, _, table = tree
    verdicts = tables_of(block)[2]
    assert len(verdicts) == len(DATASETS) * 2  # maml, in both BatchNorm modes
    seen = set()
    for r in verdicts.to_dict("records"):
        part = rows(table, dataset=r["dataset"], method=r["method"], batchnorm=r["BatchNorm"])
        a_name, b_name = r["compared"].split(" - ")
        if a_name == "nearest centroid":
            a = rows(part, analysis="centroid")
            b = rows(part, analysis="steps", setting=str(TEST_STEPS))
        else:
            a = rows(part, analysis="freeze", setting=a_name)
            b = rows(part, analysis="freeze", setting=b_name)
        level = float(re.search(r"\(([\d.]+)%\)$", r["paired difference, points [interval]"])[1])
        assert r["paired difference, points [interval]"].startswith(
            difference(a, b, level / 100)
        ), r
        assert r["classes"] == ("seen" if r["dataset"] == "seen" else "unseen")
        seen.add((r["dataset"], r["verdict"]))
    assert ("seen", REUSE) in seen
    assert ("unseen", rapid_from("bn1")) in seen


def test_like_for_like_is_the_paired_difference_under_both_pairings(tree, block):
    _, _, table = tree
    like = tables_of(block)[3]
    assert set(like["pairing"]) == {"transductive", "non-transductive"}
    assert len(like) == len(DATASETS) * 2
    for r in like.to_dict("records"):
        mode, base_mode = r["BatchNorm (method / baseline)"].split(" / ")
        part = rows(table, dataset=r["dataset"])
        a = rows(part, method="maml", analysis="steps", setting=str(TEST_STEPS), batchnorm=mode)
        b = rows(part, method="baseline", analysis="finetune", batchnorm=base_mode)
        assert r["paired difference, points (95% CI)"] == difference(a, b)
        assert r["pairs"] == str(len(a))


def test_the_block_says_what_made_it(block):
    lines = block.splitlines()
    assert lines[0].startswith("<!-- written by `make results-doc` (the test)")
    machine = lines[2]
    assert cpu_model() in machine and f"torch {torch.__version__}" in machine
    assert f"mamlscope {__version__};" in machine and "device cpu" in machine
    assert "CPU and torch of the machine that wrote this block" in machine  # not recorded
    assert "(the working tree's HEAD when" in machine or "commit unknown" in machine
    assert "within their intervals" in block and "to the digit" in block


def test_recorded_cpu_torch_and_commit_win_over_this_machine(tree):
    root, config, _ = tree
    results = load_results(root, config)
    results.runs = results.runs.assign(cpu="Some CPU", torch="9.9", commit="abc1234")
    line = machine_line(results)
    assert "Made on Some CPU (" in line and "torch 9.9;" in line and "commit abc1234;" in line
    assert "machine that wrote" not in line and "HEAD" not in line


def test_only_accuracy_leaves_out_the_verdicts(tree):
    root, config, _ = tree
    text = results_block(load_results(root, config), "x", only="accuracy")
    assert len(tables_of(text)) == len(DATASETS) and "verdict" not in text
    assert "to the digit" in text


DOC = """# Results

Typed prose before, kept.

<!-- results:default:begin -->
<!-- written by `make results-doc` -->
<!-- results:default:end -->

Between the blocks.
<!-- results:other:begin -->
old other
<!-- results:other:end -->
After, kept.
"""


def test_write_block_replaces_only_between_its_markers_and_is_idempotent(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    doc.chmod(0o640)
    old = write_block(doc, "default", "| a |\n| --- |\n| 1 |\n")
    assert old == "<!-- written by `make results-doc` -->"
    once = doc.read_text()
    begin, end = markers("default")
    assert once == DOC.replace(f"{begin}\n{old}\n{end}", f"{begin}\n| a |\n| --- |\n| 1 |\n{end}")
    assert read_block(doc, "default") == "| a |\n| --- |\n| 1 |"
    assert write_block(doc, "default", "| a |\n| --- |\n| 1 |") == "| a |\n| --- |\n| 1 |"
    assert doc.read_text() == once  # the same text again: the same file
    assert read_block(doc, "other") == "old other"
    assert doc.stat().st_mode & 0o777 == 0o640  # permissions kept through the atomic write
    assert [p.name for p in tmp_path.iterdir()] == ["doc.md"]  # no temporary left


BEGIN, END = markers("default")


@pytest.mark.parametrize(
    "text, problem",
    [
        (DOC.replace(END + "\n", ""), f"lacks the marker {END}"),
        (DOC.replace(BEGIN + "\n", ""), f"lacks the marker {BEGIN}"),
        (DOC + BEGIN + "\n", f"holds 2 times the marker {BEGIN}"),
        (DOC.replace(BEGIN, "@").replace(END, BEGIN).replace("@", END), "comes before"),
    ],
)
def test_a_missing_or_misplaced_marker_names_the_file_and_the_marker(tmp_path, text, problem):
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    with pytest.raises(DocError, match=re.escape(problem)) as raised:
        write_block(doc, "default", "new")
    assert str(doc) in str(raised.value)
    assert doc.read_text() == text  # untouched
    with pytest.raises(DocError, match="is missing"):
        write_block(tmp_path / "absent.md", "default", "new")


def test_a_missing_results_file_is_named(tree, tmp_path):
    root, _, _ = tree
    with pytest.raises(DataError, match=r"runs\.parquet is missing: run the workflow first"):
        require_results(tmp_path, only="accuracy")
    (tmp_path / "runs.parquet").write_bytes((root / "runs.parquet").read_bytes())
    require_results(tmp_path, only="accuracy")  # the accuracy tables do not read episodes
    with pytest.raises(DataError, match=r"episodes\.parquet is missing: run the workflow"):
        require_results(tmp_path)
    require_results(root)


def test_the_command_writes_the_block_end_to_end(tree, tmp_path, capsys):
    root, config, _ = tree
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    argv = ["results-doc", str(root), "--config", str(config_file), "--doc", str(doc)]
    assert main([*argv, "--name", "default"]) == 0
    printed = capsys.readouterr().out
    assert "-<!-- written by `make results-doc` -->" in printed  # what it replaced
    assert f"block 'default' written from {root}" in printed
    expected = results_block(load_results(root, config), "x")
    written = read_block(doc, "default")
    assert written.splitlines()[1:] == expected.splitlines()[1:]
    assert f"mamlscope results-doc {root} --config {config_file}" in written.splitlines()[0]
    assert doc.read_text().endswith("old other\n<!-- results:other:end -->\nAfter, kept.\n")
    assert main([*argv, "--name", "default"]) == 0
    assert "block 'default' unchanged" in capsys.readouterr().out
    assert main([*argv, "--name", "other", "--only", "accuracy"]) == 0
    assert len(tables_of(read_block(doc, "other"))) == len(DATASETS)
    assert read_block(doc, "default") == written  # the other block untouched

    assert main([*argv, "--name", "absent"]) == 2
    assert "lacks the marker <!-- results:absent:begin -->" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    before = doc.read_text()
    assert main(["results-doc", str(empty), "--config", str(config_file), "--doc", str(doc),
                 "--name", "default"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"{empty / 'runs.parquet'} is missing: run the workflow first" in err
    assert doc.read_text() == before


@pytest.mark.workflow
def test_the_tiny_pipelines_results_give_its_own_numbers(tiny_pipeline, tmp_path, capsys):
    """On a real results tree: one block per run of tests/tiny.yaml, its accuracy that of
    the run's evaluation (one seed: the pooled mean is the run's own)."""
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    results = tiny_pipeline / TINY_RESULTS
    config = str(tiny_pipeline / "tiny.yaml")
    argv = ["results-doc", str(results), "--config", config, "--doc", str(doc)]
    assert main([*argv, "--name", "default"]) == 0, capsys.readouterr().err
    printed = tables_of(read_block(doc, "default"))
    runs = pd.read_parquet(results / "runs.parquet").set_index("method")
    accuracy = printed[0].set_index("method")
    assert set(accuracy.index) == set(runs.index)
    for method, run in runs.iterrows():
        own = f"{pct(run['mean'])} ± {pct(run['ci95'])}%"
        assert accuracy.loc[method, "accuracy, pooled (95% CI)"] == own
        assert accuracy.loc[method, "BatchNorm at test"] == run["batchnorm"]
    assert len(printed) == 3 and len(printed[1]) and len(printed[2])  # verdicts, like for like
