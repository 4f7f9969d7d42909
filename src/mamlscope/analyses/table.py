"""The long per-episode table: one row per (run, analysis, setting, BatchNorm mode, episode).

Its columns are a contract with whoever computes statistics on it (paired comparisons
across methods, seeds and analyses by episode number): :data:`COLUMNS` and their dtypes,
exactly. Accuracies are stored as exact fractions (hits / queries) so that the evaluation's
float32 numbers and the analyses' compare equal where they are the same computation.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mamlscope.io import atomic_path, read_json, read_parquet

# name -> dtype; the order is the column order of every table written.
COLUMNS: dict[str, str] = {
    "dataset": "str",
    "method": "str",
    "seed": "int64",
    "analysis": "str",
    "setting": "str",
    "batchnorm": "str",
    "episode": "int64",
    "accuracy": "float64",
    "classes": "str",
    "snapshot": "float64",
}
ANALYSES = ("evaluation", "freeze", "steps", "centroid", "finetune")
SORT = ["dataset", "method", "seed", "snapshot", "analysis", "setting", "batchnorm", "episode"]


def classes_of(protocol: str) -> str:
    """``"unseen"`` when the split protocol is ``"classes"`` (test classes never met in
    training), else ``"seen"``."""
    return "unseen" if protocol == "classes" else "seen"


def exact_fraction(accuracy: Iterable[float], queries: int) -> np.ndarray:
    """Accuracies rounded to the nearest multiple of ``1 / queries``, in float64."""
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    values = np.asarray(list(accuracy), dtype=np.float64)
    return np.rint(values * queries) / queries


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly :data:`COLUMNS`, in order and of their dtypes, sorted by
    :data:`SORT` (a stable sort, so equal keys keep their order), index reset. A missing
    column or an unknown analysis is a ValueError."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the per-episode table lacks the columns {missing}")
    unknown = sorted(set(frame["analysis"]) - set(ANALYSES))
    if unknown:
        raise ValueError(f"unknown analyses {unknown}; expected some of {list(ANALYSES)}")
    out = frame[list(COLUMNS)].astype(COLUMNS)
    return out.sort_values(SORT, kind="stable").reset_index(drop=True)


def run_rows(
    results: pd.DataFrame,
    *,
    dataset: str,
    method: str,
    seed: int,
    classes: str,
    queries: int,
    snapshot: float = 1.0,
) -> pd.DataFrame:
    """One run's table: ``results`` (analysis, setting, batchnorm, episode, accuracy) with
    the run's columns added and accuracies made exact fractions of ``queries``."""
    frame = results.assign(
        dataset=dataset,
        method=method,
        seed=int(seed),
        classes=classes,
        snapshot=float(snapshot),
        accuracy=exact_fraction(results["accuracy"], queries),
    )
    return typed(frame)


def evaluation_rows(
    summary: Mapping[str, object], episode_ids: Sequence[int], classes: str
) -> pd.DataFrame:
    """The run's own evaluation (``evaluation.json``) as rows of analysis ``"evaluation"``,
    setting ``"own"``, its BatchNorm mode as it reported it."""
    per_episode = list(summary["per_episode"])  # type: ignore[call-overload]
    if len(per_episode) != len(episode_ids):
        raise ValueError(
            f"{summary['method']} seed {summary['seed']} on {summary['dataset']}: its "
            f"evaluation has {len(per_episode)} episodes, but the test episodes number "
            f"{len(episode_ids)}; re-run its evaluation on the current split"
        )
    queries = int(summary["way"]) * int(summary["query"])  # type: ignore[call-overload]
    frame = pd.DataFrame(
        {
            "analysis": "evaluation",
            "setting": "own",
            "batchnorm": str(summary["batchnorm"]),
            "episode": np.asarray(episode_ids, dtype=np.int64),
            "accuracy": per_episode,
        }
    )
    return run_rows(
        frame,
        dataset=str(summary["dataset"]),
        method=str(summary["method"]),
        seed=int(summary["seed"]),  # type: ignore[call-overload]
        classes=classes,
        queries=queries,
    )


def episode_numbers(test_episodes: str | os.PathLike[str]) -> list[int]:
    """The numbers of the test episodes, ascending: the order evaluation feeds them in."""
    table = read_parquet(test_episodes, columns=["episode"])
    return np.unique(table["episode"].to_numpy(np.int64)).tolist()


def gather_episodes(
    *,
    analyses: Sequence[str | os.PathLike[str]],
    evaluations: Sequence[str | os.PathLike[str]],
    test_episodes: Mapping[str, str | os.PathLike[str]],
    protocols: Mapping[str, str],
    out: str | os.PathLike[str],
) -> pd.DataFrame:
    """Every run's analyses and its own evaluation in one table, written to ``out``.

    ``test_episodes`` and ``protocols`` by dataset name: the episode numbers the
    evaluation's per-episode list follows, and whether the test classes are unseen.
    """
    frames = [read_parquet(path) for path in analyses]
    ids = {name: episode_numbers(path) for name, path in test_episodes.items()}
    for path in evaluations:
        summary = read_json(path)
        dataset = str(summary["dataset"])
        if dataset not in ids or dataset not in protocols:
            raise ValueError(f"{path}: dataset {dataset!r} has no test episodes or protocol given")
        frames.append(evaluation_rows(summary, ids[dataset], classes_of(protocols[dataset])))
    if not frames:
        raise ValueError("no analyses and no evaluations to gather")
    table = typed(pd.concat(frames, ignore_index=True))
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    return table
