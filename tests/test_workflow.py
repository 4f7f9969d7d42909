"""The Snakemake workflow: a dry run of the default config, and the data rules for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow files in a fresh folder, so results land in tmp_path."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("rules", "scripts", "config", "envs", "profiles", "report"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, tmp_path / name)
    return tmp_path


@pytest.mark.workflow
def test_dry_run_of_default_config(workdir: Path):
    result = snakemake("-n", "--cores", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    for rule in ("prepare_dataset", "split_dataset"):
        assert rule in out
    prepare = [b for b in out.split("\n\n") if "rule prepare_dataset:" in b]
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
    assert "results/digitsonly/data" in result.stdout
    assert "mnist5k" not in result.stdout


@pytest.mark.workflow
@pytest.mark.slow
def test_data_rules_run_on_default_config(workdir: Path):
    result = snakemake("--cores", "2", "--until", "split_dataset", cwd=workdir)
    assert result.returncode == 0, result.stderr[-4000:]
    data = workdir / "results" / "mnist5k" / "data"
    assert {p.name for p in data.iterdir()} == {"images.npy", "index.parquet", "meta.json"}
    index = pd.read_parquet(data / "index.parquet")
    assert len(index) == 5000
    for seed in (0, 1):
        split = workdir / "results" / "mnist5k" / "split" / f"seed{seed}"
        test = pd.read_parquet(split / "episodes_test.parquet")
        assert test["episode"].nunique() == 600
        assert len(test) == 600 * 5 * (1 + 15)
    # A second run finds everything up to date.
    again = snakemake("-n", "--cores", "2", "--until", "split_dataset", cwd=workdir)
    assert again.returncode == 0
    assert "total        0" in again.stdout + again.stderr


@pytest.mark.workflow
def test_slurm_profile_asks_a_gpu_for_training(workdir: Path):
    result = snakemake("-n", "--profile", "profiles/slurm", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:]
    blocks = result.stdout.split("\n\n")
    train = [b for b in blocks if "rule train:" in b or "localrule train:" in b]
    prepare = [b for b in blocks if "rule prepare_dataset:" in b]
    assert train and all("gpu=1" in b for b in train)
    assert prepare and all("gpu=1" not in b for b in prepare)
