"""The workflow deployed as a Snakemake user deploys one: two experiments side by side in one
folder, the workflow used as a module of another (`use rule * from`), and every output
kept by a default storage provider (snakemake-storage-plugin-fs). Each runs tests/tiny.yaml
(or a smaller variant) to its report: a minute or so each on 2 cores."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_tools import REPO, TINY, TINY_RESULTS, copy_workflow, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def fingerprint(tree: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``tree`` by relative path: its mtime (ns) and SHA-256."""
    return {
        str(p.relative_to(tree)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(tree.rglob("*"))
        if p.is_file()
    }


def second_experiment() -> str:
    """tests/tiny.yaml as another experiment with two methods (half the jobs)."""
    config = yaml.safe_load(TINY)
    config["experiment"] = "tiny-second"
    config["methods"] = ["baseline", "maml"]
    return yaml.safe_dump(config)


def test_a_second_experiment_leaves_the_first_untouched(tiny_pipeline: Path, tmp_path: Path):
    folder = tmp_path / "both"
    shutil.copytree(tiny_pipeline, folder, symlinks=True)  # copy2: mtimes kept
    first = folder / TINY_RESULTS
    before = fingerprint(first)
    assert (first / "report" / "report.html").is_file()
    (folder / "second.yaml").write_text(second_experiment())

    result = snakemake("--cores", "2", "--configfile", "second.yaml", cwd=folder)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    second = folder / "results" / "tiny-second"
    assert (second / "report" / "report.html").is_file()
    assert (second / "runs.parquet").is_file() and (second / "digits8" / "maml").is_dir()
    assert not (second / "digits8" / "fomaml").exists()  # its own methods only
    assert fingerprint(first) == before  # not one file of the first rewritten or touched
    # ... and the first is still up to date: nothing of it would run again.
    again = snakemake("-n", "--cores", "1", "--configfile", "tiny.yaml", cwd=folder)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr


def test_the_experiment_defaults_to_the_config_files_stem(tmp_path: Path):
    folder = copy_workflow(tmp_path)
    config = yaml.safe_load(TINY)
    del config["experiment"]
    (folder / "my-study.yaml").write_text(yaml.safe_dump(config))
    (folder / "bad name.yaml").write_text(yaml.safe_dump(config))

    named = snakemake("-n", "--cores", "1", "--configfile", "my-study.yaml", cwd=folder)
    assert named.returncode == 0, named.stdout + named.stderr
    assert "results/my-study/digits8/data/index.parquet" in named.stdout
    default = snakemake("-n", "--cores", "1", "--until", "prepare_dataset", cwd=folder)
    assert default.returncode == 0, default.stdout + default.stderr
    assert "results/default/mnist5k/data/index.parquet" in default.stdout
    # A stem that is no safe folder name stops the run naming the key.
    bad = snakemake("-n", "--cores", "1", "--configfile", "bad name.yaml", cwd=folder)
    assert bad.returncode != 0
    assert "experiment: 'bad name' does not match" in bad.stdout + bad.stderr
    assert not (folder / "results").exists()


def test_a_file_of_a_few_keys_after_config_yaml_is_its_own_experiment(tmp_path: Path):
    """`--configfile config.yaml extra.yaml`: results/extra/, the default's results left
    alone; a key `experiment` in extra.yaml or `--config experiment=NAME` names it instead."""
    folder = copy_workflow(tmp_path)
    (folder / "extra.yaml").write_text("maml:\n  meta_steps: 50\n")
    (folder / "named.yaml").write_text("experiment: fifty\nmaml:\n  meta_steps: 50\n")
    until = ("-n", "--cores", "1", "--until", "prepare_dataset")
    cases = {
        "results/extra/": ("--configfile", "config.yaml", "extra.yaml"),
        "results/fifty/": ("--configfile", "config.yaml", "named.yaml"),
        "results/mine/": (
            "--configfile",
            "config.yaml",
            "extra.yaml",
            "--config",
            "experiment=mine",
        ),
        "results/default/": (),
    }
    for prefix, args in cases.items():
        result = snakemake(*until, *args, cwd=folder)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs = [line for line in result.stdout.splitlines() if "output: results/" in line]
        assert outputs and all(f"output: {prefix}" in line for line in outputs), (prefix, outputs)


def test_the_workflow_runs_as_a_module_of_another(tmp_path: Path):
    """`module ... use rule * from`: the files the workflow reads from its own tree (report
    template, theme, captions, scripts, envs) are found beside its Snakefile, not beside
    the deploying one, and the package is found in its src/."""
    (tmp_path / "mamlscope").mkdir()
    source = copy_workflow(tmp_path / "mamlscope")
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "tiny.yaml").write_text(TINY)
    (deploy / "Snakefile").write_text(
        'configfile: "tiny.yaml"\n\n\n'
        "module mamlscope:\n"
        f'    snakefile: "{source / "Snakefile"}"\n'
        "    config: config\n\n\n"
        "use rule * from mamlscope\n"
    )
    result = snakemake("--cores", "2", cwd=deploy)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    report = deploy / TINY_RESULTS / "report" / "report.html"
    assert report.is_file() and "digits8" in report.read_text()
    assert (deploy / TINY_RESULTS / "report" / "rulegraph.dot").read_text().startswith("digraph")
    assert not (source / "results").exists()  # every output in the deploying folder


def storage_needs_rsync() -> None:
    """snakemake-storage-plugin-fs copies with rsync: skip without it, fail on CI."""
    if shutil.which("rsync") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rsync is missing (the fs storage plugin needs it); .ci/run installs it")
        pytest.skip("rsync is missing (the fs storage plugin needs it)")


def test_every_output_goes_to_a_default_storage_provider(tmp_path: Path):
    pytest.importorskip("snakemake_storage_plugin_fs")
    storage_needs_rsync()
    (tmp_path / "workflow").mkdir()
    folder = copy_workflow(tmp_path / "workflow")
    (folder / "tiny.yaml").write_text(TINY)
    store = tmp_path / "store"
    storage = ("--default-storage-provider", "fs", "--default-storage-prefix", str(store))
    result = snakemake("--cores", "2", "--configfile", "tiny.yaml", *storage, cwd=folder)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    stored = store / TINY_RESULTS
    assert (stored / "report" / "report.html").is_file()
    assert (stored / "runs.parquet").is_file()
    assert (stored / "digits8" / "maml" / "seed0" / "evaluation.json").is_file()
    assert not (folder / "results").exists()  # nothing written beside the workflow
    # The stored tree is what the next run checks: it is up to date.
    again = snakemake("-n", "--cores", "1", "--configfile", "tiny.yaml", *storage, cwd=folder)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to be done" in again.stdout + again.stderr
