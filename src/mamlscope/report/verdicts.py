"""Rapid learning or feature reuse? One verdict per dataset, inner-loop method and BatchNorm
mode, decided by accuracy on the fixed test episodes (Raghu et al. 2020), paired.

The rows come from ``results/episodes.parquet`` (one row per episode of every analysis of
every run; the final models, ``snapshot == 1``, unless another snapshot is asked for). In
order:

1. **no adaptation needed**: nearest centroid on the frozen penultimate features is not
   significantly worse than the method's full adaptation (its ``steps`` row at the test
   step count, same mode; its evaluation when the analyses lack it);
2. **rapid learning in the layers from k up**: some setting that adapts body layers
   (``from <k>`` below the head, or ``body``) is significantly better than head-only
   (``from head``), with Bonferroni-corrected intervals over the settings compared; k is
   the highest such layer (the fewest layers that must adapt). Only ``body`` better:
   **rapid learning in the body**;
3. **feature reuse**: no body-adapting setting is significantly better than head-only.

"Significantly" is the paired interval pooled over every seed's episodes excluding 0; the
across-seed interval stands beside it, and a verdict whose per-seed differences change sign
adds "not consistent across seeds" (a seed counts when its own paired interval, over its
episodes, excludes 0: a sign change inside every seed's noise is what no difference gives
half the time). Anything missing gives "not assessed", with why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.stats import LEVEL, Paired, bonferroni, compare

MODES = ("transductive", "support")
HEAD_ONLY = "from head"
BODY = "body"
FROM = "from "
NO_ADAPTATION = "no adaptation needed"
REUSE = "feature reuse"
RAPID_BODY = "rapid learning in the body"
NOT_ASSESSED = "not assessed"
INCONSISTENT = "not consistent across seeds"
COLUMNS = [
    "dataset", "classes", "method", "batchnorm", "verdict", "criterion", "comparison",
    "difference", "low", "high", "level", "seed_low", "seed_high", "per_seed", "pairs",
    "dropped", "settings", "consistent", "centroid_difference", "centroid_low", "centroid_high",
]  # fmt: skip


def rapid_from(layer: str) -> str:
    return f"rapid learning in the layers from {layer} up"


def final(table: pd.DataFrame, snapshot: float = 1.0) -> pd.DataFrame:
    """The rows of the models at ``snapshot`` (fraction of training; 1.0, the default: the
    final models); every row when the table has no snapshot column."""
    if "snapshot" not in table.columns:
        return table
    return table[np.isclose(table["snapshot"].to_numpy(np.float64), snapshot, rtol=0, atol=1e-9)]


def pick(table: pd.DataFrame, **where: Any) -> pd.DataFrame:
    """The rows whose columns equal ``where`` (``dataset=..., analysis=...``)."""
    mask = pd.Series(True, index=table.index)
    for column, value in where.items():
        mask &= table[column] == value
    return table[mask]


def full_adaptation(
    table: pd.DataFrame, dataset: str, method: str, mode: str, steps: int | None
) -> pd.DataFrame:
    """A method's own adaptation in ``mode``: its ``steps`` rows at the test step count, or
    (analyses without them) its evaluation when that ran in ``mode``."""
    rows = pd.DataFrame()
    if steps is not None:
        rows = pick(
            table, dataset=dataset, method=method, analysis="steps", setting=str(steps),
            batchnorm=mode,
        )  # fmt: skip
    if rows.empty:
        rows = pick(table, dataset=dataset, method=method, analysis="evaluation", batchnorm=mode)
    return rows


def classes_of(table: pd.DataFrame, dataset: str) -> str:
    """``seen``/``unseen``: whether the dataset's test classes were seen in training."""
    found = pick(table, dataset=dataset)["classes"].dropna().unique() if len(table) else []
    return ", ".join(sorted(map(str, found))) or "unknown"


def classes_phrase(classes: str) -> str:
    if classes in ("seen", "unseen"):
        return f"test classes {classes} in training"
    return "whether the test classes were seen in training is not recorded"


def body_settings(settings: Sequence[str], layers: Sequence[str] | None) -> list[str]:
    """The freeze settings that adapt body layers: ``from <k>`` in network order (``layers``;
    else as found), the head-only one left out, then ``body``."""
    froms = [s for s in dict.fromkeys(settings) if s.startswith(FROM) and s != HEAD_ONLY]
    if layers:
        rank = {f"{FROM}{name}": i for i, name in enumerate(layers)}
        froms.sort(key=lambda s: rank.get(s, len(rank)))
    return froms + ([BODY] if BODY in settings else [])


def _pct(x: float) -> str:
    return "NaN" if not math.isfinite(x) else f"{100 * x:+.2f}"


def _bounds(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undefined"
    return f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def _evidence(name: str, found: Paired) -> dict[str, Any]:
    return dict(
        comparison=name,
        difference=found.pooled.mean,
        low=found.pooled.low,
        high=found.pooled.high,
        level=found.pooled.level,
        seed_low=found.seeds.low,
        seed_high=found.seeds.high,
        per_seed=list(found.per_seed.values()),
        pairs=found.pooled.n,
        dropped=found.pooled.dropped,
        consistent=found.consistent,
    )


def _not_assessed(why: str) -> dict[str, Any]:
    return dict(verdict=NOT_ASSESSED, criterion=why, consistent=True)


def decide(
    table: pd.DataFrame,
    dataset: str,
    method: str,
    mode: str,
    steps: int | None,
    layers: Sequence[str] | None = None,
    level: float = LEVEL,
) -> dict[str, Any]:
    """One verdict (module docstring) with its criterion and the evidence it rests on."""
    full = full_adaptation(table, dataset, method, mode, steps)
    where = dict(dataset=dataset, method=method, batchnorm=mode)
    centroid = pick(table, analysis="centroid", setting="penultimate", **where)
    freeze = pick(table, analysis="freeze", **where)
    missing = [
        name
        for name, rows in (("full adaptation", full), ("nearest centroid", centroid))
        if rows.empty
    ]
    if missing:
        return _not_assessed(f"no {' or '.join(missing)} rows in {mode} mode")
    try:
        gap = compare(centroid, full, level)
    except ValueError as exc:
        return _not_assessed(f"nearest centroid against full adaptation: {exc}")
    row: dict[str, Any] = dict(
        centroid_difference=gap.pooled.mean,
        centroid_low=gap.pooled.low,
        centroid_high=gap.pooled.high,
    )
    if not gap.pooled.defined:
        return {**row, **_not_assessed("nearest centroid against full adaptation is undefined "
                                       f"({gap.pooled.n} complete pairs)")}  # fmt: skip
    pct = f"{100 * level:g}%"
    if not gap.pooled.below_zero:
        return {
            **row,
            **_evidence("nearest centroid - full adaptation", gap),
            "verdict": NO_ADAPTATION,
            "settings": 1,
            "criterion": f"nearest centroid is not significantly worse than full adaptation: "
            f"{_pct(gap.pooled.mean)} points, paired {pct} interval "
            f"{_bounds(gap.pooled.low, gap.pooled.high)}"
            + (
                f", which does not rule out a loss of up to {-100 * gap.pooled.low:.2f} points"
                if gap.pooled.low < 0
                else ""
            ),
        }
    head = pick(freeze, setting=HEAD_ONLY)
    candidates = body_settings(list(freeze["setting"]), layers)
    if head.empty or not candidates:
        return {**row, **_not_assessed(
            f"full adaptation beats nearest centroid, but the layer-freezing rows in {mode} mode "
            "lack head-only or every body-adapting setting")}  # fmt: skip
    corrected = bonferroni(level, len(candidates))
    found: dict[str, Paired] = {}
    for setting in candidates:
        try:
            found[setting] = compare(pick(freeze, setting=setting), head, corrected)
        except ValueError as exc:
            return {**row, **_not_assessed(f"{setting} against head-only: {exc}")}
    better = [s for s in candidates if found[s].pooled.above_zero]
    corr = f"Bonferroni-corrected {100 * corrected:.2f}% intervals over {len(candidates)} settings"
    if better:
        froms = [s for s in better if s != BODY]
        chosen = froms[-1] if froms else BODY
        verdict = rapid_from(chosen[len(FROM) :]) if froms else RAPID_BODY
        what = f"'{chosen}'" + (" (the highest such layer)" if froms else "")
        criterion = (
            f"full adaptation beats nearest centroid; {what} is significantly better than "
            f"head-only: {_pct(found[chosen].pooled.mean)} points, "
            f"{_bounds(found[chosen].pooled.low, found[chosen].pooled.high)} ({corr})"
        )
    else:
        chosen = max(candidates, key=lambda s: found[s].pooled.mean)
        verdict = REUSE
        criterion = (
            "full adaptation beats nearest centroid, but no body-adapting setting is "
            f"significantly better than head-only ({corr}); closest '{chosen}': "
            f"{_pct(found[chosen].pooled.mean)} points, "
            f"{_bounds(found[chosen].pooled.low, found[chosen].pooled.high)}"
        )
    return {
        **row,
        **_evidence(f"{chosen} - {HEAD_ONLY}", found[chosen]),
        "verdict": verdict,
        "criterion": criterion,
        "settings": len(candidates),
    }


def verdicts(
    table: pd.DataFrame,
    test_steps: Mapping[str, int] | None = None,
    layers: Mapping[str, Sequence[str]] | None = None,
    level: float = LEVEL,
    snapshot: float = 1.0,
) -> pd.DataFrame:
    """One row per (dataset, inner-loop method, BatchNorm mode): :data:`COLUMNS`.

    ``test_steps``: each dataset's ``maml.test_inner_steps`` (which ``steps`` row is full
    adaptation); ``layers``: each dataset's parameter layers in network order (which
    ``from <k>`` is highest). The modes are those of :data:`MODES` the analyses ran.
    ``snapshot``: the models judged, by fraction of training (1.0: the final models; a
    training snapshot's rows are judged alone, on the episodes it was analysed on).
    """
    table = final(table, snapshot)
    rows = []
    for dataset in dict.fromkeys(table["dataset"]):
        part = pick(table, dataset=dataset)
        analysed = part[part["analysis"].isin(["freeze", "steps", "centroid"])]
        modes = [m for m in MODES if (analysed["batchnorm"] == m).any()]
        names = [m for m in ordered(part["method"].unique())
                 if lookup_method(m).evaluation == "inner-loop"]  # fmt: skip
        for method in names:
            for mode in modes:
                steps = None if test_steps is None else test_steps.get(dataset)
                found = decide(
                    part, dataset, method, mode, steps, (layers or {}).get(dataset), level
                )
                if not found.get("consistent", True):
                    found["verdict"] += f", {INCONSISTENT}"
                rows.append(
                    dict(dataset=dataset, classes=classes_of(part, dataset), method=method,
                         batchnorm=mode, **found)
                )  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def verdict_sentences(frame: pd.DataFrame) -> list[str]:
    """Markdown bullets, one per verdict row, criterion and both intervals beside it."""
    lines = []
    for r in frame.itertuples(index=False):
        head = (
            f"- **{r.dataset}** ({classes_phrase(str(r.classes))}), {r.method}, "
            f"{r.batchnorm} BatchNorm: **{r.verdict}**. {_sentence(str(r.criterion))}"
        )
        if r.verdict.startswith(NOT_ASSESSED):
            lines.append(head + ".")
            continue
        per_seed = ", ".join(_pct(v) for v in r.per_seed)
        seeds = (
            f"across seeds {_bounds(r.seed_low, r.seed_high)}"
            if math.isfinite(r.seed_low)
            else "one seed, so no across-seed interval"
        )
        lines.append(
            f"{head}; {r.pairs:,} episode pairs"
            + (f" ({r.dropped} with a missing accuracy left out)" if r.dropped else "")
            + f", {seeds}, per seed {per_seed}."
        )
    return lines


def inner_steps_at_test(config: Mapping[str, Any]) -> dict[str, int]:
    """Each dataset's test step count (``maml.test_inner_steps``) in a resolved config."""
    return {
        name: int(ds["maml"]["test_inner_steps"])
        for name, ds in config["datasets"].items()
        if "test_inner_steps" in ds.get("maml", {})
    }


def network_layers(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each dataset's direct child layers that own parameters, in network order (the
    ``from <k>`` settings of the layer-freezing analysis), from its network as built."""
    from mamlscope.models import build_model, resolve_options  # torch only here

    out = {}
    for name, ds in config["datasets"].items():
        model_cfg, size = ds["model"], ds["image_size"]
        model = build_model(
            model_cfg["arch"],
            (ds["channels"], size, size),
            ds["episodes"]["way"],
            hidden=model_cfg.get("hidden"),
            filters=model_cfg.get("filters"),
            options=resolve_options(model_cfg["arch"], model_cfg.get("options")),
        )
        out[name] = [
            n for n, child in model.named_children() if next(child.parameters(), None) is not None
        ]
    return out
