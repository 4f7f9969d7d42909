"""What the workflow checks and says when its jobs go to SLURM (profiles/slurm).

Called from the workflow's ``onstart`` (rules/common.smk), so only in the Snakemake process
that submits jobs, and only for a real run (not a dry run, not inside a job):

- the job status command must work, or Snakemake waits forever in silence: the executor
  plugin prefers ``sacct``, which fails on every query where SLURM accounting is off, and
  reports that at debug level only. A failing command stops the run with what to set.
- ``device: auto`` without ``cluster_gpu`` asks for no GPU: said once, with the fix.
- while jobs wait in the queue or run, a line every few minutes says how many and where
  their logs are (Snakemake itself prints nothing until a job ends).
"""

from __future__ import annotations

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


def wants_gpu(config: Mapping[str, Any]) -> bool:
    """Whether training and evaluation jobs ask the cluster for a GPU: ``device: cuda``
    always, ``cpu`` never, ``auto`` where the profile says the cluster has GPUs."""
    device = str(config.get("device", "auto"))
    return device.startswith("cuda") or (device == "auto" and bool(config.get("cluster_gpu")))


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
