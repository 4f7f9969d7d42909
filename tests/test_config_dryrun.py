"""`snakemake -n` stops on episodes that cannot fit a pool, for every protocol, before any job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
@pytest.mark.parametrize(
    ("split", "episodes", "message"),
    [
        (
            "{protocol: classes, train: 6, val: 2}",
            "{way: 3, shot: 1}",
            "datasets.d.episodes.way: 3 classes per episode, but pool 'val' will have only 2",
        ),
        (
            "{protocol: classes, train: 6, val: 2}",
            "{way: 2, shot: 160, query: 15}",
            "datasets.d.episodes.shot + datasets.d.episodes.query: 160 + 15 = 175",
        ),
        (
            "{protocol: examples}",
            "{way: 5, shot: 20, query: 16}",
            "only 35 in pool 'val'",
        ),
    ],
)
def test_dry_run_stops_on_episodes_that_cannot_fit(
    workdir: Path, split: str, episodes: str, message: str
):
    (workdir / "bad.yaml").write_text(
        f"datasets:\n  d:\n    source: digits\n    split: {split}\n    episodes: {episodes}\n"
    )
    result = snakemake("-n", "--cores", "1", "--configfile", "bad.yaml", cwd=workdir)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (workdir / "results").exists()
