"""What the workflow checks and says when its jobs go to SLURM (profiles/slurm).

Called from the workflow's ``onstart`` (rules/common.smk), so only in the Snakemake process
that submits jobs, and only for a real run (not a dry run, not inside a job):

- the job status command must work, or Snakemake waits forever in silence: the executor
  plugin prefers ``sacct``, which fails on every query where SLURM accounting is off, and
  reports that at debug level only. A failing command stops the run with what to set.
- ``device: auto`` without ``cluster_gpu`` asks for no GPU: said once, with the fix.
- while jobs wait in the queue or run, a line every few minutes says how many and where
  their logs are (Snakemake itself prints nothing until a job ends).

And what every run's jobs ask for, on a cluster and locally alike: a GPU (`wants_gpu`, so
`--resources gpu=N` lets N GPU jobs run at once on a workstation), memory (`mem_mb`, from
measured peaks), and no "Shell command: None" line for the script rules
(`hide_empty_shell_commands`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

HEARTBEAT_ENV = "MAMLSCOPE_SLURM_HEARTBEAT"  # seconds between wait messages; 0: none
HEARTBEAT_SECONDS = 300


FLAGS = ("cluster_gpu", "cluster_localrules")


def parse_flags(config: dict[str, Any]) -> None:
    """`--config cluster_gpu=true` (how a profile sets a key) hands over the text 'true':
    make these flags booleans in place; anything else is left for the schema to refuse."""
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    for key in FLAGS:
        value = config.get(key)
        if isinstance(value, str) and value.strip().lower() in words:
            config[key] = words[value.strip().lower()]


def _runs_elsewhere(workflow: Any) -> bool:
    """Whether jobs run on other machines (a cluster executor), not in this process's."""
    plugin = getattr(workflow, "executor_plugin", None)
    return bool(getattr(getattr(plugin, "common_settings", None), "non_local_exec", False))


def wants_gpu(config: Mapping[str, Any], workflow: Any = None) -> bool:
    """Whether the model jobs (training, evaluation, extraction, analyses) ask for a GPU:
    ``device: cuda`` always, ``cpu`` never; ``auto`` where the profile says the cluster has
    GPUs (``cluster_gpu``) and, run locally, where this process sees one
    (``torch.cuda.is_available()``): there every job would pick that GPU, so each declares
    it and ``--resources gpu=N`` caps how many share the N GPUs. ``workflow``: Snakemake's;
    under a cluster executor the submitting machine's GPU says nothing about the nodes."""
    device = str(config.get("device", "auto"))
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    if config.get("cluster_gpu"):
        return True
    if _runs_elsewhere(workflow):
        return False
    import torch  # the Snakefile has imported it already (mamlscope.features.studies)

    return bool(torch.cuda.is_available())


# --- memory per job ------------------------------------------------------------------------

# Peak resident memory (`max_rss`, MB, of each rule's `*.benchmark.tsv`; the largest job of
# the rule) on this project's 2-core Xeon, CPU only, torch 2.14.1: (fc, conv4), from
#   A: config.yaml at 448a350 (`make run`, 2026-12-01): mnist5k by examples and by
#      classes, fc, baseline and maml, two seeds, 53 jobs;
#   B: config.yaml at 41747e6 (2026-12-01): mnist5k by examples, fc, baseline, maml,
#      fomaml and maml-fd, two seeds, 600 test episodes;
#   C: config/omniglot-small.yaml at fdf23a6 (2026-12-01, the jobs done by 17:20): conv4,
#      5-way 1-shot, meta-batch 16, six methods.
# conv4 None: not measured yet (`_conv_peak` says what stands in).
PEAK_MB: dict[str, tuple[int, int | None]] = {
    "prepare_dataset": (1079, 640),  # B; C (Omniglot's 968 classes of 28x28)
    "split_dataset": (137, 104),  # A; C
    "train": (2002, 3052),  # B fomaml (A: 1263); C maml
    "evaluate": (2095, 3173),  # B maml-fd (A: 1978); C maml
    "analyze": (2019, 3965),  # A maml; C anil
    "gather_episodes": (866, None),  # A
    "summarize_runs": (142, None),  # A
    "choose_probe": (848, None),  # B
    "extract_activations": (1175, None),  # A
    "plot_features": (1297, None),  # A
    "compare_methods": (1077, None),  # B
    "cka": (1103, None),  # A
    "rulegraph": (1836, None),  # A
    "report": (2013, None),  # A
}
# Jobs that hold a model and its activations (the rest read tables and draw figures).
MODEL_RULES = frozenset(
    {"train", "evaluate", "analyze", "extract_activations", "cka", "plot_features"}
)
# conv4 over fc where both were measured: train 1.52, evaluate 1.51, analyze 1.96.
CONV_FACTOR = 2.0
# Rules that run on the GPU when the job asks for one (rules/*.smk: gpu=gpu_resources).
GPU_RULES = frozenset({"train", "evaluate", "analyze", "extract_activations"})
# Host memory a CUDA process adds (the CUDA libraries and context): an estimate, not
# measured (no GPU run has written benchmark files yet); replace it from the first one.
GPU_EXTRA_MB = 2048
HEADROOM = 1.5
ROUND_MB = 256


def _with_headroom(peak: float) -> int:
    return int(math.ceil(HEADROOM * peak / ROUND_MB)) * ROUND_MB


def _conv_peak(rule: str, fc: int, conv: int | None) -> float:
    """A conv net's peak: the larger measurement (a data job's memory follows the source,
    not the network), or, unmeasured, the fc peak scaled for a model job."""
    if conv is not None:
        return max(fc, conv)
    return fc * CONV_FACTOR if rule in MODEL_RULES else fc


# The table the rules use: (fc, conv) peaks with headroom (1.5x, rounded up to 256 MB).
RULE_MEM_MB: dict[str, tuple[int, int]] = {
    rule: (_with_headroom(fc), _with_headroom(_conv_peak(rule, fc, conv)))
    for rule, (fc, conv) in PEAK_MB.items()
}


def _convolutional(config: Mapping[str, Any]) -> bool:
    """Whether any dataset trains a network other than ``fc`` (conv4 and larger ones)."""
    datasets = config.get("datasets") or {}
    archs = {str((ds.get("model") or {}).get("arch", "fc")) for ds in datasets.values()}
    top = str((config.get("model") or {}).get("arch", "fc"))
    return any(arch != "fc" for arch in archs | {top})


def mem_mb(rule: str, config: Mapping[str, Any]) -> int:
    """The ``mem_mb`` a rule's jobs declare: the measured peak (`PEAK_MB`) with 50%
    headroom, for conv nets when any dataset of ``config`` (the validated workflow config)
    trains one, plus `GPU_EXTRA_MB` for a model job that asks for a GPU. So that
    ``--resources mem_mb=N`` keeps a workstation's jobs within N and a cluster gets
    requests its jobs fit in. Networks larger than conv4 (resnet12) were not measured."""
    if rule not in RULE_MEM_MB:
        raise ValueError(
            f"no memory measured for rule {rule!r}: add its peak to "
            f"mamlscope.cluster.PEAK_MB (known: {', '.join(sorted(RULE_MEM_MB))})"
        )
    fc, conv = RULE_MEM_MB[rule]
    mb = conv if _convolutional(config) else fc
    if rule in GPU_RULES and wants_gpu(config):
        mb += GPU_EXTRA_MB
    return mb


# --- the log -------------------------------------------------------------------------------


class _NoEmptyShellCommand(logging.Filter):
    """Drops Snakemake's shell-command records that carry no command."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            getattr(record, "event", None) == self.event and not record.__dict__.get("shellcmd")
        )


def hide_empty_shell_commands() -> None:
    """Snakemake 9 prints "Shell command: None" under every job of a ``script:`` rule when
    ``printshellcmds`` is on (the profiles set it, for ``shell:`` rules): drop those lines,
    keep every real command. Call once from the Snakefile; a second call adds nothing."""
    from snakemake.logging import logger
    from snakemake_interface_logger_plugins.common import LogEvent

    if not any(isinstance(f, _NoEmptyShellCommand) for f in logger.filters):
        logger.addFilter(_NoEmptyShellCommand(LogEvent.SHELLCMD))


def _is_slurm(workflow: Any) -> bool:
    plugin = getattr(workflow, "executor_plugin", None)
    return getattr(plugin, "name", None) == "slurm"


def status_command(settings: Any) -> str:
    """The status command the SLURM executor plugin will really use (its own fallbacks:
    squeue -> sacct when MinJobAge is under 3 x the first check's delay, sacct -> squeue
    when sacct is missing)."""
    from snakemake_executor_plugin_slurm.job_status_query import get_min_job_age

    command = getattr(settings, "status_command", None) or "sacct"
    first = getattr(settings, "init_seconds_before_status_checks", None) or 40
    has_sacct = shutil.which("sacct") is not None
    if command == "squeue" and has_sacct:
        min_job_age = get_min_job_age()
        if min_job_age is None or min_job_age < 3 * first:
            command = "sacct"
    if command == "sacct" and not has_sacct:
        command = "squeue"
    return command


def _run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 1, "", str(exc))


def check_status_command(command: str, run: Callable[..., Any] = _run) -> None:
    """Query once as the plugin will; a failure stops the run with the fix (the plugin
    would retry it forever and log the failures at debug level only)."""
    from snakemake_interface_common.exceptions import WorkflowError

    if command == "sacct":
        args = ["sacct", "-X", "--parsable2", "--noheader", "--format=JobIdRaw,State"]
        args += ["--starttime", "now-1hours", "--endtime", "now"]
    else:
        args = ["squeue", "--noheader", "--states=all", "--format=%i|%T", "--me"]
    result = run(args)
    if result.returncode == 0:
        return
    error = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
    if command == "sacct":
        raise WorkflowError(
            f"SLURM job status queries with 'sacct' fail here ({error}): SLURM accounting "
            "(slurmdbd) is off or unreachable, and Snakemake would wait forever for its "
            "jobs. Use squeue: `slurm-status-command: squeue` in the profile "
            "(profiles/slurm sets it) or --slurm-status-command squeue; if the plugin still "
            "picks sacct, MinJobAge (scontrol show config) is under 3 x "
            "--slurm-init-seconds-before-status-checks: lower that setting."
        )
    raise WorkflowError(
        f"SLURM job status queries with 'squeue' fail here ({error}); Snakemake could not "
        "follow its jobs. Is this a SLURM login node (sinfo, squeue work)?"
    )


def _run_uuid(workflow: Any) -> str | None:
    """The job name the plugin gives every job of this run (None if it cannot be found)."""
    executor = getattr(getattr(workflow, "scheduler", None), "_executor", None)
    uuid = getattr(executor, "run_uuid", None)
    return str(uuid) if uuid else None


def queue_summary(run_uuid: str | None, run: Callable[..., Any] = _run) -> str | None:
    """One line on this run's SLURM jobs (None when it has none queued or running)."""
    args = ["squeue", "--noheader", "--format=%T|%r"]
    args += ["--name", run_uuid] if run_uuid else ["--me"]
    result = run(args)
    if result.returncode != 0:
        error = (result.stderr or result.stdout).strip()
        return f"squeue fails ({error}); job states cannot be followed until it works again"
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for line in result.stdout.splitlines():
        state, _, reason = line.partition("|")
        if state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
            states[state] += 1
            if state == "PENDING" and reason and reason != "None":
                reasons[reason] += 1
    if not states:
        return None
    parts = [f"{n} {state.lower()}" for state, n in states.most_common()]
    why = f" (waiting for: {', '.join(reasons)})" if reasons else ""
    which = f"squeue --name {run_uuid}" if run_uuid else "squeue --me"
    return (
        f"SLURM jobs of this run: {', '.join(parts)}{why}; `{which}` lists them, "
        "their logs are in .snakemake/slurm_logs/ and each rule's log: under results/"
    )


def _heartbeat(workflow: Any, every: float, say: Callable[[str], None]) -> None:
    while True:
        time.sleep(every)
        line = queue_summary(_run_uuid(workflow))
        if line:
            say(f"[mamlscope {time.strftime('%H:%M:%S')}] {line}")


def on_start(workflow: Any, config: Mapping[str, Any]) -> None:
    """The checks and the wait messages above; nothing unless the executor is SLURM."""
    if not _is_slurm(workflow):
        return
    from snakemake.logging import logger

    check_status_command(status_command(workflow.executor_settings))
    if config.get("device") == "auto" and not config.get("cluster_gpu"):
        logger.warning(
            "device: auto and cluster_gpu false: training and evaluation ask SLURM for no "
            "GPU and run on CPU. For GPUs set device: cuda in your config, or keep "
            "cluster_gpu=true in the profile's config: list (a --config on the command "
            "line replaces that list)."
        )
    every = float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_SECONDS))
    if every > 0:
        thread = threading.Thread(
            target=_heartbeat,
            args=(workflow, every, logger.info),
            name="mamlscope-slurm-heartbeat",
            daemon=True,
        )
        thread.start()
