"""What every job asks for (mamlscope.cluster): a GPU locally as on a cluster, memory from
measured peaks, and the log without "Shell command: None"."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from workflow_tools import TINY, copy_workflow, snakemake

import mamlscope.cluster as cluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cuda(monkeypatch):
    """Set whether this process "sees" a GPU."""

    def set_cuda(available: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)

    return set_cuda


def executor(non_local: bool) -> SimpleNamespace:
    """A stand-in for Snakemake's workflow under a local or a cluster executor."""
    settings = SimpleNamespace(non_local_exec=non_local)
    return SimpleNamespace(executor_plugin=SimpleNamespace(common_settings=settings))


# --- GPU --------------------------------------------------------------------------------


@pytest.mark.parametrize("available", [True, False])
def test_auto_asks_for_the_gpu_this_machine_has(cuda, available):
    cuda(available)
    config = {"device": "auto", "cluster_gpu": False}
    assert cluster.wants_gpu(config) is available
    assert cluster.wants_gpu(config, executor(non_local=False)) is available


def test_explicit_devices_decide_whatever_the_machine_has(cuda):
    for available in (True, False):
        cuda(available)
        assert cluster.wants_gpu({"device": "cpu"}) is False
        assert cluster.wants_gpu({"device": "cuda:1"}) is True


def test_a_cluster_executor_ignores_the_submitting_machines_gpu(cuda):
    """The login node's GPU says nothing about the compute nodes: there `cluster_gpu`
    alone decides (profiles/slurm sets it)."""
    cuda(True)
    assert cluster.wants_gpu({"device": "auto"}, executor(non_local=True)) is False
    cuda(False)
    on_cluster = {"device": "auto", "cluster_gpu": True}
    assert cluster.wants_gpu(on_cluster, executor(non_local=True)) is True


def test_default_profile_caps_gpu_jobs_at_one():
    """With `device: auto` on a one-GPU machine, one model job at a time holds the GPU;
    `--resources gpu=N` (replacing the profile's list) lets N run."""
    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert profile["resources"]["gpu"] == 1
    assert profile["resources"]["download"] == 1
    # Snakemake also reads this profile beside `--profile profiles/slurm`: there a global
    # cap would let one GPU job run at a time on the whole cluster
    assert profile["set-resource-scopes"] == {"gpu": "local"}


# --- memory -----------------------------------------------------------------------------


def config_of(*archs: str, device: str = "cpu") -> dict:
    datasets = {f"d{i}": {"model": {"arch": arch}} for i, arch in enumerate(archs)}
    return {"device": device, "model": {"arch": "fc"}, "datasets": datasets}


def test_every_rule_of_the_workflow_has_a_measured_peak():
    """A rule added without a measurement would ask for nothing Snakemake can plan with."""
    text = "\n".join(p.read_text() for p in [REPO / "Snakefile", *REPO.glob("rules/*.smk")])
    rules = set(re.findall(r"^(?:rule|checkpoint) (\w+):", text, re.MULTILINE)) - {"all"}
    assert rules, "no rules found"
    assert sorted(rules - set(cluster.PEAK_MB)) == []
    assert sorted(set(cluster.PEAK_MB) - rules) == [], "a table entry for no rule"


def test_requests_are_the_peaks_with_headroom():
    fc, conv = config_of("fc"), config_of("fc", "conv4")
    for rule, (fc_peak, conv_peak) in cluster.PEAK_MB.items():
        small, large = cluster.mem_mb(rule, fc), cluster.mem_mb(rule, conv)
        assert small % 256 == 0 and large % 256 == 0
        assert 1.5 * fc_peak <= small < 1.5 * fc_peak + 256, rule
        assert large >= small, rule
        if conv_peak is not None:
            assert 1.5 * conv_peak <= large, rule
    # a conv net's model jobs take more; jobs that only read tables do not
    assert cluster.mem_mb("train", conv) > cluster.mem_mb("train", fc)
    assert cluster.mem_mb("extract_activations", conv) > cluster.mem_mb("extract_activations", fc)
    assert cluster.mem_mb("summarize_runs", conv) == cluster.mem_mb("summarize_runs", fc)


def test_gpu_jobs_add_the_cuda_host_memory(cuda):
    cuda(True)
    on_gpu, on_cpu = config_of("fc", device="auto"), config_of("fc", device="cpu")
    extra = cluster.GPU_EXTRA_MB
    assert cluster.mem_mb("train", on_gpu) == cluster.mem_mb("train", on_cpu) + extra
    assert cluster.mem_mb("report", on_gpu) == cluster.mem_mb("report", on_cpu)


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match="'my_rule'.*PEAK_MB"):
        cluster.mem_mb("my_rule", config_of("fc"))


# --- the log ----------------------------------------------------------------------------


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord("snakemake", logging.INFO, __file__, 1, "msg", None, None)
    rec.__dict__.update(extra)
    return rec


def test_empty_shell_commands_are_dropped_and_real_ones_kept():
    from snakemake.logging import logger
    from snakemake_interface_logger_plugins.common import LogEvent

    before = list(logger.filters)
    try:
        cluster.hide_empty_shell_commands()
        cluster.hide_empty_shell_commands()  # once only
        added = [f for f in logger.filters if f not in before]
        assert len(added) == 1
        assert not logger.filter(record(event=LogEvent.SHELLCMD, shellcmd=None))
        assert logger.filter(record(event=LogEvent.SHELLCMD, shellcmd="echo hi > b.txt"))
        assert logger.filter(record(event=LogEvent.JOB_INFO, shellcmd=None))
        assert logger.filter(record())
    finally:
        for f in list(logger.filters):
            if f not in before:
                logger.removeFilter(f)


SNAKEFILE = """
import mamlscope.cluster
if config.get("hide"):
    mamlscope.cluster.hide_empty_shell_commands()

rule all:
    input: "a.txt", "b.txt"

rule a:
    output: "a.txt"
    script: "write.py"

rule b:
    output: "b.txt"
    shell: "echo hi > {output}"
"""


@pytest.mark.slow
def test_snakemake_prints_shell_commands_but_not_none(tmp_path):
    """A script rule and a shell rule run with -p: the filter removes exactly the
    "Shell command: None" Snakemake prints for the script rule."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "write.py").write_text("open(snakemake.output[0], 'w').write('x')\n")
    plain = snakemake("-c1", "-p", "-n", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "Shell command: None" in plain.stdout + plain.stderr  # Snakemake by itself
    done = snakemake("-c1", "-p", "--config", "hide=1", cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, done.stderr
    assert "Shell command: None" not in log
    assert "Shell command: echo hi > b.txt" in log
    assert (tmp_path / "a.txt").read_text() == "x"


@pytest.mark.workflow
def test_the_default_profile_prints_no_empty_shell_command(tmp_path):
    """The workflow's dry run with its own profile (printshellcmds: true): every rule is a
    script rule, and no job shows "Shell command: None"."""
    wf = copy_workflow(tmp_path)
    (wf / "tiny.yaml").write_text(TINY)
    result = snakemake("-n", "--configfile", "tiny.yaml", cwd=wf)
    assert result.returncode == 0, result.stderr
    assert "Using workflow specific profile profiles/default" in result.stdout + result.stderr
    assert "rule train:" in result.stdout + result.stderr
    assert "Shell command: None" not in result.stdout + result.stderr
