"""Rapid learning or feature reuse? The analyses' tables and figures, per dataset.

All of them read ``Results.analyses`` (``results/episodes.parquet``, final models only).
A cell's accuracy is the mean of the seeds' means with the Student t interval over seeds
(:func:`mamlscope.stats.seed_interval`); a difference is paired on (seed, episode), its
interval pooled over every seed's episodes with the across-seed one beside it.

- layer freezing: accuracy when the inner loop adapts the layers from k up (``from k``),
  head only (``from head``) or the body only (``body``), per method and BatchNorm mode;
- nearest centroid on frozen penultimate features against the method's full adaptation;
- the test-steps sweep: accuracy against the inner steps taken at test;
- the baseline's protocols: its fresh head and nearest centroid under each BatchNorm mode;
- like for like: each meta method against the baseline under the same BatchNorm protocol;
- the verdicts (:mod:`mamlscope.report.verdicts`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from mamlscope.methods import label as method_label
from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.report.plots import STYLE
from mamlscope.report.results import Results
from mamlscope.report.verdicts import (
    BODY,
    HEAD_ONLY,
    MODES,
    body_settings,
    classes_of,
    final,
    full_adaptation,
    inner_steps_at_test,
    network_layers,
    pick,
    verdicts,
)
from mamlscope.stats import Interval, compare, seed_interval

ALL_MODES = (*MODES, "running")
FRESH_HEAD = "fresh head"
# The two like-for-like pairings: (name, the meta method's mode, the baseline's mode).
PAIRINGS = (
    ("transductive", "transductive", "transductive"),
    ("non-transductive", "support", "running"),
)


def rows_of(results: Results, dataset: str) -> pd.DataFrame:
    """The dataset's final-model rows of the analyses table."""
    table = final(results.analyses)
    return table[table["dataset"] == dataset] if len(table) else table


def over_seeds(rows: pd.DataFrame) -> Interval:
    """Mean of the seeds' mean accuracies with the t interval over seeds."""
    if rows.empty:
        return seed_interval([])
    return seed_interval(rows.groupby("seed", sort=True)["accuracy"].mean().to_numpy())


def fmt(interval: Interval) -> str:
    """``78.12 ± 2.34`` (percent; the interval's half width), or why there is none."""
    if not math.isfinite(interval.mean):
        return "missing"
    if not interval.defined:
        return f"{100 * interval.mean:.2f} (one seed)"
    return f"{100 * interval.mean:.2f} ± {100 * (interval.high - interval.low) / 2:.2f}"


def fmt_difference(mean: float, low: float, high: float) -> str:
    """``+1.23 [+0.50, +1.96]`` in points, or ``missing``."""
    if not math.isfinite(mean):
        return "missing"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{100 * mean:+.2f} [undefined]"
    return f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def _across(mean: float, low: float, high: float) -> str:
    """The across-seed interval of a difference; "one seed" when it has none."""
    if math.isfinite(mean) and not (math.isfinite(low) and math.isfinite(high)):
        return "one seed"
    return fmt_difference(mean, low, high)


def _difference(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, object]:
    """``a - b`` paired (:func:`mamlscope.stats.compare`) as display columns."""
    if a.empty or b.empty:
        return {"paired difference": "missing", "across seeds": "missing"}
    try:
        found = compare(a, b)
    except ValueError as exc:
        return {"paired difference": f"not paired: {exc}", "across seeds": ""}
    p, s = found.pooled, found.seeds
    return {
        "paired difference": fmt_difference(p.mean, p.low, p.high),
        "across seeds": fmt_difference(s.mean, s.low, s.high) if s.defined else "one seed",
    }


def _methods(rows: pd.DataFrame, inner_loop: bool | None = None) -> list[str]:
    names = ordered(rows["method"].unique()) if len(rows) else []
    if inner_loop is None:
        return names
    return [m for m in names if (lookup_method(m).evaluation == "inner-loop") == inner_loop]


def _modes(rows: pd.DataFrame, modes: tuple[str, ...] = MODES) -> list[str]:
    return [m for m in modes if (rows["batchnorm"] == m).any()]


def freeze_settings(results: Results, dataset: str) -> list[str]:
    """Head-only first, then ``from k`` down the network to every layer, then ``body``."""
    rows = pick(rows_of(results, dataset), analysis="freeze")
    layers = network_layers(results.config).get(dataset)
    found = list(dict.fromkeys(rows["setting"])) if len(rows) else []
    body = body_settings(found, layers)
    froms = [s for s in body if s != BODY][::-1]
    return ([HEAD_ONLY] if HEAD_ONLY in found else []) + froms + body[len(froms) :]


def freezing_table(results: Results, dataset: str) -> pd.DataFrame:
    """Method x mode rows, one column per freeze setting (:func:`freeze_settings`)."""
    rows = pick(rows_of(results, dataset), analysis="freeze")
    settings = freeze_settings(results, dataset)
    out = []
    for method in _methods(rows, inner_loop=True):
        for mode in _modes(rows):
            part = pick(rows, method=method, batchnorm=mode)
            cells = {s: fmt(over_seeds(pick(part, setting=s))) for s in settings}
            out.append({"method": method_label(method), "BatchNorm": mode, **cells})
    return pd.DataFrame(out)


def _panels(title: str, modes: list[str]) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * max(len(modes), 1) + 1.6, 3.6), layout="constrained")
    axes = fig.subplots(1, max(len(modes), 1), squeeze=False, sharey=True)[0]
    fig.suptitle(title)
    return fig, list(axes)


def _line(ax, x: list[float], cells: list[Interval], label: str, color) -> None:
    means = [100 * c.mean for c in cells]
    err = [[100 * (c.mean - c.low) if c.defined else 0.0 for c in cells],
           [100 * (c.high - c.mean) if c.defined else 0.0 for c in cells]]  # fmt: skip
    ax.errorbar(
        x, means, yerr=err, marker="o", ms=4, capsize=3, lw=1.2, label=label or None, color=color
    )


def _legend(fig: Figure, axes: list) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", frameon=False)


def freezing_figure(results: Results, dataset: str) -> Figure:
    """Accuracy against the freeze setting, one line per method, panels by BatchNorm mode;
    seed means with the across-seed 95% interval; head-only and body shaded."""
    rows = pick(rows_of(results, dataset), analysis="freeze")
    settings = freeze_settings(results, dataset)
    modes = _modes(rows)
    cmap = matplotlib.colormaps["tab10"]
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(f"{dataset} · layer freezing: which layers adapt", modes)
        for ax, mode in zip(axes, modes, strict=False):
            for i, method in enumerate(_methods(rows, inner_loop=True)):
                part = pick(rows, method=method, batchnorm=mode)
                cells = [over_seeds(pick(part, setting=s)) for s in settings]
                # The "from k" settings nest (each adapts one layer more): a line; "body"
                # is another kind of setting: a point of its own.
                n = len(settings) - (settings[-1:] == [BODY])
                _line(ax, list(range(n)), cells[:n], method_label(method), cmap(i % 10))
                if n < len(settings):
                    _line(ax, [float(n)], cells[n:], "", cmap(i % 10))
            for marked in (HEAD_ONLY, BODY):
                if marked in settings:
                    at = settings.index(marked)
                    ax.axvspan(at - 0.4, at + 0.4, color="0.9", zorder=0)
            ax.set_xticks(range(len(settings)), settings, rotation=45, ha="right")
            ax.set_title(f"BatchNorm: {mode}")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy (%)")
        _legend(fig, axes)
    return fig


def centroid_table(results: Results, dataset: str) -> pd.DataFrame:
    """Method x mode: nearest centroid, full adaptation and their paired difference (the
    baseline's full adaptation is its fresh head in the same mode)."""
    rows = rows_of(results, dataset)
    steps = inner_steps_at_test(results.config).get(dataset)
    out = []
    for method in _methods(pick(rows, analysis="centroid")):
        for mode in _modes(pick(rows, analysis="centroid", method=method), ALL_MODES):
            centroid = pick(rows, method=method, analysis="centroid", batchnorm=mode)
            if lookup_method(method).evaluation == "inner-loop":
                full = full_adaptation(rows, dataset, method, mode, steps)
            else:
                full = pick(rows, method=method, analysis="finetune", batchnorm=mode)
            out.append(
                {"method": method_label(method), "BatchNorm": mode,
                 "nearest centroid": fmt(over_seeds(centroid)),
                 "full adaptation": fmt(over_seeds(full)),
                 **_difference(centroid, full)}
            )  # fmt: skip
    return pd.DataFrame(out)


def _step_counts(rows: pd.DataFrame) -> list[int]:
    found = {int(s) for s in rows["setting"].unique() if str(s).isdigit()} if len(rows) else set()
    return sorted(found)


def steps_table(results: Results, dataset: str) -> pd.DataFrame:
    """Method x mode rows, one column per inner-step count at test."""
    rows = pick(rows_of(results, dataset), analysis="steps")
    counts = _step_counts(rows)
    out = []
    for method in _methods(rows, inner_loop=True):
        for mode in _modes(rows):
            part = pick(rows, method=method, batchnorm=mode)
            cells = {f"{n} steps": fmt(over_seeds(pick(part, setting=str(n)))) for n in counts}
            out.append({"method": method_label(method), "BatchNorm": mode, **cells})
    return pd.DataFrame(out)


def steps_figure(results: Results, dataset: str) -> Figure:
    """Accuracy against inner steps at test, one line per method, panels by mode."""
    rows = pick(rows_of(results, dataset), analysis="steps")
    counts, modes = _step_counts(rows), _modes(rows)
    cmap = matplotlib.colormaps["tab10"]
    with matplotlib.rc_context(STYLE):
        fig, axes = _panels(f"{dataset} · accuracy against inner steps at test", modes)
        for ax, mode in zip(axes, modes, strict=False):
            for i, method in enumerate(_methods(rows, inner_loop=True)):
                part = pick(rows, method=method, batchnorm=mode)
                cells = [over_seeds(pick(part, setting=str(n))) for n in counts]
                _line(ax, [float(n) for n in counts], cells, method_label(method), cmap(i % 10))
            ax.set_xlabel("inner steps at test")
            ax.set_title(f"BatchNorm: {mode}")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("accuracy (%)")
        _legend(fig, axes)
    return fig


def baseline_table(results: Results, dataset: str) -> pd.DataFrame:
    """The fine-tuned methods' protocols: fresh head and nearest centroid per mode."""
    rows = rows_of(results, dataset)
    out = []
    for method in _methods(pick(rows, analysis="finetune"), inner_loop=False):
        for mode in ALL_MODES:
            head = pick(rows, method=method, analysis="finetune", batchnorm=mode)
            centroid = pick(rows, method=method, analysis="centroid", batchnorm=mode)
            if head.empty and centroid.empty:
                continue
            diff = _difference(centroid, head)
            out.append(
                {"method": method_label(method), "BatchNorm": mode,
                 "fresh head": fmt(over_seeds(head)),
                 "nearest centroid": fmt(over_seeds(centroid)),
                 "centroid - fresh head": diff["paired difference"],
                 "across seeds": diff["across seeds"]}
            )  # fmt: skip
    return pd.DataFrame(out)


LIKE_COLUMNS = [
    "dataset", "classes", "method", "baseline", "pairing", "method_batchnorm",
    "baseline_batchnorm", "method_mean", "baseline_mean", "difference", "low", "high",
    "seed_low", "seed_high", "per_seed", "pairs", "dropped", "consistent", "missing",
]  # fmt: skip


def like_for_like(table: pd.DataFrame, test_steps: Mapping[str, int]) -> pd.DataFrame:
    """Each meta method's full adaptation against the baseline's fresh head under the same
    BatchNorm protocol (:data:`PAIRINGS`), paired: :data:`LIKE_COLUMNS`, one row per
    (dataset, method, baseline, pairing); ``missing`` says why a row has no numbers."""
    table = final(table)
    out = []
    for dataset in dict.fromkeys(table["dataset"]):
        rows = pick(table, dataset=dataset)
        fine = _methods(pick(rows, analysis="finetune"), inner_loop=False)
        for method in _methods(rows, inner_loop=True):
            for base in fine:
                for name, mode, base_mode in PAIRINGS:
                    a = full_adaptation(rows, dataset, method, mode, test_steps.get(dataset))
                    b = pick(rows, method=base, analysis="finetune", batchnorm=base_mode)
                    row = dict(dataset=dataset, classes=classes_of(rows, dataset), method=method,
                               baseline=base, pairing=name, method_batchnorm=mode,
                               baseline_batchnorm=base_mode, missing="")  # fmt: skip
                    out.append({**row, **_like(a, b, method, mode, base, base_mode)})
    return pd.DataFrame(out, columns=LIKE_COLUMNS)


def _like(
    a: pd.DataFrame, b: pd.DataFrame, method: str, mode: str, base: str, base_mode: str
) -> dict[str, Any]:
    nan = math.nan
    if a.empty or b.empty:
        which = f"{method} under {mode}" if a.empty else f"{base} under {base_mode}"
        return dict(difference=nan, low=nan, high=nan, missing=f"no rows for {which}")
    try:
        found = compare(a, b)
    except ValueError as exc:
        return dict(difference=nan, low=nan, high=nan, missing=str(exc))
    p = found.pooled
    return dict(
        method_mean=over_seeds(a).mean, baseline_mean=over_seeds(b).mean,
        difference=p.mean, low=p.low, high=p.high, seed_low=found.seeds.low,
        seed_high=found.seeds.high, per_seed=list(found.per_seed.values()), pairs=p.n,
        dropped=p.dropped, consistent=found.consistent,
        missing="" if p.defined else f"undefined ({p.n} complete pairs)",
    )  # fmt: skip


def like_for_like_of(results: Results) -> pd.DataFrame:
    return like_for_like(results.analyses, inner_steps_at_test(results.config))


def like_for_like_table(results: Results, dataset: str) -> pd.DataFrame:
    found = like_for_like_of(results)
    found = found[found["dataset"] == dataset]
    return pd.DataFrame(
        {
            "method": [method_label(m) for m in found["method"]],
            "against": [method_label(m) for m in found["baseline"]],
            "pairing": found["pairing"],
            "BatchNorm (method / baseline)": found["method_batchnorm"]
            + " / "
            + found["baseline_batchnorm"],
            "paired difference": [
                r.missing or fmt_difference(r.difference, r.low, r.high) for r in found.itertuples()
            ],
            "across seeds": [
                "" if r.missing else _across(r.difference, r.seed_low, r.seed_high)
                for r in found.itertuples()
            ],
        }
    )


def verdicts_of(results: Results) -> pd.DataFrame:
    """The verdicts of the run's analyses (:func:`mamlscope.report.verdicts.verdicts`)."""
    if results.analyses.empty:
        return verdicts(results.analyses)
    return verdicts(
        results.analyses, inner_steps_at_test(results.config), network_layers(results.config)
    )


def verdict_table(
    results: Results, dataset: str, found: pd.DataFrame | None = None
) -> pd.DataFrame:
    found = verdicts_of(results) if found is None else found
    found = found[found["dataset"] == dataset]
    return pd.DataFrame(
        {
            "method": [method_label(m) for m in found["method"]],
            "BatchNorm": found["batchnorm"],
            "verdict": found["verdict"],
            "compared": found["comparison"].fillna(""),
            "paired difference": [
                fmt_difference(r.difference, r.low, r.high) for r in found.itertuples()
            ],
            "across seeds": [
                _across(r.difference, r.seed_low, r.seed_high) for r in found.itertuples()
            ],
            "criterion": found["criterion"],
        }
    )
