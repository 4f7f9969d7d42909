"""The SLURM profile: what it asks for, the checks that replace a silent endless wait,
and (with MAMLSCOPE_SLURM_TEST=1, as root) a real one-node SLURM running the pipeline.

The real-cluster test is tests/slurm/run_slurm_test.sh; CI (.ci/run) runs it directly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake_interface_common.exceptions import WorkflowError
from workflow_tools import TINY, copy_workflow, snakemake

import mamlscope.cluster as cluster

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


def done(returncode: int = 0, stdout: str = "", stderr: str = ""):
    return lambda args, timeout=30: subprocess.CompletedProcess(args, returncode, stdout, stderr)


# --- the profile --------------------------------------------------------------------------


def test_profile_never_sets_the_device_and_polls_with_squeue():
    profile = yaml.safe_load(PROFILE.read_text())
    assert not any(item.startswith("device=") for item in profile["config"])
    assert "cluster_gpu=true" in profile["config"]
    assert profile["slurm-status-command"] == "squeue"
    assert profile["slurm-init-seconds-before-status-checks"] <= 15
    assert "runtime" in profile["set-resources"]["train"]


@pytest.mark.parametrize(
    ("device", "cluster_gpu", "gpu"),
    [
        ("cpu", True, False),  # the user's config wins over the profile
        ("cpu", False, False),
        ("cuda", False, True),
        ("cuda:1", True, True),
        ("auto", True, True),  # auto: the profile says the cluster has GPUs
        ("auto", False, False),
    ],
)
def test_gpu_request_follows_the_configured_device(device, cluster_gpu, gpu, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as on a CPU-only machine
    assert cluster.wants_gpu({"device": device, "cluster_gpu": cluster_gpu}) is gpu


def test_flags_given_as_text_become_booleans():
    config = {"cluster_gpu": "true", "cluster_localrules": "False", "device": "cpu"}
    cluster.parse_flags(config)
    assert config == {"cluster_gpu": True, "cluster_localrules": False, "device": "cpu"}
    odd = {"cluster_gpu": "maybe"}
    cluster.parse_flags(odd)
    assert odd == {"cluster_gpu": "maybe"}  # left for the schema to refuse


@pytest.mark.workflow
def test_a_cpu_config_under_the_slurm_profile_asks_for_no_gpu(tmp_path):
    """The reported bug: the profile's device=cuda overrode the user's device: cpu."""
    folder = copy_workflow(tmp_path)
    (folder / "tiny.yaml").write_text(TINY)
    result = snakemake("-n", "--profile", "profiles/slurm", "--configfile", "tiny.yaml", cwd=folder)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    blocks = [b for b in result.stdout.split("\n\n") if re.search(r"rule (train|evaluate):", b)]
    assert blocks and all("gpu=0" in b for b in blocks)
    train = next(b for b in blocks if "rule train:" in b)
    assert "runtime=240" in train  # the profile's per-rule runtime


# --- the checks at start ---------------------------------------------------------------------


def test_a_failing_sacct_stops_the_run_with_the_fix():
    error = "Slurm accounting storage is disabled"
    with pytest.raises(WorkflowError, match="slurm-status-command: squeue"):
        cluster.check_status_command("sacct", run=done(1, stderr=error))
    cluster.check_status_command("sacct", run=done(0, stdout="12|COMPLETED\n"))
    with pytest.raises(WorkflowError, match="squeue"):
        cluster.check_status_command("squeue", run=done(1, stderr="no controller"))


def test_the_status_command_is_the_one_the_plugin_will_use(monkeypatch):
    import snakemake_executor_plugin_slurm.job_status_query as query

    settings = SimpleNamespace(status_command="squeue", init_seconds_before_status_checks=10)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(query, "get_min_job_age", lambda: 300)
    assert cluster.status_command(settings) == "squeue"
    monkeypatch.setattr(query, "get_min_job_age", lambda: 20)  # under 3 x 10 s: sacct
    assert cluster.status_command(settings) == "sacct"
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "sacct" else name)
    assert cluster.status_command(settings) == "squeue"


def test_the_wait_message_counts_this_runs_jobs():
    out = "RUNNING|None\nPENDING|Resources\nPENDING|Priority\nCOMPLETED|None\n"
    line = cluster.queue_summary("abc", run=done(0, stdout=out))
    assert line.startswith("SLURM jobs of this run: 2 pending, 1 running")
    assert "Resources" in line and "squeue --name abc" in line
    assert cluster.queue_summary("abc", run=done(0, stdout="COMPLETED|None\n")) is None
    assert "squeue fails" in cluster.queue_summary(None, run=done(1, stderr="down"))


def test_nothing_happens_outside_slurm():
    workflow = SimpleNamespace(executor_plugin=SimpleNamespace(name="local"))
    cluster.on_start(workflow, {"device": "auto"})  # no squeue, no sacct, no thread


# --- a real SLURM ------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MAMLSCOPE_SLURM_TEST") != "1",
    reason="set MAMLSCOPE_SLURM_TEST=1 (as root) to start a one-node SLURM",
)
def test_the_pipeline_runs_on_a_real_one_node_slurm():
    script = REPO / "tests" / "slurm" / "run_slurm_test.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "PASS" in result.stdout
