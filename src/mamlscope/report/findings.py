"""The findings: sentences generated from the numbers, never typed in.

Each function returns Markdown bullet lines; :func:`findings` gathers them in order:
the best method per dataset, the ordering MAML > FOMAML >= FD (meta-gradient orders
second > first >= finite-difference, among methods whose inner loop adapts every
parameter), feature reuse from CKA (Raghu et al. 2020) and head-only against the model's
own adaptation. Two accuracies "differ" here when their 95% intervals do not overlap (a
conservative reading: intervals that overlap slightly can still differ at the 5% level).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.report.results import Results, pooled_accuracy
from mamlscope.report.studies import FEATURE_REUSE_CKA, feature_reuse

# The expected ordering MAML > FOMAML >= FD, by meta-gradient order.
ORDERS = ("second", "first", "finite-difference")
# How the head-only table names what a model's own adaptation changed.
ADAPTED = {"full": "every layer", "body": "the body only"}


def ordering_methods(methods: Iterable[str]) -> dict[str, str]:
    """``{order: method}``: for each meta-gradient order, the first of ``methods`` (display
    order) that meta-learns with it and adapts every parameter in its inner loop, the
    methods the ordering compares (a variant adapting part of the network is another
    question)."""
    found: dict[str, str] = {}
    for name in ordered(methods):
        method = lookup_method(name)
        if method.is_meta and method.adapts == "all" and method.order is not None:
            found.setdefault(method.order, name)
    return found


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
    """Per dataset: whether second > first >= finite-difference order holds by the means
    (e.g. maml > fomaml >= maml-fd, :func:`ordering_methods`), and how clearly."""
    lines = []
    for dataset, g in pooled.groupby("dataset", sort=False):
        rows = {r["method"]: r for _, r in g.iterrows()}
        by_order = ordering_methods(rows)
        missing = [o for o in ORDERS if o not in by_order]
        if missing:
            lines.append(
                f"- **{dataset}**: the ordering of meta-gradient orders second > first >= "
                f"finite-difference is not assessed (no {', '.join(missing)}-order method "
                "adapting every parameter ran)."
            )
            continue
        a, b, c = (by_order[o] for o in ORDERS)
        second, first, fd = (rows[m] for m in (a, b, c))
        above = second["mean"] > first["mean"]
        not_below = first["mean"] >= fd["mean"]
        d1 = abs(100 * (second["mean"] - first["mean"]))
        d2 = abs(100 * (first["mean"] - fd["mean"]))
        parts = [
            f"{a} {'>' if above else '<='} {b} by {d1:.2f} points ({_verdict(second, first)})",
            f"{b} {'>=' if not_below else '<'} {c} by {d2:.2f} points ({_verdict(first, fd)})",
        ]
        resolved = not overlap(second, first) and not overlap(first, fd)
        tail = "" if resolved else "; with overlapping intervals the ordering is not resolved"
        verdict = "holds" if above and not_below else "does not hold"
        lines.append(
            f"- **{dataset}**: {a} > {b} >= {c} {verdict} by the means: {parts[0]}, "
            f"{parts[1]}{tail}."
        )
    return lines


def cka_findings(cka: pd.DataFrame) -> list[str]:
    """Whether CKA before against after adaptation supports feature reuse, per model whose
    adaptation can change its body."""
    if cka is None or cka.empty:
        return [
            "- **Feature reuse:** no CKA results in this run (no `cka.parquet` under "
            "`{dataset}/compare/seed{seed}/`), so whether MAML reuses its features in "
            "adaptation (Raghu et al. 2020) is not assessed."
        ]
    reuse = feature_reuse(cka)
    # A body that adaptation never changes (a fresh head, or an inner loop over the head
    # only) stays put by design: no evidence either way.
    reuse = reuse[[lookup_method(m).adapts_body for m in reuse["method"]]]
    if reuse.empty:
        return [
            "- **Feature reuse:** the CKA results hold no model whose adaptation can change "
            "its body, so feature reuse is not assessed."
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
    """Head-only against the model's own adaptation (every layer, or the body), per model
    whose own adaptation is more than the head, when the run measured it."""
    if head_only is None or head_only.empty:
        return [
            "- **Head-only adaptation:** not produced by this run (no "
            "`head_only.parquet`), so head-only against full adaptation is not compared."
        ]
    lines = []
    for (dataset, method), g in head_only.groupby(["dataset", "method"], sort=False):
        rows = {r["adaptation"]: r for _, r in g.iterrows()}
        own_kind = next((a for a in ADAPTED if a in rows), None)
        if own_kind is None or "head" not in rows:
            continue
        own, head = rows[own_kind], rows["head"]
        for r in (own, head):
            r["low"], r["high"] = r["mean"] - r["ci95"], r["mean"] + r["ci95"]
        gap = 100 * (own["mean"] - head["mean"])
        lines.append(
            f"- **{dataset}, {method}**: adapting the head only gives {_acc(head)} against "
            f"{_acc(own)} adapting {ADAPTED[own_kind]} ({gap:+.2f} points for its own "
            f"adaptation; {_verdict(own, head)})."
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
