"""The findings: sentences generated from the numbers, never typed in.

Each function returns Markdown bullet lines; :func:`findings` gathers them by heading:
the verdicts (rapid learning or feature reuse, :mod:`mamlscope.report.verdicts`), MAML
against standard training like for like (the same BatchNorm protocol on both sides), the
best method per dataset and the ordering MAML > FOMAML >= FD (meta-gradient orders second >
first >= finite-difference, among methods adapting every parameter).

Every run of a dataset is tested on the same episodes, so methods are compared by paired
differences (:mod:`mamlscope.stats`): "significantly" means the paired 95% interval, pooled
over every seed's episodes, excludes 0; the interval over the seeds' mean differences is
given beside it. Best method and ordering use the episodes where every method has an
accuracy, so their means and differences agree (a method cannot be best and significantly
below another). A missing number gives a sentence saying so, never a conclusion.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.report.analyses import like_for_like_of, verdicts_of
from mamlscope.report.results import Results
from mamlscope.report.verdicts import classes_of, classes_phrase, verdict_sentences
from mamlscope.stats import Paired, compare

# The expected ordering MAML > FOMAML >= FD, by meta-gradient order.
ORDERS = ("second", "first", "finite-difference")
NOT_PRODUCED = "not produced by this run (no `results/episodes.parquet`)"
PAIRING_WORDS = {
    "transductive": "transductive, both normalising an episode's queries together",
    "non-transductive": "non-transductive, the meta method normalising each query with its "
    "support set's statistics and the baseline with its running statistics",
}


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


def points(x: float) -> str:
    return f"{100 * x:+.2f}"


def bounds(low: float, high: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "undefined"
    return f"[{points(low)}, {points(high)}]"


def relation(low: float, high: float) -> str:
    """How ``a`` stands to ``b`` by the interval of ``a - b``."""
    if math.isfinite(low) and low > 0:
        return "significantly above"
    if math.isfinite(high) and high < 0:
        return "significantly below"
    return "not separated from"


def _diff(p: Paired) -> str:
    return _difference(
        p.pooled.mean, p.pooled.low, p.pooled.high, p.pooled.n, p.seeds.low, p.seeds.high
    ) + ("" if p.consistent else "; not consistent across seeds")


def _difference(
    mean: float, low: float, high: float, n: int, seed_low: float, seed_high: float
) -> str:
    seeds = (
        f"across seeds {bounds(seed_low, seed_high)}"
        if math.isfinite(seed_low) and math.isfinite(seed_high)
        else "one seed"
    )
    return (
        f"{points(mean)} points, paired 95% interval {bounds(low, high)} over {n:,} episode "
        f"pairs, {seeds}"
    )


def _acc(x: float) -> str:
    return "missing" if not math.isfinite(x) else f"{100 * x:.2f}%"


def evaluation_pairs(results: Results, dataset: str) -> tuple[pd.DataFrame, list[str], int]:
    """Each method's own evaluation on the dataset's episodes, one column per method, rows
    (seed, episode) where every method has an accuracy; the methods with none at all
    (left out) and how many episode rows a missing accuracy removed."""
    eps = results.episodes[results.episodes["dataset"] == dataset]
    wide = eps.pivot_table(
        index=["seed", "episode"], columns="method", values="accuracy", dropna=False
    )
    empty = [m for m in wide.columns if wide[m].isna().all()]
    wide = wide.drop(columns=empty)
    complete = wide.dropna()
    return complete[ordered(complete.columns)], empty, len(wide) - len(complete)


def _slice(wide: pd.DataFrame, method: str) -> pd.DataFrame:
    return wide[method].rename("accuracy").reset_index()


def _eval_modes(results: Results, dataset: str) -> dict[str, str]:
    runs = results.runs[results.runs["dataset"] == dataset]
    return {
        m: ", ".join(sorted(g["batchnorm"].astype(str).unique()))
        for m, g in runs.groupby("method", sort=False)
    }


def _missing_note(empty: list[str], dropped: int) -> str:
    note = f" No accuracy for {', '.join(empty)}: left out." if empty else ""
    if dropped:
        note += (
            f" {dropped} episode row{'s' if dropped != 1 else ''} with a missing accuracy left out."
        )
    return note


def best_methods(results: Results) -> list[str]:
    """Per dataset: the best method by its own evaluation and, paired, how it stands to
    every other method."""
    lines = []
    for dataset in results.datasets:
        wide, empty, dropped = evaluation_pairs(results, dataset)
        note = _missing_note(empty, dropped)
        if wide.empty or not len(wide.columns):
            lines.append(f"- **{dataset}**: no method has accuracies here, so none is best.{note}")
            continue
        means = wide.mean()
        best = str(means.idxmax())
        modes = _eval_modes(results, dataset)
        line = (
            f"- **{dataset}**: {best} is best by its own evaluation with {_acc(means[best])} "
            f"(BatchNorm {modes.get(best, '?')})"
        )
        parts = []
        for other in (m for m in wide.columns if m != best):
            found = compare(_slice(wide, best), _slice(wide, other))
            parts.append(
                f"{relation(found.pooled.low, found.pooled.high)} {other} "
                f"({_acc(means[other])}, BatchNorm {modes.get(other, '?')}; {_diff(found)})"
            )
        line += (": " + "; ".join(parts) + ".") if parts else " (the only method)."
        if len(set(modes.values())) > 1:
            line += " The methods normalise differently: see the like-for-like comparison."
        lines.append(line + note)
    return lines


def maml_ordering(results: Results) -> list[str]:
    """Per dataset: whether second > first >= finite-difference order holds, paired."""
    lines = []
    for dataset in results.datasets:
        wide, empty, dropped = evaluation_pairs(results, dataset)
        by_order = ordering_methods(wide.columns)
        missing = [o for o in ORDERS if o not in by_order]
        if missing:
            lines.append(
                f"- **{dataset}**: the ordering of meta-gradient orders second > first >= "
                f"finite-difference is not assessed (no {', '.join(missing)}-order method "
                f"adapting every parameter has accuracies).{_missing_note(empty, dropped)}"
            )
            continue
        a, b, c = (by_order[o] for o in ORDERS)
        ab = compare(_slice(wide, a), _slice(wide, b))
        bc = compare(_slice(wide, b), _slice(wide, c))
        if ab.pooled.above_zero and not bc.pooled.below_zero:
            verdict = "holds"
        elif ab.pooled.below_zero or bc.pooled.below_zero:
            verdict = "does not hold"
        else:
            verdict = "is not resolved by these episodes"
        lines.append(
            f"- **{dataset}**: {a} > {b} >= {c} {verdict}: {a} is "
            f"{relation(ab.pooled.low, ab.pooled.high)} {b} ({_diff(ab)}); {b} is "
            f"{relation(bc.pooled.low, bc.pooled.high)} {c} ({_diff(bc)})."
            + _missing_note(empty, dropped)
        )
    return lines


def verdict_findings(results: Results) -> list[str]:
    """Per dataset, seen or unseen test classes: the verdicts and their criteria."""
    if results.analyses.empty:
        return [f"- **Rapid learning or feature reuse:** {NOT_PRODUCED}, so not assessed."]
    found = verdicts_of(results)
    if found.empty:
        return ["- **Rapid learning or feature reuse:** no inner-loop method was analysed."]
    return verdict_sentences(found)


def like_for_like_findings(results: Results) -> list[str]:
    """Each meta method against the baseline under the same BatchNorm protocol, both
    pairings (transductive; non-transductive), paired."""
    if results.analyses.empty:
        return [f"- **Like for like:** {NOT_PRODUCED}, so not compared."]
    found = like_for_like_of(results)
    if found.empty:
        return ["- **Like for like:** no meta method and fine-tuned baseline both analysed."]
    lines = []
    for r in found.itertuples(index=False):
        where = (
            f"- **{r.dataset}** ({classes_phrase(classes_of(results.analyses, r.dataset))}), "
            f"{PAIRING_WORDS[r.pairing]}: {r.method}'s full adaptation ({r.method_batchnorm}) "
            f"against {r.baseline}'s fresh head ({r.baseline_batchnorm})"
        )
        if r.missing:
            lines.append(f"{where}: missing ({r.missing}), so not compared.")
            continue
        diff = _difference(r.difference, r.low, r.high, int(r.pairs), r.seed_low, r.seed_high)
        lines.append(
            f"{where}: {_acc(r.method_mean)} against {_acc(r.baseline_mean)}, "
            f"{relation(r.low, r.high)} it ({diff})"
            + ("" if r.consistent else "; not consistent across seeds")
            + (f"; {int(r.dropped)} pairs with a missing accuracy left out" if r.dropped else "")
            + "."
        )
    return lines


def findings(results: Results) -> dict[str, list[str]]:
    """Every finding as Markdown bullet lines, by heading."""
    return {
        "Rapid learning or feature reuse?": verdict_findings(results),
        "MAML against standard training, like for like": like_for_like_findings(results),
        "Best method per dataset": best_methods(results),
        "MAML > FOMAML >= FD?": maml_ordering(results),
    }
