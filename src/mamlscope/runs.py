"""The run table: every run's evaluation row in one Parquet table and a Markdown summary."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mamlscope.io import atomic_path, read_parquet
from mamlscope.methods import rank


def gather_runs(
    tables: Sequence[str | os.PathLike[str]],
    out_parquet: str | os.PathLike[str],
    out_markdown: str | os.PathLike[str],
) -> pd.DataFrame:
    """One table of every run, and a Markdown summary by dataset and method.

    "BatchNorm at test" says how the test queries were normalised: ``running`` (the
    baseline's statistics from training), ``transductive`` (MAML, the episode's queries
    together, as Finn et al.) or ``support`` (MAML, each query with the support set's).
    """
    runs = pd.concat([read_parquet(t) for t in tables], ignore_index=True)
    order = rank(runs["method"])  # methods in their declared display order
    runs = runs.sort_values(
        ["dataset", "method", "seed"], key=lambda c: c.map(order) if c.name == "method" else c
    ).reset_index(drop=True)
    with atomic_path(out_parquet) as tmp:
        runs.to_parquet(tmp, index=False)
    lines = [
        "| dataset | method | seed | way-shot | BatchNorm at test | accuracy (95% CI) "
        "| plain test accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs.itertuples():
        plain = "" if np.isnan(r.test_accuracy) else f"{100 * r.test_accuracy:.2f}%"
        lines.append(
            f"| {r.dataset} | {r.method} | {r.seed} | {r.way}-way {r.shot}-shot | {r.batchnorm} | "
            f"{100 * r.mean:.2f} +- {100 * r.ci95:.2f}% | {plain} |"
        )
    with atomic_path(out_markdown) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return runs
