"""Running Snakemake in a copy of the workflow, and reading what a dry run plans.

Shared by the workflow tests (test_workflow, test_report_workflow, test_slurm, the plug-in
test) and the session's tiny pipeline in conftest.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY_CONFIG = Path(__file__).with_name("tiny.yaml")
TINY = TINY_CONFIG.read_text()
# Where tests/tiny.yaml's outputs land (`experiment: tiny`), and the default config's.
TINY_RESULTS = Path("results") / yaml.safe_load(TINY)["experiment"]
DEFAULT_RESULTS = Path("results/default")


def snakemake(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m snakemake ARGS`` in ``cwd`` (15 minutes at most), output captured."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=900
    )


def copy_workflow(dest: Path) -> Path:
    """The workflow files copied into ``dest``, so that results land there."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, dest / name)
    for name in ("rules", "scripts", "config", "envs", "profiles", "report"):
        if (REPO / name).exists():
            shutil.copytree(REPO / name, dest / name)
    return dest


def job_blocks(output: str) -> list[str]:
    """A ``snakemake -n`` output cut before each job's ``[date]`` line: one block per job
    (blank lines do not separate them once "Shell command: None" lines are filtered out)."""
    return re.split(r"\n(?=\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]\n)", output)


def planned_jobs(output: str) -> list[tuple[str, str]]:
    """(rule, method or '') of every job a ``snakemake -n`` output lists, but ``all``."""
    jobs = []
    for block in job_blocks(output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if not rule or rule.group(1) == "all":
            continue
        method = re.search(r"method=([\w-]+)", block)
        jobs.append((rule.group(1), method.group(1) if method else ""))
    return sorted(jobs)


def planned_wildcards(output: str) -> list[tuple[str, str]]:
    """(rule, its wildcards line) of every job a ``snakemake -n`` output lists, but ``all``."""
    found = []
    for block in job_blocks(output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if rule and rule.group(1) != "all":
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
            found.append((rule.group(1), wildcards.group(1) if wildcards else ""))
    return sorted(found)


def job_block(output: str, rule: str) -> str:
    """The first job block of ``rule`` in a ``snakemake -n`` output."""
    return next(b for b in job_blocks(output) if re.search(rf"rule {rule}:", b))
