"""The report library on a synthetic results tree: tables, seeds pooled, findings, studies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mamlscope.evaluate import summarize
from mamlscope.report import plots, studies
from mamlscope.report.findings import findings, maml_ordering
from mamlscope.report.results import (
    ANALYSES_COLUMNS,
    accuracy_table,
    experiment_tables,
    load_results,
    pooled_accuracy,
    reference_note,
)
from mamlscope.stats import seed_interval

REPO = Path(__file__).resolve().parents[1]
METHODS = ("baseline", "maml", "fomaml", "maml-fd")
# Per-episode accuracy means by method: the baseline clearly best, maml > fomaml > maml-fd
# but close enough that their intervals overlap.
MEANS = {"baseline": 0.93, "maml": 0.885, "fomaml": 0.88, "maml-fd": 0.87}


def make_config(source: str = "mnist5k") -> dict:
    from mamlscope.config import validate_config

    raw = {
        "seeds": [0, 1],
        "device": "cpu",
        "methods": list(METHODS),
        "datasets": {
            "mnist5k": {
                "source": source,
                "split": {"protocol": "examples", "train": 0.6, "val": 0.1},
                "episodes": {"way": 5, "shot": 1, "query": 15, "test_episodes": 200},
            }
        },
        "baseline": {"lr": 0.001, "weight_decay": 0.01, "batch_size": 256, "epochs": 5},
    }
    return validate_config(raw, check_paths=False)


def write_tree(root: Path, config: dict, means: dict[str, float] = MEANS) -> Path:
    """runs.parquet, evaluation.json, metrics.parquet and pools.parquet, as the workflow writes."""
    rng = np.random.default_rng(0)
    rows = []
    for dataset in config["datasets"]:
        split = root / dataset / "split"  # one split per dataset, shared by every seed
        split.mkdir(parents=True)
        pools = ["train"] * 3000 + ["val"] * 500 + ["test"] * 1500
        pd.DataFrame({"example_id": range(5000), "pool": pools}).to_parquet(split / "pools.parquet")
        for seed in config["seeds"]:
            for method in config["methods"]:
                folder = root / dataset / method / f"seed{seed}"
                folder.mkdir(parents=True)
                acc = np.clip(rng.normal(means[method] + 0.002 * seed, 0.08, 200), 0, 1)
                row = {
                    "dataset": dataset,
                    "method": method,
                    "seed": seed,
                    "way": 5,
                    "shot": 1,
                    "query": 15,
                    "batchnorm": "running" if method == "baseline" else "transductive",
                    **summarize(acc).as_dict(),
                    "test_accuracy": 0.932 + 0.01 * seed if method == "baseline" else math.nan,
                }
                rows.append(row)
                (folder / "evaluation.json").write_text(
                    json.dumps({**row, "per_episode": acc.tolist()})
                )
                steps = np.arange(1, 11)
                pd.DataFrame(
                    {
                        "step": np.concatenate([steps, [10]]),
                        "phase": ["train"] * 10 + ["val"],
                        "loss": np.concatenate([2 / steps, [math.nan]]),
                        "accuracy": np.concatenate([1 - 1 / (steps + 1), [0.8]]),
                        "elapsed_s": 0.0,
                    }
                ).to_parquet(folder / "metrics.parquet")
    pd.DataFrame(rows).to_parquet(root / "runs.parquet")
    return root


@pytest.fixture
def tree(tmp_path: Path):
    config = make_config()
    return load_results(write_tree(tmp_path / "results", config), config)


def test_seeds_are_pooled_per_episode(tree):
    pooled = pooled_accuracy(tree).set_index("method")
    episodes = tree.episodes[tree.episodes["method"] == "maml"]["accuracy"]
    expected = summarize(episodes)
    assert len(episodes) == 2 * 200
    assert pooled.loc["maml", "episodes"] == 400
    assert pooled.loc["maml", "mean"] == pytest.approx(expected.mean)
    assert pooled.loc["maml", "ci95"] == pytest.approx(1.96 * episodes.std(ddof=1) / math.sqrt(400))
    assert len(pooled.loc["maml", "seed_means"]) == 2
    over_seeds = seed_interval(pooled.loc["maml", "seed_means"])
    assert (pooled.loc["maml", "seed_low"], pooled.loc["maml", "seed_high"]) == (
        pytest.approx(over_seeds.low), pytest.approx(over_seeds.high),
    )  # fmt: skip
    assert pooled.loc["maml", "seed_high"] - pooled.loc["maml", "seed_low"] > 0
    assert pooled.loc["baseline", "plain"] == pytest.approx(0.937)
    assert math.isnan(pooled.loc["maml", "plain"])


def test_accuracy_table_has_batchnorm_and_the_reference_beside_the_baseline(tree):
    table = accuracy_table(tree).set_index("method")
    assert list(table.index) == list(METHODS)
    assert table.loc["baseline", "BatchNorm at test"] == "running"
    assert table.loc["maml", "BatchNorm at test"] == "transductive"
    assert table.loc["baseline", "original reference"].startswith("96.71%")
    assert table.loc["maml", "original reference"] == ""
    assert table.loc["baseline", "plain test accuracy"].startswith("93.70%")
    assert table.loc["maml", "seeds x episodes"] == "2 x 200"
    means = pooled_accuracy(tree).set_index("method").loc["maml"]
    half = 100 * (means["seed_high"] - means["seed_low"]) / 2
    expected = f"{100 * np.mean(means['seed_means']):.2f} ± {half:.2f}%"
    assert table.loc["maml", "across seeds (95% CI)"] == expected


def test_reference_note_explains_the_smaller_training_set(tree):
    note = reference_note(tree)
    assert "96.71%" in note and "3,000 training images instead of 60,000" in note
    assert "20 times fewer" in note
    assert "60 Adam steps" in note and "1,175" in note  # 5 * ceil(3000/256), 5 * ceil(60000/256)
    assert "the same network and training setting" in note


def test_reference_does_not_apply_to_other_datasets(tmp_path: Path):
    config = make_config(source="digits")
    results = load_results(write_tree(tmp_path / "r", config), config)
    assert "does not apply" in reference_note(results)
    assert (accuracy_table(results)["original reference"] == "").all()


def test_experiment_tables_come_from_the_config(tree):
    parts = experiment_tables(tree)
    assert "baseline, maml, fomaml, maml-fd" in parts["summary"]
    assert "0, 1" in parts["summary"]
    row = parts["datasets"].iloc[0]
    assert row["source"] == "mnist5k" and row["training images"] == "3,000"
    assert row["episodes"] == "5-way 1-shot, 15 queries"
    hyper = parts["hyperparameters"].set_index("key")["mnist5k"]
    assert hyper["baseline.batch_size"] == "256" and hyper["maml.meta_steps"] == "60000"


def test_findings_are_generated_from_the_numbers(tree):
    found = findings(tree)
    best = found["Best method per dataset"][0]
    assert best.startswith("- **mnist5k**: baseline is best by its own evaluation")
    for other in METHODS[1:]:
        assert f"significantly above {other}" in best  # paired, 400 episode pairs each
    assert "see the like-for-like comparison" in best  # running against transductive
    order = found["MAML > FOMAML >= FD?"][0]
    assert "maml > fomaml >= maml-fd is not resolved by these episodes" in order
    assert "not separated from fomaml" in order and "across seeds [" in order
    # No analyses table in this tree: the verdicts and like-for-like say so.
    assert "not produced by this run" in found["Rapid learning or feature reuse?"][0]
    assert "not produced" in found["MAML against standard training, like for like"][0]
    assert not any("CKA" in h or "Head-only" in h for h in found)


def test_ordering_that_fails_says_so(tmp_path: Path):
    config = make_config()
    means = {**MEANS, "maml": 0.80}
    results = load_results(write_tree(tmp_path / "r", config, means), config)
    line = maml_ordering(results)[0]
    assert "does not hold" in line and "maml is significantly below fomaml" in line


def test_load_results_reads_the_analyses_of_the_configs_runs(tmp_path: Path):
    from test_verdicts import episodes_table

    config = make_config()
    root = write_tree(tmp_path / "r", config)
    assert load_results(root, config).analyses.empty  # no episodes.parquet: no analyses
    table = episodes_table(dataset="mnist5k", methods=("baseline", "maml"), seeds=(0, 1, 2))
    table.to_parquet(root / "episodes.parquet")
    analyses = load_results(root, config).analyses
    assert list(analyses.columns) == list(ANALYSES_COLUMNS)
    assert set(analyses["seed"]) == {0, 1}  # seed 2 is not in the config
    assert len(analyses) == len(table[table["seed"] < 2])
    table.drop(columns="classes").to_parquet(root / "episodes.parquet")
    with pytest.raises(Exception, match="lacks the columns \\['classes'\\]"):
        load_results(root, config)


def test_studies_prefer_the_side_by_side_figure(tmp_path: Path):
    root = tmp_path / "results"
    side = studies.compare_figure(root, "d", 0, "filters")
    own = studies.model_figure(root, "d", "maml", 1, "filters")
    for path in (side, own):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"png")
    found = studies.study_files(root, "filters", ["d"], ["baseline", "maml"], [0, 1, 2])
    assert found[("d", 0)] == [("baseline | maml", side)]
    assert found[("d", 1)] == [("maml", own)]
    assert found[("d", 2)] == []  # not produced by this run


def test_the_report_takes_the_studies_titles_and_captions_from_the_registry(tree, monkeypatch):
    from mamlscope.features.studies import studies as registered
    from mamlscope.features.studies import study
    from mamlscope.report import show

    for key in ("tsne", studies.CURVES):
        path = studies.compare_figure(tree.root, "mnist5k", 0, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())
    shown: list = []
    monkeypatch.setattr(show, "markdown", shown.append)
    monkeypatch.setattr(show, "figure", lambda fig, alt, caption="": None)
    monkeypatch.setattr(show, "png", lambda path, alt, caption="": shown.append((path, caption)))
    show.feature_studies(tree)
    headings = [s for s in shown if isinstance(s, str) and s.startswith("### ")]
    expected = [s for s in registered() if s.key != studies.CURVES]  # curves: training section
    assert headings == [f"### {s.title}\n\n{s.caption}" for s in expected]
    assert [s.key for s in studies.figure_studies()] == [s.key for s in expected]
    tsne = studies.compare_figure(tree.root, "mnist5k", 0, "tsne")
    assert [p for p, _ in (s for s in shown if isinstance(s, tuple))] == [tsne]
    shown.clear()
    show.curves(tree)
    curves = studies.compare_figure(tree.root, "mnist5k", 0, studies.CURVES)
    assert shown == [(curves, study(studies.CURVES).caption)]


def test_training_curves_have_a_column_per_method(tree):
    fig = plots.training_curves(tree, "mnist5k")
    assert len(fig.axes) == 2 * len(METHODS)
    assert [ax.get_title() for ax in fig.axes[:4:]][0] == "baseline"
    assert len(plots.training_curves_all(tree).axes) == 2 * len(METHODS)


def test_rulegraph_without_graphviz_is_a_note(tmp_path: Path, monkeypatch):
    dot = tmp_path / "rulegraph.dot"
    dot.write_text("digraph { a -> b }")
    monkeypatch.setattr(plots.shutil, "which", lambda name: None)
    svg, note = plots.render_rulegraph(dot)
    assert svg is None and "graphviz" in note and "rulegraph.dot" in note


def test_template_has_a_parameters_cell_and_a_kernel_and_no_outputs():
    import nbformat

    nb = nbformat.read(REPO / "report" / "report.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("results_dir", "config", "rulegraph"):
        assert f"{name} =" in tagged[0].source
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_every_registered_method_has_a_row_a_curve_and_its_place_in_the_findings(tmp_path):
    """Any registered method goes through the report; the ordering compares only methods
    whose inner loop adapts every parameter, one per meta-gradient order."""
    from mamlscope.methods import method, method_names

    names = list(method_names())
    raw = make_config()
    config = {**raw, "methods": names}
    means = {n: MEANS.get(n, 0.8) for n in names}
    results = load_results(write_tree(tmp_path / "r", config, means), config)
    table = accuracy_table(results).set_index("method")
    assert list(table.index) == names
    fig = plots.training_curves(results, "mnist5k")
    labels = [ax.get_xlabel() for ax in fig.axes[len(names) :]]
    assert labels == [method(n).step_unit for n in names]
    assert labels[0] == "step (batch)" and set(labels[1:]) == {"meta-step"}
    order = maml_ordering(results)[0]
    assert "maml > fomaml >= maml-fd" in order
    assert all(f" {n} " not in order for n in names if method(n).adapts != "all")
