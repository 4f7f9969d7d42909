"""Time the default workflow from clean results and show where the minutes go.

Copies the workflow files of this checkout (Snakefile, config.yaml, config/, rules/,
scripts/, report/, envs/, profiles/) into a scratch folder, runs ``snakemake --cores N``
there from empty results (the package imported from this checkout's ``src/``), and prints:

* the whole run: wall time, and user and system CPU time of Snakemake and every job
  (``getrusage`` of the finished process tree), with how busy that kept the cores;
* per rule: jobs, summed wall seconds (each job's Snakemake ``benchmark:`` file), summed
  user and system CPU seconds and page faults of the jobs' processes (the last line of
  each job's log, written by ``mamlscope.logs.logged``), the longest job.

    python benchmarks/workflow_time.py                      # --cores 2, a temporary folder
    python benchmarks/workflow_time.py --cores 4 --keep --workdir /tmp/wf
    python benchmarks/workflow_time.py --json out.json -- --config 'seeds=[0]'

Arguments after ``--`` go to snakemake. The user's ``results/`` is never touched.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a workflow run reads besides the installed package (copied whole when present).
WORKFLOW_FILES = ["Snakefile", "config.yaml", "config", "rules", "scripts", "report", "envs"]
PROFILE = "profiles/default"  # what `snakemake` run from the folder picks up by itself


def copy_workflow(dest: Path) -> None:
    """The workflow files of this checkout into ``dest`` (no results, no .snakemake)."""
    for name in [*WORKFLOW_FILES, PROFILE]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def rule_names(snakemake: str, workdir: Path, env: dict[str, str], extra: list[str]) -> list[str]:
    """The workflow's rule names (``snakemake --list-rules``), longest first."""
    out = subprocess.run(
        [snakemake, "--list-rules", *extra],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(names, key=len, reverse=True)


def rule_of(path: Path, rules: list[str]) -> str:
    """The rule a benchmark file belongs to: its name starts with the rule's name."""
    stem = path.name.removesuffix(".benchmark.tsv")
    for rule in rules:  # longest first: summarize_runs before a rule named summarize
        if re.fullmatch(rf"{re.escape(rule)}(_.*)?", stem):
            return rule
    return stem


USAGE = re.compile(r"process usage: (.*)$")


def job_usage(log: Path) -> dict[str, float]:
    """The job's own CPU time and page faults: the last line mamlscope.logs.logged writes."""
    if not log.exists():
        return {}
    lines = [m.group(1) for line in log.read_text().splitlines() if (m := USAGE.search(line))]
    if not lines:
        return {}
    return {k: float(v) for k, v in (item.split("=", 1) for item in lines[-1].split())}


def read_benchmarks(results: Path, rules: list[str]) -> list[dict[str, object]]:
    """One row per job: its rule, file, wall seconds ``s`` and Snakemake's ``cpu_time``, and
    the job's user/system seconds and page faults from the end of its log (the log beside
    the benchmark file: same name, ``.log``)."""
    rows = []
    for path in sorted(results.rglob("*.benchmark.tsv")):
        with open(path, newline="") as handle:
            records = list(csv.DictReader(handle, delimiter="\t"))
        usage = job_usage(path.with_name(path.name.removesuffix(".benchmark.tsv") + ".log"))
        for rec in records:  # one record per repeat (benchmark repeats default to 1)
            rows.append(
                {
                    "rule": rule_of(path, rules),
                    "file": str(path.relative_to(results.parent)),
                    "s": float(rec["s"]),
                    "cpu_time": _number(rec.get("cpu_time")),
                    "user_s": usage.get("user_s", math.nan),
                    "sys_s": usage.get("sys_s", math.nan),
                    "minor_faults": usage.get("minor_faults", math.nan),
                    "max_rss_mb": _number(rec.get("max_rss")),
                }
            )
    return rows


def _number(text: str | None) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # "NA" for a job too short to sample
        return math.nan


def per_rule(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Sums per rule, the rule with the most wall time first."""
    keys = ("wall_s", "cpu_time", "user_s", "sys_s", "minor_faults")
    source = {"wall_s": "s"}
    table: dict[str, dict[str, object]] = {}
    for row in rows:
        empty = {"rule": row["rule"], "jobs": 0, "max_s": 0.0, **dict.fromkeys(keys, 0.0)}
        entry = table.setdefault(str(row["rule"]), empty)
        entry["jobs"] += 1
        for key in keys:
            value = row[source.get(key, key)]
            entry[key] += 0.0 if math.isnan(value) else value
        entry["max_s"] = max(entry["max_s"], row["s"])
    return sorted(table.values(), key=lambda e: -e["wall_s"])


def run_workflow(snakemake: str, workdir: Path, cores: int, env: dict[str, str], extra: list[str]):
    """Run snakemake in ``workdir``; wall seconds, rusage of the whole process tree, rc."""
    log = open(workdir / "snakemake.log", "w")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [snakemake, "--cores", str(cores), *extra],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    rc = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.close()
    usage = {
        "user_s": after.ru_utime - before.ru_utime,
        "sys_s": after.ru_stime - before.ru_stime,
        "major_faults": after.ru_majflt - before.ru_majflt,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw,
        "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw,
    }
    return wall, usage, rc


def fmt_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"


def report(wall: float, usage: dict[str, float], cores: int, rows, table) -> str:
    cpu = usage["user_s"] + usage["sys_s"]
    lines = [
        f"whole run ({len(rows)} jobs with a benchmark file, --cores {cores}): "
        f"wall {fmt_time(wall)}, user {fmt_time(usage['user_s'])}, "
        f"sys {fmt_time(usage['sys_s'])} "
        f"(sys/user {usage['sys_s'] / max(usage['user_s'], 1e-9):.0%}), "
        f"cores busy {cpu / (wall * cores):.0%} of {cores}",
        f"page faults: {usage['minor_faults']:,.0f} minor, {usage['major_faults']:,.0f} major; "
        f"context switches: {usage['voluntary_switches']:,.0f} voluntary, "
        f"{usage['involuntary_switches']:,.0f} involuntary",
        "",
        "| rule | jobs | wall s | user s | sys s | page faults | longest job s | "
        "snakemake cpu_time s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in [*table, total_row(table)]:
        lines.append(
            f"| {e['rule']} | {e['jobs']} | {e['wall_s']:.1f} | {e['user_s']:.1f} | "
            f"{e['sys_s']:.1f} | {e['minor_faults']:,.0f} | {e['max_s']:.1f} | "
            f"{e['cpu_time']:.1f} |"
        )
    total = total_row(table)
    jobs_cpu = total["user_s"] + total["sys_s"]
    lines += [
        "",
        "wall, user, sys: sums over the rule's jobs (user and sys: each job's whole process, "
        "from the last line of its log; snakemake cpu_time: Snakemake's sampled figure, which "
        "misses up to 30 s at the end of each job).",
        f"Job wall time summed is {total['wall_s'] / wall:.2f}x the run's wall time (jobs "
        f"side by side); CPU outside the jobs (Snakemake itself, its scheduler, the "
        f"job's interpreter start-up): {cpu - jobs_cpu:.1f} s.",
    ]
    return "\n".join(lines)


def total_row(table: list[dict[str, object]]) -> dict[str, object]:
    total: dict[str, object] = {"rule": "**all jobs**", "max_s": 0.0}
    for key in ("jobs", "wall_s", "cpu_time", "user_s", "sys_s", "minor_faults"):
        total[key] = sum(e[key] for e in table)
    total["max_s"] = max((e["max_s"] for e in table), default=0.0)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", help="scratch folder (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--snakemake",
        default=str(Path(sys.executable).with_name("snakemake")),
        help="the snakemake executable (default: the one beside this Python)",
    )
    parser.add_argument("--json", help="write the run and per-rule numbers here")
    parser.add_argument("extra", nargs="*", help="after --: more snakemake arguments")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mamlscope-time-")).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / "Snakefile").exists():
            parser.error(f"{workdir} is not empty and holds no workflow copy; refusing to clear it")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    copy_workflow(workdir)
    env = dict(os.environ)
    # The jobs import mamlscope from this checkout, whatever the venv's install points at.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    try:
        rules = rule_names(args.snakemake, workdir, env, args.extra)
        command = " ".join(["snakemake", "--cores", str(args.cores), *args.extra])
        print(f"# timing {ROOT} in {workdir}: {command}")
        print(f"# load average before: {os.getloadavg()[0]:.2f}", flush=True)
        wall, usage, rc = run_workflow(args.snakemake, workdir, args.cores, env, args.extra)
        if rc != 0:
            log = workdir / "snakemake.log"
            print(f"snakemake failed (exit {rc}); its log: {log}", file=sys.stderr)
            args.keep = True
            return rc
        rows = read_benchmarks(workdir / "results", rules)
        table = per_rule(rows)
        print(f"# load average after: {os.getloadavg()[0]:.2f}")
        print(report(wall, usage, args.cores, rows, table))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            data = {"cores": args.cores, "wall_s": wall, **usage, "rules": table, "jobs": rows}
            Path(args.json).write_text(json.dumps(data, indent=2))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"# kept: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
