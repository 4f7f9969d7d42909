"""Table cells of accuracies, shared by the report and the docs' result blocks.

A NaN accuracy is missing, never a number: a cell is over the values that exist and says
how many are missing, and is ``missing`` when none does, so no reader takes a NaN (or a
blank) for a result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pct(x: float, digits: int = 2) -> str:
    """``0.9671`` -> ``"96.71%"``; NaN -> ``""``."""
    return "" if x is None or not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def _missing(n: int, of: int | None = None) -> str:
    """`` (3 episodes missing)``, `` (1 of 200 episodes missing)``; empty for none."""
    if not n:
        return ""
    return f" ({n}{f' of {of:,}' if of else ''} episode{'s' if n != 1 or of else ''} missing)"


def accuracy_cell(mean: float, ci95: float, missing: int = 0, episodes: int = 0) -> str:
    """``88.13 ± 0.77%``, saying how many episodes lack an accuracy; ``missing`` when
    none has one (a NaN is never printed as a number)."""
    if not np.isfinite(mean):
        return "missing"
    return f"{100 * mean:.2f} ± {100 * ci95:.2f}%{_missing(missing, episodes)}"


def seed_cells(means: Sequence[float], missing: Sequence[int] = ()) -> str:
    """Each seed's mean, in seed order: ``87.44% (1 episode missing), missing``."""
    counts = list(missing) or [0] * len(means)
    return ", ".join(
        (pct(m) + _missing(k)) if np.isfinite(m) else "missing"
        for m, k in zip(means, counts, strict=True)
    )


def plain_cells(plain: Sequence[float], digits: int = 2) -> str:
    """Plain test accuracy per seed; empty when no seed has one (the method reports none
    or the test classes are unseen), ``missing`` for a seed that lacks it."""
    if not any(np.isfinite(p) for p in plain):
        return ""
    return ", ".join(pct(p, digits) if np.isfinite(p) else "missing" for p in plain)


def over_seeds(means: Sequence[float], low: float, high: float) -> str:
    """The mean of the seed means ± the half width of their t interval; one seed: none.
    Seeds without a mean (NaN) are left out, and the cell says so."""
    found = [m for m in means if np.isfinite(m)]
    lacking = len(means) - len(found)
    note = f" ({lacking} of {len(means)} seeds missing)" if lacking else ""
    if not found:
        return "missing"
    if not (np.isfinite(low) and np.isfinite(high)):
        return ("one seed: no interval" if len(found) == 1 else "") + note
    return f"{100 * np.mean(found):.2f} ± {100 * (high - low) / 2:.2f}%{note}"
