"""The run table: every run's evaluation row in one Parquet table and a Markdown summary.

Each row also carries the run's key hyperparameters (:data:`HYPERPARAMETERS`), read from
its ``evaluation.json`` (the checkpoint's training config and the evaluation's settings),
so runs of different settings can be told apart and selected in pandas::

    runs = pd.read_parquet("results/runs.parquet")
    runs.query("method == 'maml' and meta_steps >= 1000 and eval_batchnorm == 'support'")

A hyperparameter a method does not read is null in its row (a baseline has no
``meta_lr``, a MAML run no ``epochs``), so a filter on it never matches a run it did not
shape.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mamlscope.errors import ConfigError, DataError
from mamlscope.io import atomic_path, read_json, read_parquet
from mamlscope.methods import method as lookup_method
from mamlscope.methods import rank

# column: (where in evaluation.json, the config key a method must read for the column to
# be its own or None for every run, pandas dtype). Training keys come from the stored
# training config; evaluation keys from the settings the evaluation used (they may be
# edited and re-evaluated without retraining).
HYPERPARAMETERS: dict[str, tuple[str, str | None, str]] = {
    "arch": ("config.model.arch", "model", "string"),
    "hidden": ("config.model.hidden", "model", "string"),  # JSON text, e.g. "[256, 128]"
    "filters": ("config.model.filters", "model", "Int64"),
    "protocol": ("config.split.protocol", None, "string"),
    "split_seed": ("config.split.seed", None, "Int64"),
    "inner_lr": ("evaluation.inner_lr", "maml.inner_lr", "float64"),
    "train_inner_steps": ("config.maml.inner_steps", "maml.inner_steps", "Int64"),
    "test_inner_steps": ("evaluation.inner_steps", "maml.test_inner_steps", "Int64"),
    "meta_lr": ("config.maml.meta_lr", "maml.meta_lr", "float64"),
    "meta_batch": ("config.maml.meta_batch", "maml.meta_batch", "Int64"),
    "meta_steps": ("config.maml.meta_steps", "maml.meta_steps", "Int64"),
    "eval_batchnorm": ("evaluation.batchnorm", "maml.eval_batchnorm", "string"),
    "lr": ("config.baseline.lr", "baseline.lr", "float64"),
    "batch_size": ("config.baseline.batch_size", "baseline.batch_size", "Int64"),
    "epochs": ("config.baseline.epochs", "baseline.epochs", "Int64"),
    "weight_decay": ("config.baseline.weight_decay", "baseline.weight_decay", "float64"),
    "finetune_steps": ("evaluation.finetune_steps", "baseline.finetune_steps", "Int64"),
    "finetune_lr": ("evaluation.finetune_lr", "baseline.finetune_lr", "float64"),
    "finetune_all": ("evaluation.finetune_all", "baseline.finetune_all", "boolean"),
}


def _lookup(summary: Mapping[str, Any], dotted: str) -> Any:
    value: Any = summary
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _method_keys(method: str) -> tuple[str, ...] | None:
    """The config keys the method reads (training and evaluation); None when the method
    is not registered here (then every hyperparameter found is kept)."""
    try:
        declared = lookup_method(method)
    except ConfigError:
        return None
    return (*declared.train_keys, *declared.evaluate_keys)


def hyperparameters(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`HYPERPARAMETERS` of one run from its ``evaluation.json`` contents; None
    for what the method does not read or the file does not hold (an older file)."""
    keys = _method_keys(str(summary.get("method")))
    row: dict[str, Any] = {}
    for column, (where, key, _) in HYPERPARAMETERS.items():
        reads = (
            key is None or keys is None or any(k == key or key.startswith(k + ".") for k in keys)
        )
        value = _lookup(summary, where) if reads else None
        if isinstance(value, list):
            value = json.dumps(value)
        row[column] = value
    return row


def _with_hyperparameters(
    runs: pd.DataFrame, evaluations: Sequence[str | os.PathLike[str]]
) -> pd.DataFrame:
    rows = []
    for (_, run), path in zip(runs.iterrows(), evaluations, strict=True):
        summary = read_json(path)
        if not isinstance(summary, dict):
            raise DataError(f"{path} holds no evaluation summary: evaluate the run again")
        ident = tuple(str(summary.get(k)) for k in ("dataset", "method", "seed"))
        if ident != (str(run["dataset"]), str(run["method"]), str(run["seed"])):
            raise DataError(
                f"{path} is the evaluation of {'/'.join(ident)}, not of its table's run "
                f"{run['dataset']}/{run['method']}/{run['seed']}: pass each run's table and "
                "evaluation.json in the same order"
            )
        rows.append(hyperparameters(summary))
    extra = pd.DataFrame(rows, columns=list(HYPERPARAMETERS), index=runs.index)
    extra = extra.astype({c: dtype for c, (_, _, dtype) in HYPERPARAMETERS.items()})
    return pd.concat([runs, extra.drop(columns=[c for c in extra if c in runs])], axis=1)


def gather_runs(
    tables: Sequence[str | os.PathLike[str]],
    out_parquet: str | os.PathLike[str],
    out_markdown: str | os.PathLike[str],
    evaluations: Sequence[str | os.PathLike[str]] | None = None,
) -> pd.DataFrame:
    """One table of every run, with its hyperparameters, and a Markdown summary by
    dataset and method.

    ``evaluations``: each table's ``evaluation.json``, in the same order (default: the
    ``.json`` beside each table, where the evaluate rule writes it).

    "BatchNorm at test" says how the test queries were normalised: ``running`` (the
    baseline's statistics from training), ``transductive`` (MAML, the episode's queries
    together, as Finn et al.) or ``support`` (MAML, each query with the support set's).
    """
    if evaluations is None:
        evaluations = [Path(t).with_suffix(".json") for t in tables]
    if len(evaluations) != len(tables):
        raise ValueError(f"{len(tables)} run tables but {len(evaluations)} evaluation files")
    parts = [read_parquet(t) for t in tables]
    for table, part in zip(tables, parts, strict=True):
        if len(part) != 1:
            raise DataError(f"{table} holds {len(part)} rows, not one run's: evaluate it again")
    runs = _with_hyperparameters(pd.concat(parts, ignore_index=True), evaluations)
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
