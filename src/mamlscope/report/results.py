"""A run's results loaded for the report: the experiment, the accuracy table, the baseline.

The run layout is the workflow's (README, "What lands where")::

    {results}/runs.parquet                               every run's row (summarize_runs)
    {results}/{dataset}/{method}/seed{seed}/evaluation.json   per-episode accuracies
    {results}/{dataset}/{method}/seed{seed}/metrics.parquet   step, phase, loss, accuracy
    {results}/{dataset}/split/pools.parquet                 example_id, pool
    {results}/episodes.parquet          every analysis of every run, one row per episode
                                        (gather_episodes; read by the verdicts and analyses)

Seeds are combined by pooling: the per-episode accuracies of every seed of a (dataset,
method) are taken together, and the mean and its 95% interval, 1.96 * std / sqrt(n), are
those of the pooled episodes (:func:`mamlscope.evaluate.summarize`, the same formula as a
single run's). The interval so reflects episode-to-episode variation over all seeds' test
episodes, not that a new training seed moves a model's accuracy; the interval over seeds
(Student t over the per-seed means, :func:`mamlscope.stats.seed_interval`) stands beside
it, with the per-seed means. A NaN accuracy is missing, never a number (report.cells);
the findings compare only episodes every method has.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mamlscope.data.lookup import pool_ids
from mamlscope.errors import DataError
from mamlscope.evaluate import summarize
from mamlscope.io import json_number, read_json, read_parquet
from mamlscope.methods import method as lookup_method
from mamlscope.report.cells import accuracy_cell, over_seeds, pct, plain_cells, seed_cells
from mamlscope.stats import seed_interval

# The original project's reference point for standard training (its README): plain test
# accuracy on full MNIST, with its `baseline` section's settings. A fact about the original
# project, quoted beside the methods that report plain test accuracy, not a result of this run.
REFERENCE: dict[str, Any] = {
    "accuracy": 0.9671,
    "dataset": "full MNIST",
    "train_images": 60_000,
    "hidden": [256, 128, 64, 64],
    "baseline": {"lr": 0.001, "weight_decay": 0.01, "batch_size": 256, "epochs": 5},
    "description": "the fc net [256, 128, 64, 64, 10] with BatchNorm and ReLU, Adam 1e-3, "
    "L2 0.01, batch 256, 5 epochs",
}
MNIST_SOURCES = ("mnist", "mnist5k")
# results/episodes.parquet, the contract of the analyses' gathered table.
ANALYSES_COLUMNS = {
    "dataset": "object", "method": "object", "seed": "int64", "analysis": "object",
    "setting": "object", "batchnorm": "object", "episode": "int64", "accuracy": "float64",
    "classes": "object", "snapshot": "float64",
}  # fmt: skip


def empty_analyses() -> pd.DataFrame:
    """The analyses table with its columns and no row (a run without analyses)."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in ANALYSES_COLUMNS.items()})


def run_dir(results: str | os.PathLike[str], dataset: str, method: str, seed: int) -> Path:
    """The folder of one run: ``{results}/{dataset}/{method}/seed{seed}``."""
    return Path(results) / dataset / method / f"seed{seed}"


@dataclass
class Results:
    """What the report reads from a results tree, for the runs the config names."""

    root: Path
    config: dict[str, Any]
    runs: pd.DataFrame  # runs.parquet
    episodes: pd.DataFrame  # dataset, method, seed, episode, accuracy
    metrics: pd.DataFrame  # dataset, method, seed, step, phase, loss, accuracy
    train_images: dict[tuple[str, int], int] = field(default_factory=dict)  # (dataset, seed)
    # results/episodes.parquet, the runs the config names (empty: the run has no analyses)
    analyses: pd.DataFrame = field(default_factory=empty_analyses)

    @property
    def datasets(self) -> list[str]:
        return list(self.config["datasets"])

    @property
    def methods(self) -> list[str]:
        return list(self.config["methods"])

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.config["seeds"]]


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path} is missing: run the workflow (snakemake) before the report")
    return path


def per_episode(path: Path) -> np.ndarray:
    """An ``evaluation.json``'s per-episode accuracies (null or NaN: missing, kept as NaN);
    a file without a list of numbers there is refused by name."""
    summary = read_json(path)
    found = summary.get("per_episode") if isinstance(summary, dict) else None
    bad = DataError(f"{path}: 'per_episode' is not a list of accuracies: evaluate again")
    try:
        acc = np.asarray([json_number(v) for v in found or ()], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise bad from exc
    if not isinstance(found, list) or acc.ndim != 1 or not acc.size:
        raise bad
    return acc


def load_analyses(path: Path, config: Mapping[str, Any]) -> pd.DataFrame:
    """``episodes.parquet``'s rows of the config's datasets, methods and seeds; empty when
    the file is missing. A file without the contract's columns is refused by name."""
    if not path.is_file():
        return empty_analyses()
    table = read_parquet(path)
    missing = [c for c in ANALYSES_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks the columns {missing}: gather the episodes again")
    keep = (
        table["dataset"].isin(list(config["datasets"]))
        & table["method"].isin(list(config["methods"]))
        & table["seed"].isin([int(s) for s in config["seeds"]])
    )
    return table[keep].reset_index(drop=True)


def load_results(results: str | os.PathLike[str], config: Mapping[str, Any]) -> Results:
    """Read the run table, every run's per-episode accuracies and metrics, the pools and
    the analyses' per-episode table (``episodes.parquet``).

    ``config`` is the resolved config (defaults filled in): its datasets, methods and
    seeds say which runs the report covers, whatever else the folder holds.
    """
    root = Path(results)
    config = dict(config)
    runs = read_parquet(_need(root / "runs.parquet"))
    episode_parts, metric_parts, train_images = [], [], {}
    for dataset in config["datasets"]:
        pools = read_parquet(_need(root / dataset / "split" / "pools.parquet"))
        for seed in (int(s) for s in config["seeds"]):
            train_images[(dataset, seed)] = len(pool_ids(pools, "train"))
            for method in config["methods"]:
                folder = run_dir(root, dataset, method, seed)
                acc = per_episode(_need(folder / "evaluation.json"))
                episode_parts.append(
                    pd.DataFrame(
                        dict(dataset=dataset, method=method, seed=seed, episode=np.arange(acc.size))
                    ).assign(accuracy=acc)
                )
                m = read_parquet(_need(folder / "metrics.parquet"))
                m = m[["step", "phase", "loss", "accuracy"]]
                metric_parts.append(m.assign(dataset=dataset, method=method, seed=seed))
    return Results(
        root=root,
        config=config,
        runs=runs,
        episodes=pd.concat(episode_parts, ignore_index=True),
        metrics=pd.concat(metric_parts, ignore_index=True),
        train_images=train_images,
        analyses=load_analyses(root / "episodes.parquet", config),
    )


def pooled_accuracy(results: Results) -> pd.DataFrame:
    """One row per (dataset, method): seeds pooled per episode (module docstring).

    Columns: dataset, method, seeds, episodes, missing (episodes without accuracy), mean,
    ci95, low, high (over the episodes with one; NaN: none), seed_means (list in seed
    order; NaN: none), seed_missing (list), seed_low, seed_high (the 95% Student t interval
    over the seed means; NaN with one seed), batchnorm, way, shot, plain (mean plain test
    accuracy over seeds, NaN when the test pool has no training class), plain_seeds (list).
    """
    rows = []
    runs = results.runs
    for dataset in results.datasets:
        for method in results.methods:
            eps = results.episodes[
                (results.episodes["dataset"] == dataset) & (results.episodes["method"] == method)
            ]
            values = eps["accuracy"].to_numpy(np.float64)
            found = values[np.isfinite(values)]
            acc = summarize(found) if found.size else None
            by_seed = list(eps.groupby("seed", sort=True)["accuracy"])
            seed_means = [float(g.mean()) for _, g in by_seed]  # NaN: that seed has none
            over_seeds = seed_interval(seed_means)  # over the seeds that have a mean
            own = runs[(runs["dataset"] == dataset) & (runs["method"] == method)].sort_values(
                "seed"
            )
            plain = own["test_accuracy"].astype(float).to_numpy() if len(own) else np.array([])
            rows.append(
                dict(
                    dataset=dataset,
                    method=method,
                    seeds=int(eps["seed"].nunique()),
                    episodes=int(values.size),
                    missing=int(values.size - found.size),
                    mean=acc.mean if acc else math.nan,
                    ci95=acc.ci95 if acc else math.nan,
                    low=acc.mean - acc.ci95 if acc else math.nan,
                    high=acc.mean + acc.ci95 if acc else math.nan,
                    seed_means=seed_means,
                    seed_missing=[int(g.isna().sum()) for _, g in by_seed],
                    seed_low=over_seeds.low,
                    seed_high=over_seeds.high,
                    batchnorm=", ".join(sorted(own["batchnorm"].astype(str).unique())),
                    way=int(own["way"].iloc[0]) if len(own) else -1,
                    shot=int(own["shot"].iloc[0]) if len(own) else -1,
                    plain=float(np.nanmean(plain)) if np.isfinite(plain).any() else math.nan,
                    plain_seeds=[float(p) for p in plain],
                )
            )
    return pd.DataFrame(rows)


def accuracy_table(results: Results) -> pd.DataFrame:
    """The accuracy table for display: dataset by method, mean and 95% interval.

    The rows of methods that report plain test accuracy (`Method.plain_accuracy`) also carry
    it and the original project's reference point (:data:`REFERENCE`, on full MNIST) where the
    dataset is MNIST.
    """
    pooled = pooled_accuracy(results)
    sources = {d: results.config["datasets"][d]["source"] for d in results.datasets}
    out = pd.DataFrame(
        {
            "dataset": pooled["dataset"],
            "method": pooled["method"],
            "task": [
                f"{w}-way {s}-shot" for w, s in zip(pooled["way"], pooled["shot"], strict=True)
            ],
            "BatchNorm at test": pooled["batchnorm"],
            "seeds x episodes": [
                f"{s} x {e // max(s, 1)}"
                for s, e in zip(pooled["seeds"], pooled["episodes"], strict=True)
            ],
            "accuracy (95% CI)": [
                accuracy_cell(r.mean, r.ci95, r.missing, r.episodes) for r in pooled.itertuples()
            ],
            "across seeds (95% CI)": [
                over_seeds(m, lo, hi)
                for m, lo, hi in zip(
                    pooled["seed_means"], pooled["seed_low"], pooled["seed_high"], strict=True
                )
            ],
            "per seed": [
                seed_cells(m, k)
                for m, k in zip(pooled["seed_means"], pooled["seed_missing"], strict=True)
            ],
            "plain test accuracy": [
                "" if not np.isfinite(p) else f"{pct(p)} ({plain_cells(ps, 1)})"
                for p, ps in zip(pooled["plain"], pooled["plain_seeds"], strict=True)
            ],
            "original reference": [
                f"{pct(REFERENCE['accuracy'])} ({REFERENCE['dataset']})"
                if lookup_method(m).plain_accuracy and sources[d] in MNIST_SOURCES
                else ""
                for d, m in zip(pooled["dataset"], pooled["method"], strict=True)
            ],
        }
    )
    return out


def reference_note(results: Results) -> str:
    """Why the plain accuracy of standard training differs from the original project's reference
    (Markdown), for the first method of the run that reports plain test accuracy.

    Compares the number of training images, the Adam steps they make and any key of its
    training section that differs from the original project's setting.
    """
    plain = [m for m in results.methods if lookup_method(m).plain_accuracy]
    if not plain:
        return (
            "No method that reports plain test accuracy was run, so the original project's "
            "reference point is not compared."
        )
    method = plain[0]
    ref = REFERENCE
    lines = [
        f"The original project's reference point is {pct(ref['accuracy'])} plain test accuracy on "
        f"{ref['dataset']} ({ref['train_images']:,} training images) with {ref['description']}."
    ]
    pooled = pooled_accuracy(results).set_index(["dataset", "method"])
    for dataset in results.datasets:
        ds = results.config["datasets"][dataset]
        row = pooled.loc[(dataset, method)]
        if ds["source"] not in MNIST_SOURCES or ds["split"]["protocol"] == "classes":
            why = "not MNIST with a shared-class test pool, so the reference does not apply"
        elif not np.isfinite(row["plain"]):
            why = f"{method}'s plain test accuracy is missing, so it is not compared with it"
        else:
            why = ""
        if why:
            lines.append(f"- **{dataset}** ({ds['source']}): {why}.")
            continue
        n = int(np.mean([results.train_images[(dataset, s)] for s in results.seeds]))
        base = ds[lookup_method(method).section]
        steps = base["epochs"] * math.ceil(n / base["batch_size"])
        ref_steps = ref["baseline"]["epochs"] * math.ceil(
            ref["train_images"] / ref["baseline"]["batch_size"]
        )
        differ = [k for k, v in ref["baseline"].items() if base.get(k) != v]
        if list(ds["model"].get("hidden", [])) != ref["hidden"] or ds["model"]["arch"] != "fc":
            differ.append("model")
        setting = (
            "the same network and training setting"
            if not differ
            else "a different setting (" + ", ".join(differ) + ")"
        )
        gap = 100 * (ref["accuracy"] - row["plain"])
        have = int(np.isfinite(row["plain_seeds"]).sum())
        lacking = len(row["plain_seeds"]) - have
        seeds = ("1 seed" if have == 1 else f"mean of {have} seeds") + (
            f"; {lacking} of {have + lacking} seeds missing" if lacking else ""
        )
        sentence = (
            f"- **{dataset}**: {method} reaches {pct(row['plain'])} plain test accuracy "
            f"({seeds}), "
            f"{abs(gap):.2f} points "
            f"{'below' if gap > 0 else 'above'} the reference, with {setting} but "
            f"{n:,} training images instead of {ref['train_images']:,}"
        )
        if n < ref["train_images"]:
            sentence += (
                f" ({ref['train_images'] / n:.0f} times fewer): {base['epochs']} epochs are "
                f"{steps:,} Adam steps of batch {base['batch_size']} here against "
                f"{ref_steps:,} on full MNIST, and the network sees fewer examples of each digit."
            )
        else:
            sentence += "."
        lines.append(sentence)
    return "\n".join(lines)


def experiment_tables(results: Results) -> dict[str, Any]:
    """The experiment from the resolved config: a summary line, datasets, hyperparameters.

    Returns ``summary`` (Markdown), ``datasets`` (one row per dataset) and
    ``hyperparameters`` (one row per key, one column per dataset: each dataset may
    override the top-level sections).
    """
    cfg = results.config
    summary = (
        f"**Datasets:** {', '.join(results.datasets)}. **Methods:** "
        f"{', '.join(results.methods)}. **Seeds:** {', '.join(map(str, results.seeds))}. "
        f"**Device:** {cfg.get('device', 'auto')}."
    )
    rows = []
    for name, ds in cfg["datasets"].items():
        split, ep = ds["split"], ds["episodes"]
        fractions = ", ".join(f"{k} {split[k]}" for k in ("train", "val") if k in split)
        found = (results.train_images.get((name, s)) for s in results.seeds)
        n = sorted({x for x in found if x is not None})  # training images per seed
        rows.append(
            {
                "dataset": name,
                "source": ds["source"],
                "images": f"{ds['image_size']}x{ds['image_size']}x{ds['channels']}",
                "protocol": f"{split['protocol']} ({fractions})"
                if fractions
                else split["protocol"],
                "episodes": f"{ep['way']}-way {ep['shot']}-shot, {ep['query']} queries",
                "test / val episodes": f"{ep['test_episodes']} / {ep['val_episodes']}",
                "training images": ", ".join(f"{x:,}" for x in n),
                "model": _model_name(ds["model"]),
            }
        )
    keys: dict[str, dict[str, Any]] = {}
    for name, ds in cfg["datasets"].items():
        for section in ("baseline", "maml"):
            for key, value in ds.get(section, {}).items():
                keys.setdefault(f"{section}.{key}", {})[name] = _short(value)
    hyper = pd.DataFrame([{"key": k, **v} for k, v in keys.items()])
    return {"summary": summary, "datasets": pd.DataFrame(rows), "hyperparameters": hyper}


def _model_name(model: Mapping[str, Any]) -> str:
    extra = {k: v for k, v in model.items() if k != "arch" and v is not None}
    return model["arch"] + (
        " " + ", ".join(f"{k} {_short(v)}" for k, v in extra.items()) if extra else ""
    )


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return "" if value is None else str(value)
