"""The Snakemake workflow: dry runs of the default config, the data rules for real, and on the
session's tiny pipeline (conftest.py) which jobs each edit reruns and the feature studies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from workflow_tools import (
    DEFAULT_RESULTS,
    TINY,
    TINY_RESULTS,
    copy_workflow,
    job_block,
    job_blocks,
    planned_jobs,
    snakemake,
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow files in a fresh folder, so results land in tmp_path."""
    return copy_workflow(tmp_path)


@pytest.mark.workflow
def test_dry_run_of_default_config(workdir: Path):
    result = snakemake("-n", "--cores", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in ("prepare_dataset", "split_dataset"):
        assert rule in out
    prepare = [b for b in job_blocks(out) if "rule prepare_dataset:" in b]
    assert prepare and all("download=1" in b for b in prepare)  # one download at a time


@pytest.mark.workflow
def test_bad_config_stops_before_any_job(workdir: Path):
    (workdir / "bad.yaml").write_text(
        "datasets:\n  d:\n    source: mnist5k\n    split: {protocol: examples}\n"
        "    episodes: {way: 5, shot: 1}\n    colour: blue\n"
    )
    result = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", cwd=workdir)
    assert result.returncode != 0
    assert "datasets.d: Additional properties are not allowed ('colour'" in result.stdout
    assert not (workdir / "results").exists()


@pytest.mark.workflow
def test_configfile_replaces_the_default(workdir: Path):
    (workdir / "other.yaml").write_text(
        "datasets:\n  digitsonly:\n    source: digits\n    image_size: 8\n"
        "    split: {protocol: examples}\n    episodes: {way: 5, shot: 1, query: 5}\n"
    )
    result = snakemake("-n", "--cores", "1", "--configfile", "other.yaml", cwd=workdir)
    assert result.returncode == 0, result.stdout
    assert "results/other/digitsonly/data" in result.stdout  # the file's stem names it
    assert "mnist5k" not in result.stdout


@pytest.mark.workflow
@pytest.mark.slow
def test_data_rules_run_on_default_config(workdir: Path):
    result = snakemake("--cores", "2", "--until", "split_dataset", cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    data = workdir / DEFAULT_RESULTS / "mnist5k" / "data"
    assert {p.name for p in data.iterdir()} == {"images.npy", "index.parquet", "meta.json"}
    index = pd.read_parquet(data / "index.parquet")
    assert len(index) == 5000
    # One split per dataset, shared by both training seeds.
    tests = {}
    for dataset in ("mnist5k", "mnist5k-classes"):
        split = workdir / DEFAULT_RESULTS / dataset / "split"
        tests[dataset] = test = pd.read_parquet(split / "episodes_test.parquet")
        assert test["episode"].nunique() == 300
        assert len(test) == 300 * 5 * (1 + 15)
    # By classes, the test digits are the five the training pool lacks.
    pools = pd.read_parquet(workdir / DEFAULT_RESULTS / "mnist5k-classes/split/pools.parquet")
    by_pool = pools.merge(index, on="example_id").groupby("pool")["class_id"].unique()
    train, test = set(by_pool["train"]), set(by_pool["test"])
    assert len(train) == len(test) == 5 and not train & test
    # A second run finds everything up to date.
    again = snakemake("-n", "--cores", "2", "--until", "split_dataset", cwd=workdir)
    assert again.returncode == 0
    assert "total        0" in again.stdout + again.stderr


@pytest.mark.workflow
def test_slurm_profile_asks_a_gpu_for_training(workdir: Path):
    result = snakemake("-n", "--profile", "profiles/slurm", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:]
    blocks = job_blocks(result.stdout)
    train = [b for b in blocks if "rule train:" in b or "localrule train:" in b]
    prepare = [b for b in blocks if "rule prepare_dataset:" in b]
    assert train and all("gpu=1" in b for b in train)
    assert prepare and all("gpu=1" not in b for b in prepare)


@pytest.mark.workflow
def test_lint_finds_nothing(workdir: Path):
    result = snakemake("--lint", cwd=workdir)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Lints for" not in out and "good condition" in out, out


@pytest.mark.workflow
def test_jobs_declare_every_file_they_read(workdir: Path):
    result = snakemake("-n", "--cores", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    train, evaluate = job_block(out, "train"), job_block(out, "evaluate")
    for block in (train, evaluate):
        dataset = re.search(r"dataset=([\w-]+)", block).group(1)
        data, split = (f"{DEFAULT_RESULTS}/{dataset}/{part}/" for part in ("data", "split"))
        for name in ("images.npy", "index.parquet", "meta.json", "pools.parquet"):
            assert (split if name == "pools.parquet" else data) + name in block, block
    assert "episodes_val.parquet" in train and "episodes_test.parquet" in evaluate


MAML = ("maml", "fomaml", "maml-fd")
# What reruns after a model's training, or after only its evaluation settings, change:
# the feature studies read the checkpoint, and extraction adapts as evaluation does.
AFTER_TRAIN = ("train", "evaluate", "extract_activations", "plot_features", "analyze")
AFTER_EVALUATION = ("evaluate", "extract_activations", "plot_features", "analyze")
# Jobs that gather every model of a dataset and seed (or all of them), by what feeds them.
GATHERS = {
    "evaluate": "summarize_runs",
    "analyze": "gather_episodes",
    "plot_features": "compare_methods",
    "extract_activations": "cka",
}


def _jobs(rule_methods: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    return sorted((rule, m) for rule, methods in rule_methods.items() for m in methods)


def _model_jobs(rules: tuple[str, ...], methods: tuple[str, ...]) -> list[tuple[str, str]]:
    """Those rules for those methods, every gathering job they feed, and the report (it
    reads every result and shows the config, so every edit here reruns it)."""
    gathers = {GATHERS[r]: ("",) for r in rules if r in GATHERS}
    return _jobs({**{r: methods for r in rules}, **gathers, "report": ("",)})


# Each edit of the tiny config, and every job it reruns (summarize_runs gathers every run).
RERUNS = {
    "nothing": ("", []),
    # Only MAML trains for meta-steps: the three MAML runs retrain, and all after them.
    "maml.meta_steps": ("meta_steps: 3,/meta_steps: 4,", _model_jobs(AFTER_TRAIN, MAML)),
    # Fine-tuning is evaluation only (and the baseline's adapted activations): nothing
    # retrains.
    "baseline.finetune_steps": (
        "finetune_steps: 5/finetune_steps: 6",
        _model_jobs(AFTER_EVALUATION, ("baseline",)),
    ),
    "baseline.epochs": ("epochs: 1/epochs: 2", _model_jobs(AFTER_TRAIN, ("baseline",))),
    # New test episodes are a new split: everything downstream of it reruns.
    "episodes.test_episodes": (
        "test_episodes: 20/test_episodes: 21",
        sorted(
            _model_jobs(AFTER_TRAIN, ("baseline", *MAML))
            + [("split_dataset", ""), ("choose_probe", "")]
        ),
    ),
    # Validation during MAML training adapts with test_inner_steps, so its metrics change:
    # MAML retrains as well as re-evaluates (config.MAML_TRAIN_KEYS).
    "maml.test_inner_steps": (
        "test_inner_steps: 2/test_inner_steps: 3",
        _model_jobs(AFTER_TRAIN, MAML),
    ),
    "maml.fd_epsilon": (
        "eval_batch: 20}/eval_batch: 20, fd_epsilon: 1.0e-7}",
        _model_jobs(AFTER_TRAIN, ("maml-fd",)),
    ),
    "maml.eval_batchnorm": (
        "eval_batch: 20}/eval_batch: 20, eval_batchnorm: support}",
        _model_jobs(AFTER_EVALUATION, MAML),
    ),
    # The analyses' settings rerun every model's analyses (and the table that gathers them).
    "analyses.episodes": (
        "episodes: 10}/episodes: 12}",
        _model_jobs(("analyze",), ("baseline", *MAML)),
    ),
    "analyses.snapshot_episodes": (
        "snapshot_episodes: 5/snapshot_episodes: 6",
        _model_jobs(("analyze",), ("baseline", *MAML)),
    ),
    # The figures' settings redraw the figures only.
    "features.extremes": (
        "maximise_steps: 4,/maximise_steps: 4, extremes: 5,",
        _model_jobs(("plot_features",), ("baseline", *MAML)),
    ),
}


@pytest.mark.workflow
@pytest.mark.slow
@pytest.mark.parametrize("edit", list(RERUNS))
def test_an_edit_reruns_only_the_jobs_that_read_it(tiny_pipeline: Path, edit: str):
    change, expected = RERUNS[edit]
    text = TINY
    if change:
        old, new = change.split("/")
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    name = f"edited-{edit}.yaml"
    (tiny_pipeline / name).write_text(text)
    result = snakemake("-n", "--cores", "1", "--configfile", name, cwd=tiny_pipeline)
    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_jobs(result.stdout) == expected, result.stdout[-3000:]


@pytest.mark.workflow
@pytest.mark.slow
def test_the_feature_studies_of_every_model_are_produced(tiny_pipeline: Path):
    from PIL import Image

    from mamlscope.features.activations import read_activations
    from mamlscope.features.studies import study_keys

    results = tiny_pipeline / TINY_RESULTS / "digits8"
    probe = pd.read_parquet(results / "split/probe.parquet")
    assert len(probe) == 40 and probe["class_id"].value_counts().max() <= 4  # 10 classes
    for method in ("baseline", *MAML):
        model = results / method / "seed0"
        frame = read_activations(model / "activations.parquet")
        assert list(dict.fromkeys(frame["layer"])) == ["fc1", "bn1", "relu1", "head"]
        probe_rows = frame[frame["episode"] == -1]
        assert set(probe_rows["example_id"]) == set(probe["example_id"])  # the same probe
        assert set(frame["episode"]) == {-1, 0, 1}  # the probe and 2 adapted episodes
        assert set(frame.loc[frame["episode"] >= 0, "stage"]) == {"meta", "adapted"}
        for name in study_keys():
            with Image.open(model / "figures" / f"{name}.png") as image:
                assert image.width > 200 and image.height > 100
    compare = results / "compare" / "seed0"
    for name in (*study_keys(), "cka_methods", "cka_adaptation"):
        with Image.open(compare / f"{name}.png") as image:
            assert image.width > 300, name
    cka = pd.read_parquet(compare / "cka.parquet")
    assert set(cka["stage"]) == {"meta", "adaptation"}
    assert set(cka.loc[cka["stage"] == "meta", "model_b"]) == set(MAML)
    assert len(cka[cka["stage"] == "meta"]) == 3 * 4 * 4  # every pair of the 4 layers
    base = cka[(cka["stage"] == "adaptation") & (cka["model_a"] == "baseline")]
    # The baseline's body does not change in adaptation: only its head is new.
    assert base.set_index("layer_a").loc[["fc1", "bn1", "relu1"], "cka"].min() > 0.999999


@pytest.mark.workflow
@pytest.mark.slow
def test_the_per_episode_table_holds_every_analysis_beside_each_evaluation(tiny_pipeline: Path):
    from mamlscope.analyses import COLUMNS

    table = pd.read_parquet(tiny_pipeline / TINY_RESULTS / "episodes.parquet")
    assert {c: str(t) for c, t in table.dtypes.items()} == COLUMNS
    assert set(table["classes"]) == {"seen"}
    # MAML's snapshot before its final weights (tiny.yaml: maml.snapshots 2 of 3 meta-steps),
    # on the first analyses.snapshot_episodes (5); every other row is a final model's.
    earlier = table[table["snapshot"] < 1.0]
    assert set(earlier["method"]) == set(MAML) and set(earlier["snapshot"]) == {2 / 3}
    assert sorted(earlier["episode"].unique()) == list(range(5))
    cka = pd.read_parquet(tiny_pipeline / TINY_RESULTS / "training_cka.parquet")
    assert set(cka["method"]) == set(MAML) and set(cka["snapshot"]) == {2 / 3, 1.0}
    table = table[table["snapshot"] == 1.0]
    own = table[table["analysis"] == "evaluation"]
    assert own.groupby("method")["episode"].nunique().to_dict() == dict.fromkeys(
        ("baseline", *MAML), 20
    )  # every test episode; the analyses take the first 10 (tiny.yaml)
    analysed = table[table["analysis"] != "evaluation"]
    assert sorted(analysed["episode"].unique()) == list(range(10))
    for method in MAML:
        rows = analysed[analysed["method"] == method]
        freeze = rows[rows["analysis"] == "freeze"]
        assert set(freeze["setting"]) == {"from fc1", "from bn1", "from head", "body"}
        assert set(rows.loc[rows["analysis"] == "steps", "setting"]) == {"0", "1", "2", "5", "10"}
        assert set(rows["batchnorm"]) == {"transductive", "support"}
    baseline = analysed[analysed["method"] == "baseline"]
    assert set(baseline["analysis"]) == {"centroid", "finetune"}
    assert set(baseline["batchnorm"]) == {"transductive", "support", "running"}
    # The same computation twice, through different jobs (adapting every layer under the
    # evaluation's BatchNorm mode; the baseline's fresh head on running statistics): equal
    # episode by episode.
    every_layer = analysed["setting"] == "from fc1"
    own_head = (analysed["analysis"] == "finetune") & (analysed["batchnorm"] == "running")
    same = analysed[every_layer | own_head]
    paired = same.merge(own, on=["method", "batchnorm", "episode"], suffixes=("", "_own"))
    assert len(paired) == 10 * (1 + len(MAML))  # the evaluation's mode only
    assert (paired["accuracy"] == paired["accuracy_own"]).all()


@pytest.mark.workflow
@pytest.mark.slow
def test_an_evaluation_records_the_whole_config_and_its_every_layers(tiny_pipeline: Path):
    assert (tiny_pipeline / TINY_RESULTS / "runs.md").is_file()
    evaluation = tiny_pipeline / TINY_RESULTS / "digits8/maml/seed0/evaluation.json"
    summary = json.loads(evaluation.read_text())
    assert summary["config"]["source"] == "digits"  # the checkpoint records the whole config
    assert summary["evaluation"]["inner_steps"] == 2  # the settings this evaluation used


@pytest.mark.workflow
@pytest.mark.slow
def test_a_config_rewritten_with_its_keys_reordered_reruns_nothing(tiny_pipeline: Path):
    """Job identity comes from values, not key order: `yaml.safe_dump` sorts every mapping's
    keys (and reflows the file), and the up-to-date tree stays up to date."""
    import yaml

    rewritten = yaml.safe_dump(yaml.safe_load(TINY), sort_keys=True)
    assert rewritten.index("baseline:") < rewritten.index("seeds:")  # really reordered
    (tiny_pipeline / "sorted.yaml").write_text(rewritten)
    result = snakemake("-n", "--cores", "1", "--configfile", "sorted.yaml", cwd=tiny_pipeline)
    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_jobs(result.stdout) == [], result.stdout[-3000:]
