"""The numbers printed in docs/results.md and README.md, written by a command, never typed.

A number typed into a document goes stale the moment the code or the machine changes: a
fresh clone on another CPU model gives other numbers (its floating-point kernels round
differently, and training compounds the difference). So each printed table is a block of
Markdown between ``<!-- results:{name}:begin -->`` and ``<!-- results:{name}:end -->``,
written from a results tree and its config by ``mamlscope results-doc`` (``make
results-doc``), and it says what made it: the CPU model, torch, mamlscope and the commit.

The blocks reuse the report's computations (:mod:`mamlscope.report.results`,
:mod:`mamlscope.report.analyses`), so the documents and ``report.html`` never disagree:

- the accuracy table per dataset: seeds pooled per episode (1.96 * std / sqrt(n)), the
  Student t interval over the seed means beside it, the per-seed means;
- the verdicts (rapid learning or feature reuse) with the paired difference they rest on;
- MAML against the baseline like for like, under both BatchNorm pairings.
"""

from __future__ import annotations

import difflib
import math
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd

from mamlscope import __version__
from mamlscope.errors import DataError, MamlscopeError
from mamlscope.methods import label as method_label
from mamlscope.report.analyses import fmt_difference, like_for_like_of, verdicts_of
from mamlscope.report.cells import accuracy_cell, over_seeds, pct, plain_cells, seed_cells
from mamlscope.report.results import Results, pooled_accuracy
from mamlscope.report.verdicts import classes_of
from mamlscope.runtime import cpu_model

ACCURACY = "accuracy"
PARTS = (ACCURACY, "verdicts", "like-for-like")
# What a run of the workflow leaves that every block reads, and what only the analyses
# blocks read (load_results names the per-run files itself).
NEEDED = {ACCURACY: ("runs.parquet",), "analyses": ("runs.parquet", "episodes.parquet")}
PACKAGE = Path(__file__).resolve().parent


class DocError(MamlscopeError, ValueError):
    """A document lacks a block's markers, or holds them out of order; names both."""


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of block ``name``."""
    return f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"


def git_commit(folder: Path = PACKAGE) -> str | None:
    """The short commit checked out at ``folder``, with "+ uncommitted changes" when the
    tracked files differ from it (Markdown files aside: the documents this command writes
    change no result); None outside a git checkout."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git(
            "status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)*.md"
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" + uncommitted changes" if dirty else "")


def _recorded(runs: pd.DataFrame, column: str) -> str | None:
    """The values of ``column`` over every run (joined), None when no run records it."""
    if column not in runs.columns:
        return None
    found = sorted({str(v) for v in runs[column].dropna()})
    return ", ".join(found) or None


def machine_line(results: Results | None = None) -> str:
    """What made the numbers: CPU model, logical cores, torch, mamlscope and the commit.

    A value the results record (their run table's ``cpu``, ``torch``, ``version``,
    ``commit`` and ``device`` columns) is taken from them; the rest is this machine's and
    the working tree's, and the line says so.
    """
    import torch

    runs = results.runs if results is not None else pd.DataFrame()
    cpu, torch_version = _recorded(runs, "cpu"), _recorded(runs, "torch")
    unrecorded = [what for what, found in (("CPU", cpu), ("torch", torch_version)) if not found]
    here = (
        f" ({' and '.join(unrecorded)} of the machine that wrote this block: the results do "
        "not record them)"
        if unrecorded
        else ""
    )
    version = _recorded(runs, "version") or f"{__version__} (installed; the results record none)"
    commit = _recorded(runs, "commit")
    if commit is None:
        head = git_commit()
        commit = (
            f"{head} (the working tree's HEAD when this block was written; the results "
            "record no commit)"
            if head
            else "unknown (the results record none and the code is not a git checkout)"
        )
    device = _recorded(runs, "device")
    return (
        f"Made on {cpu or cpu_model()} ({os.cpu_count()} logical cores) with torch "
        f"{torch_version or torch.__version__}{here}; mamlscope {version}; commit {commit}"
        + (f"; device {device}" if device else "")
        + "."
    )


def reproducibility_sentence() -> str:
    """Which differences to expect on rerunning: the reason the machine line is there."""
    return (
        "Another CPU model moves these numbers within their intervals (its floating-point "
        "kernels round differently, and training compounds that); the same CPU model, torch "
        "version and commit reproduce them to the digit. `make results-doc` rewrites them "
        "from a results tree."
    )


def _cell(value: object) -> str:
    """A Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table (every value as text)."""
    lines = [
        "| " + " | ".join(_cell(c) for c in frame.columns) + " |",
        "| " + " | ".join("---" for _ in frame.columns) + " |",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.to_numpy()]
    return "\n".join(lines)


def classes_tested(results: Results, dataset: str) -> str:
    """``seen``/``unseen``: as the analyses recorded it, else from the split protocol."""
    found = classes_of(results.analyses, dataset) if len(results.analyses) else "unknown"
    if found != "unknown":
        return found
    protocol = results.config["datasets"][dataset]["split"]["protocol"]
    return "unseen" if protocol == "classes" else "seen"


def accuracy_tables(results: Results) -> str:
    """Per dataset: method, test classes, BatchNorm at test, the pooled mean with its 95%
    interval over episodes and seeds, the t interval over seed means, the per-seed means
    and (for methods that report it) plain test accuracy per seed."""
    pooled = pooled_accuracy(results)
    parts = []
    for dataset in results.datasets:
        rows = pooled[pooled["dataset"] == dataset]
        classes = classes_tested(results, dataset)
        first = rows.iloc[0]
        seeds = int(first["seeds"])
        parts.append(
            f"**{dataset}**: {first['way']}-way {first['shot']}-shot, test classes {classes} "
            f"in training, {seeds} seed{'s' if seeds != 1 else ''} x "
            f"{first['episodes'] // max(seeds, 1)} test episodes."
        )
        table = pd.DataFrame(
            {
                "method": [method_label(m) for m in rows["method"]],
                "test classes": classes,
                "BatchNorm at test": rows["batchnorm"],
                "accuracy, pooled (95% CI)": [
                    accuracy_cell(r.mean, r.ci95, r.missing, r.episodes) for r in rows.itertuples()
                ],
                "across seeds (95% t)": [
                    over_seeds(s, lo, hi)
                    for s, lo, hi in zip(
                        rows["seed_means"], rows["seed_low"], rows["seed_high"], strict=True
                    )
                ],
                "per seed": [
                    seed_cells(m, k)
                    for m, k in zip(rows["seed_means"], rows["seed_missing"], strict=True)
                ],
                "plain test accuracy, per seed": [plain_cells(p) for p in rows["plain_seeds"]],
            }
        )
        parts.append(markdown_table(table))
    return "\n\n".join(parts)


def _across(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "missing"
    return fmt_difference(mean, low, high) if math.isfinite(low) else "one seed"


def verdict_table(results: Results) -> str:
    """One row per (dataset, inner-loop method, BatchNorm mode): the verdict, its criterion
    and the paired difference it rests on (at the level the criterion names)."""
    found = verdicts_of(results)
    if found.empty:
        return "No verdicts: `episodes.parquet` holds no analyses of these runs."
    table = pd.DataFrame(
        {
            "dataset": found["dataset"],
            "classes": found["classes"],
            "method": [method_label(m) for m in found["method"]],
            "BatchNorm": found["batchnorm"],
            "verdict": found["verdict"],
            "criterion": found["criterion"],
            "compared": found["comparison"].fillna(""),
            "paired difference, points [interval]": [
                ""
                if not math.isfinite(r.difference)
                else f"{fmt_difference(r.difference, r.low, r.high)} ({100 * r.level:.4g}%)"
                for r in found.itertuples()
            ],
            "across seeds (95% t)": [
                ""
                if not math.isfinite(r.difference)
                else _across(r.difference, r.seed_low, r.seed_high)
                for r in found.itertuples()
            ],  # fmt: skip
        }
    )
    return markdown_table(table)


def like_for_like_table(results: Results) -> str:
    """Each meta method's full adaptation against the baseline's fresh head under the same
    BatchNorm protocol, both pairings, paired on (seed, episode)."""
    found = like_for_like_of(results)
    if found.empty:
        return "No like-for-like comparison: `episodes.parquet` holds no analyses of these runs."
    table = pd.DataFrame(
        {
            "dataset": found["dataset"],
            "classes": found["classes"],
            "method": [method_label(m) for m in found["method"]],
            "against": [method_label(m) for m in found["baseline"]],
            "pairing": found["pairing"],
            "BatchNorm (method / baseline)": found["method_batchnorm"]
            + " / "
            + found["baseline_batchnorm"],
            "method, baseline (seed means)": [
                "" if r.missing else f"{pct(r.method_mean)}, {pct(r.baseline_mean)}"
                for r in found.itertuples()
            ],
            "paired difference, points (95% CI)": [
                r.missing or fmt_difference(r.difference, r.low, r.high) for r in found.itertuples()
            ],
            "across seeds (95% t)": [
                "" if r.missing else _across(r.difference, r.seed_low, r.seed_high)
                for r in found.itertuples()
            ],
            "pairs": ["" if r.missing else f"{int(r.pairs):,}" for r in found.itertuples()],
        }
    )
    return markdown_table(table)


def require_results(root: str | os.PathLike[str], only: str | None = None) -> None:
    """Refuse a results tree without the files the blocks read, naming the first missing."""
    for name in NEEDED[ACCURACY if only == ACCURACY else "analyses"]:
        path = Path(root) / name
        if not path.is_file():
            raise DataError(f"{path} is missing: run the workflow first (snakemake)")


def results_block(results: Results, made_by: str, only: str | None = None) -> str:
    """The whole block: who wrote it, the machine line, the accuracy tables, then (unless
    ``only == "accuracy"``) the verdicts and like-for-like tables, and the sentence on
    reproducing them. ``made_by``: the command, quoted in the block's first line."""
    if only not in (None, ACCURACY):
        raise ValueError(f"only must be None or {ACCURACY!r}, got {only!r}")
    parts = [
        f"<!-- written by `make results-doc` ({_cell(made_by)}); edits here are overwritten -->",
        machine_line(results),
        accuracy_tables(results),
    ]
    if only is None:
        parts += [
            "Rapid learning or feature reuse (verdicts; `docs/report.md` says how each is "
            "decided):",
            verdict_table(results),
            "MAML against the baseline, like for like (the same BatchNorm protocol on both sides):",
            like_for_like_table(results),
        ]
    parts.append(reproducibility_sentence())
    return "\n\n".join(parts)


def _find(text: str, doc: Path, name: str) -> tuple[int, int]:
    """The span between the block's markers (exclusive); a DocError names what is wrong."""
    begin, end = markers(name)
    for marker in (begin, end):
        count = text.count(marker)
        if count != 1:
            what = "lacks" if count == 0 else f"holds {count} times"
            raise DocError(f"{doc} {what} the marker {marker}: add the pair {begin} / {end}")
    start, stop = text.index(begin) + len(begin), text.index(end)
    if stop < start:
        raise DocError(f"{doc}: the marker {end} comes before {begin}")
    return start, stop


def read_block(doc_path: str | os.PathLike[str], name: str) -> str:
    """The text between block ``name``'s markers, without the line breaks around it."""
    doc = Path(doc_path)
    if not doc.is_file():
        raise DocError(f"{doc} is missing: no document to read block {name!r} from")
    text = doc.read_text()
    start, stop = _find(text, doc, name)
    return text[start:stop].strip("\n")


def write_block(doc_path: str | os.PathLike[str], name: str, text: str) -> str:
    """Replace what lies between block ``name``'s markers with ``text`` (the markers and
    everything outside them kept) and return what was there. The file is replaced
    atomically with its permissions, so a reader never finds it half written."""
    from mamlscope.io import atomic_path

    doc = Path(doc_path)
    if not doc.is_file():
        raise DocError(f"{doc} is missing: no document to write block {name!r} into")
    old = doc.read_text()
    start, stop = _find(old, doc, name)
    body = text.strip("\n")
    new = old[:start] + "\n" + (body + "\n" if body else "") + old[stop:]
    if new != old:
        with atomic_path(doc) as tmp:
            tmp.write_text(new)
            shutil.copymode(doc, tmp)
    return old[start:stop].strip("\n")


def block_diff(old: str, new: str, doc: str, name: str) -> str:
    """A unified diff of a block's text before and after, for the command to print."""
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), f"{doc} ({name}, before)", f"{doc} ({name})",
        lineterm="",
    )  # fmt: skip
    return "\n".join(lines)
