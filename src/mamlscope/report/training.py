"""When does it switch? Rapid learning or feature reuse over training, per dataset.

Meta-training keeps a few evenly spaced snapshots (``maml.snapshots``), and the analyze
job analyses each before the final weights (layer freezing, the method's own adaptation
and nearest centroid on the first ``analyses.snapshot_episodes`` test episodes; rows of
``results/episodes.parquet`` whose ``snapshot`` is the fraction of training), and
records per-episode CKA before against after adaptation at each snapshot and the final
weights (``results/training_cka.parquet``). Here:

- :func:`verdicts_over_training`: the verdict (:func:`mamlscope.report.verdicts.verdicts`)
  of each snapshot's rows alone, so 100% is exactly today's verdict;
- :func:`over_training_figure`: per method and BatchNorm mode, each body-adapting
  setting's paired difference against head-only at each snapshot, the verdict written
  above it; :func:`verdict_over_training_table`, the verdicts in full;
- :func:`training_cka_figure`: per method, each layer's mean CKA before against after
  adaptation at each snapshot with its bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mamlscope.analyses.training_cka import COLUMNS as CKA_COLUMNS
from mamlscope.analyses.training_cka import empty_table
from mamlscope.features.cka_study import CONFIDENCE, mean_interval
from mamlscope.io import read_parquet
from mamlscope.methods import label as method_label
from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.report.plots import STYLE
from mamlscope.report.results import Results
from mamlscope.report.verdicts import (
    COLUMNS,
    HEAD_ONLY,
    INCONSISTENT,
    MODES,
    NO_ADAPTATION,
    NOT_ASSESSED,
    RAPID_BODY,
    REUSE,
    body_settings,
    final,
    inner_steps_at_test,
    network_layers,
    pick,
    verdicts,
)
from mamlscope.stats import LEVEL, compare

TRAINING_CKA = "training_cka.parquet"
RAPID_PREFIX = "rapid learning in the layers from "


def fractions(table: pd.DataFrame, dataset: str | None = None) -> list[float]:
    """The snapshot fractions of the table (of one dataset), ascending."""
    if dataset is not None:
        table = table[table["dataset"] == dataset]
    return sorted({float(f) for f in table["snapshot"].unique()}) if len(table) else []


def fraction_label(fraction: float) -> str:
    """``40%``: a snapshot by the share of training done."""
    return f"{100 * fraction:.0f}%"


def tracked_methods(table: pd.DataFrame, dataset: str) -> list[str]:
    """The dataset's inner-loop methods with analysed snapshots before the final weights."""
    rows = table[(table["dataset"] == dataset) & (table["snapshot"] < 1.0)]
    names = ordered(rows["method"].unique()) if len(rows) else []
    return [m for m in names if lookup_method(m).evaluation == "inner-loop"]


def verdicts_over_training(
    table: pd.DataFrame,
    test_steps: Mapping[str, int] | None = None,
    layers: Mapping[str, Sequence[str]] | None = None,
    level: float = LEVEL,
) -> pd.DataFrame:
    """:func:`~mamlscope.report.verdicts.verdicts` at every snapshot fraction of the
    table, each on that snapshot's rows alone: its :data:`COLUMNS` and ``snapshot``."""
    frames = [
        verdicts(table, test_steps, layers, level, snapshot=f).assign(snapshot=f)
        for f in fractions(table)
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=[*COLUMNS, "snapshot"])
    return pd.concat(frames, ignore_index=True)


def verdicts_over_training_of(results: Results) -> pd.DataFrame:
    if results.analyses.empty:
        return verdicts_over_training(results.analyses)
    return verdicts_over_training(
        results.analyses, inner_steps_at_test(results.config), network_layers(results.config)
    )


def short_verdict(verdict: str) -> str:
    """A verdict in a few characters, to write on a plot; ``?`` marks one whose per-seed
    differences change sign."""
    mark = "?" if verdict.endswith(INCONSISTENT) else ""
    core = verdict.removesuffix(f", {INCONSISTENT}")
    if core.startswith(RAPID_PREFIX):
        return f"rapid ≥{core[len(RAPID_PREFIX) :].removesuffix(' up')}{mark}"
    names = {REUSE: "reuse", RAPID_BODY: "rapid: body", NO_ADAPTATION: "no adapt."}
    if core.startswith(NOT_ASSESSED):
        return "n/a"
    return names.get(core, core) + mark


def verdict_over_training_table(found: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """``dataset, method, BatchNorm`` and one column per snapshot fraction: the verdict of
    each method with snapshots, in each mode, at each snapshot."""
    part = found[found["dataset"] == dataset]
    earlier = part[part["snapshot"] < 1.0]
    methods = ordered(earlier["method"].unique()) if len(earlier) else []
    out = []
    for method in methods:
        for mode in [m for m in MODES if (part["batchnorm"] == m).any()]:
            rows = part[(part["method"] == method) & (part["batchnorm"] == mode)]
            cells = dict(zip(rows["snapshot"], rows["verdict"], strict=True))
            out.append(
                {"dataset": dataset, "method": method_label(method), "BatchNorm": mode}
                | {fraction_label(f): cells.get(f, "") for f in fractions(part)}
            )
    return pd.DataFrame(out)


def difference_points(
    table: pd.DataFrame, dataset: str, method: str, mode: str, settings: Sequence[str]
) -> pd.DataFrame:
    """``snapshot, setting, difference, low, high, pairs``: each setting's accuracy minus
    head-only's at each snapshot, paired on (seed, episode), its 95% interval pooled."""
    rows = []
    for f in fractions(table, dataset):
        freeze = pick(final(table, f), dataset=dataset, method=method, batchnorm=mode)
        freeze = freeze[freeze["analysis"] == "freeze"]
        head = pick(freeze, setting=HEAD_ONLY)
        for setting in settings:
            other = pick(freeze, setting=setting)
            if head.empty or other.empty:
                continue
            p = compare(other, head, LEVEL).pooled
            rows.append(dict(snapshot=f, setting=setting, difference=p.mean, low=p.low,
                             high=p.high, pairs=p.n))  # fmt: skip
    names = ["snapshot", "setting", "difference", "low", "high", "pairs"]
    return pd.DataFrame(rows, columns=names)


def over_training_figure(
    table: pd.DataFrame,
    dataset: str,
    found: pd.DataFrame,
    layers: Sequence[str] | None = None,
) -> Figure:
    """Rows: the inner-loop methods with snapshots; columns: BatchNorm modes. In each
    panel, every body-adapting setting's paired difference against head-only (points, in
    percentage points, 95% interval) against the fraction of training, deeper settings
    darker; above each snapshot its verdict (:func:`short_verdict`)."""
    table = table[table["dataset"] == dataset]
    methods = tracked_methods(table, dataset)
    freeze = table[table["analysis"] == "freeze"]
    modes = [m for m in MODES if (freeze["batchnorm"] == m).any()]
    settings = body_settings(list(dict.fromkeys(freeze["setting"])), layers)
    xs = fractions(table)
    cmap = matplotlib.colormaps["viridis"]
    with matplotlib.rc_context(STYLE):
        rows, cols = max(len(methods), 1), max(len(modes), 1)
        fig = Figure(figsize=(4.6 * cols + 1.8, 3.4 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
        fig.suptitle(f"{dataset} · over training: body-adapting settings − head-only")
        width = 0.5 * min(np.diff(xs), default=0.2) / max(len(settings), 1)
        for r, method in enumerate(methods):
            for c, mode in enumerate(modes):
                ax = axes[r][c]
                points = difference_points(table, dataset, method, mode, settings)
                for i, setting in enumerate(settings):
                    got = points[points["setting"] == setting]
                    x = got["snapshot"].to_numpy() + (i - (len(settings) - 1) / 2) * width
                    mean, low, high = (100 * got[k].to_numpy(np.float64)
                                       for k in ("difference", "low", "high"))  # fmt: skip
                    err = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])
                    color = cmap(0.85 * i / max(len(settings) - 1, 1))
                    ax.errorbar(x, mean, yerr=err.clip(0), fmt="o", ms=3.5, capsize=2, lw=1,
                                color=color, label=setting)  # fmt: skip
                ax.axhline(0.0, color="0.4", lw=0.8)
                _write_verdicts(ax, found, dataset, method, mode)
                ax.set_title(f"{method_label(method)} · BatchNorm: {mode}", fontsize="medium")
                ax.set_xticks(xs, [fraction_label(f) for f in xs])
                ax.grid(alpha=0.3)
            axes[r][0].set_ylabel("difference (points)")
        for ax in axes[-1]:
            ax.set_xlabel("fraction of training")
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right center", frameon=False,
                       title="setting − head-only")  # fmt: skip
    return fig


def _write_verdicts(ax, found: pd.DataFrame, dataset: str, method: str, mode: str) -> None:
    """Each snapshot's short verdict above its x, inside the top of the panel."""
    rows = found[
        (found["dataset"] == dataset) & (found["method"] == method) & (found["batchnorm"] == mode)
    ]
    ax.margins(y=0.35)
    for f, verdict in zip(rows["snapshot"], rows["verdict"], strict=True):
        ax.annotate(
            short_verdict(str(verdict)), xy=(float(f), 0.97), xycoords=("data", "axes fraction"),
            ha="center", va="top", fontsize=7, rotation=90,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
        )  # fmt: skip


def episodes_note(table: pd.DataFrame, dataset: str) -> str:
    """Which episodes each snapshot was analysed on, and how many seeds: for captions."""
    part = table[(table["dataset"] == dataset) & (table["analysis"] == "freeze")]
    notes = []
    for f in fractions(part):
        ids = np.unique(part.loc[part["snapshot"] == f, "episode"].to_numpy(np.int64))
        notes.append(f"{fraction_label(f)}: {_episodes(ids)}")
    seeds = part["seed"].nunique() if len(part) else 0
    return f"Episodes per snapshot: {'; '.join(notes)}; {seeds} seed(s), paired by episode."


def _episodes(ids: np.ndarray) -> str:
    if len(ids) == 0:
        return "none"
    contiguous = len(ids) == ids[-1] - ids[0] + 1
    span = f"numbers {ids[0]} to {ids[-1]}" if contiguous else f"from {ids[0]} to {ids[-1]}"
    return f"{len(ids)} test episodes ({span})"


# --- CKA over training ----------------------------------------------------------------------


def load_training_cka(results: Results) -> pd.DataFrame:
    """``results/training_cka.parquet``'s rows of the config's runs; empty when missing."""
    path = Path(results.root) / TRAINING_CKA
    if not path.is_file():
        return empty_table()
    table = read_parquet(path)
    missing = [c for c in CKA_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}: run the analyses again")
    keep = (
        table["dataset"].isin(results.datasets)
        & table["method"].isin(results.methods)
        & table["seed"].isin(results.seeds)
    )
    return table[keep].reset_index(drop=True)


def cka_summary(cka: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """``method, snapshot, layer, cka, low, high, values``: the mean over every (seed,
    episode) value with its bootstrap interval (:func:`mean_interval`), layers in network
    order."""
    part = cka[cka["dataset"] == dataset]
    rows = []
    for (method, f, layer), values in part.groupby(["method", "snapshot", "layer"], sort=False):
        mean, low, high, n = mean_interval(values["cka"])
        rows.append(dict(method=method, snapshot=float(f), layer=layer, cka=mean, low=low,
                         high=high, values=n))  # fmt: skip
    names = ["method", "snapshot", "layer", "cka", "low", "high", "values"]
    return pd.DataFrame(rows, columns=names)


def cka_tracked(cka: pd.DataFrame, dataset: str) -> bool:
    """Whether the dataset has CKA at more than the final weights."""
    return len(fractions(cka, dataset)) > 1


def training_cka_figure(cka: pd.DataFrame, dataset: str) -> Figure:
    """One panel per method: each layer's mean CKA before against after adaptation against
    the fraction of training, with its bootstrap interval; deeper layers darker."""
    summary = cka_summary(cka, dataset)
    methods = ordered(summary["method"].unique()) if len(summary) else []
    cmap = matplotlib.colormaps["viridis"]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.2 * max(len(methods), 1) + 1.6, 3.8), layout="constrained")
        axes = list(fig.subplots(1, max(len(methods), 1), squeeze=False, sharey=True)[0])
        fig.suptitle(f"{dataset} · CKA before vs after adaptation, over training")
        for ax, method in zip(axes, methods, strict=False):
            rows = summary[summary["method"] == method]
            layers = list(dict.fromkeys(rows["layer"]))
            for i, layer in enumerate(layers):
                got = rows[rows["layer"] == layer].sort_values("snapshot")
                mean, low, high = (got[k].to_numpy(np.float64) for k in ("cka", "low", "high"))
                err = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])
                ax.errorbar(got["snapshot"], mean, yerr=err.clip(0), marker="o", ms=3, lw=1,
                            capsize=2, color=cmap(0.85 * i / max(len(layers) - 1, 1)),
                            label=layer)  # fmt: skip
            xs = fractions(cka[(cka["dataset"] == dataset) & (cka["method"] == method)])
            ax.set_xticks(xs, [fraction_label(f) for f in xs])
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(method_label(method), fontsize="medium")
            ax.set_xlabel("fraction of training")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("linear CKA, before vs after")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right center", frameon=False, title="layer")
    return fig


def cka_note(cka: pd.DataFrame, dataset: str) -> str:
    """Which episodes, how many, and how many seeds the CKA figure pools: for its caption."""
    part = cka[cka["dataset"] == dataset]
    ids = np.unique(part["episode"].to_numpy(np.int64))
    seeds = part["seed"].nunique()
    level = f"{CONFIDENCE:.0%}"
    return (
        f"Per episode on the first {_episodes(ids)} (features.adapt_episodes), at each "
        f"snapshot and the final weights; the mean over {seeds} seed(s) x episodes, with a "
        f"{level} BCa bootstrap interval."
    )
