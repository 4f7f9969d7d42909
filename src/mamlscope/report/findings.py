"""The findings: sentences generated from the numbers, never typed in.

Each function returns Markdown bullet lines; :func:`findings` gathers them in order:
the best method per dataset, the ordering MAML > FOMAML >= FD, feature reuse from CKA
(Raghu et al. 2020) and head-only against full adaptation. Two accuracies "differ" here
when their 95% intervals do not overlap (a conservative reading: intervals that overlap
slightly can still differ at the 5% level).
"""

from __future__ import annotations

import pandas as pd

from mamlscope.report.results import Results, pooled_accuracy
from mamlscope.report.studies import FEATURE_REUSE_CKA, feature_reuse

ORDER = ("maml", "fomaml", "maml-fd")  # the expected ordering MAML > FOMAML >= FD


def overlap(a: pd.Series, b: pd.Series) -> bool:
    """Whether the 95% intervals ``[low, high]`` of two rows overlap."""
    return bool(a["low"] <= b["high"] and b["low"] <= a["high"])


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"mean of {n} seeds"


def _acc(row: pd.Series) -> str:
    return f"{100 * row['mean']:.2f} ± {100 * row['ci95']:.2f}%"


def _verdict(a: pd.Series, b: pd.Series) -> str:
    return "their 95% intervals overlap" if overlap(a, b) else "their 95% intervals do not overlap"


def best_methods(pooled: pd.DataFrame) -> list[str]:
    """Per dataset: the best method, its margin over the runner-up, whether they overlap."""
    lines = []
    for dataset, g in pooled.groupby("dataset", sort=False):
        g = g.sort_values("mean", ascending=False)
        best = g.iloc[0]
        if len(g) == 1:
            lines.append(f"- **{dataset}**: only {best['method']} ran ({_acc(best)}).")
            continue
        second, last = g.iloc[1], g.iloc[-1]
        gap = 100 * (best["mean"] - second["mean"])
        line = (
            f"- **{dataset}**: {best['method']} is best with {_acc(best)}, {gap:.2f} points "
            f"above the runner-up {second['method']} ({_acc(second)}); {_verdict(best, second)}"
        )
        line += ", so these episodes do not separate the two." if overlap(best, second) else "."
        if len(g) > 2:
            line += f" Last is {last['method']} ({_acc(last)})."
        lines.append(line)
    return lines


def maml_ordering(pooled: pd.DataFrame) -> list[str]:
    """Per dataset: whether maml > fomaml >= maml-fd holds by the means, and how clearly."""
    lines = []
    for dataset, g in pooled.groupby("dataset", sort=False):
        rows = {r["method"]: r for _, r in g.iterrows()}
        missing = [m for m in ORDER if m not in rows]
        if missing:
            lines.append(
                f"- **{dataset}**: the ordering maml > fomaml >= maml-fd is not assessed "
                f"({', '.join(missing)} did not run)."
            )
            continue
        maml, fo, fd = (rows[m] for m in ORDER)
        first = maml["mean"] > fo["mean"]
        second = fo["mean"] >= fd["mean"]
        holds = first and second
        d1, d2 = abs(100 * (maml["mean"] - fo["mean"])), abs(100 * (fo["mean"] - fd["mean"]))
        parts = [
            f"maml {'>' if first else '<='} fomaml by {d1:.2f} points ({_verdict(maml, fo)})",
            f"fomaml {'>=' if second else '<'} maml-fd by {d2:.2f} points ({_verdict(fo, fd)})",
        ]
        resolved = not overlap(maml, fo) and not overlap(fo, fd)
        tail = "" if resolved else "; with overlapping intervals the ordering is not resolved"
        lines.append(
            f"- **{dataset}**: maml > fomaml >= maml-fd {'holds' if holds else 'does not hold'} "
            f"by the means: {parts[0]}, {parts[1]}{tail}."
        )
    return lines


def cka_findings(cka: pd.DataFrame) -> list[str]:
    """Whether CKA before against after adaptation supports feature reuse, per MAML flavour."""
    if cka is None or cka.empty:
        return [
            "- **Feature reuse:** no CKA results in this run (no `cka.parquet` under "
            "`{dataset}/compare/seed{seed}/`), so whether MAML reuses its features in "
            "adaptation (Raghu et al. 2020) is not assessed."
        ]
    reuse = feature_reuse(cka)
    reuse = reuse[reuse["method"] != "baseline"]  # the baseline's body is frozen by design
    if reuse.empty:
        return [
            "- **Feature reuse:** the CKA results hold no MAML model before and after "
            "adaptation, so feature reuse is not assessed."
        ]
    lines = []
    for r in reuse.itertuples():
        detail = (
            f"body layers' CKA before against after adaptation {r.body_mean:.3f} on average, "
            f"lowest {r.body_min:.3f} ({r.body_min_layer}); the head's {r.head:.3f}"
        )
        if r.reuse:
            verdict = (
                f"supports feature reuse: every body layer stays above {FEATURE_REUSE_CKA} "
                "and the head changes most"
            )
        elif r.body_min < FEATURE_REUSE_CKA:
            verdict = (
                f"does not support feature reuse: {r.body_min_layer} falls below "
                f"{FEATURE_REUSE_CKA}, so adaptation changes the body too"
            )
        else:
            verdict = (
                "only partly supports feature reuse: the body stays above "
                f"{FEATURE_REUSE_CKA} but the head does not change most"
            )
        lines.append(
            f"- **{r.dataset}, {r.method}** ({_seeds(r.seeds)}): {detail}; this {verdict} "
            "(Raghu et al. 2020)."
        )
    return lines


def head_only_findings(head_only: pd.DataFrame | None) -> list[str]:
    """Head-only against full adaptation per MAML flavour, when the run measured it."""
    if head_only is None or head_only.empty:
        return [
            "- **Head-only adaptation:** not produced by this run (no "
            "`head_only.parquet`), so head-only against full adaptation is not compared."
        ]
    lines = []
    for (dataset, method), g in head_only.groupby(["dataset", "method"], sort=False):
        rows = {r["adaptation"]: r for _, r in g.iterrows()}
        if not {"full", "head"} <= set(rows):
            continue
        full, head = rows["full"], rows["head"]
        for r in (full, head):
            r["low"], r["high"] = r["mean"] - r["ci95"], r["mean"] + r["ci95"]
        gap = 100 * (full["mean"] - head["mean"])
        lines.append(
            f"- **{dataset}, {method}**: adapting the head only gives {_acc(head)} against "
            f"{_acc(full)} adapting every layer ({gap:+.2f} points for full adaptation; "
            f"{_verdict(full, head)})."
        )
    return lines or ["- **Head-only adaptation:** no model has both head-only and full rows."]


def findings(
    results: Results, cka: pd.DataFrame | None = None, head_only: pd.DataFrame | None = None
) -> dict[str, list[str]]:
    """Every finding as Markdown bullet lines, by heading."""
    pooled = pooled_accuracy(results)
    return {
        "Best method per dataset": best_methods(pooled),
        "MAML > FOMAML >= FD?": maml_ordering(pooled),
        "Feature reuse (CKA)": cka_findings(cka),
        "Head-only against full adaptation": head_only_findings(head_only),
    }
