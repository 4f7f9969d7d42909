"""Table cells of accuracies, shared by the report and the docs' result blocks.

A NaN accuracy is missing, never a number: a cell is over the values that exist and says
how many are missing, and is ``missing`` when none does, so no reader takes a NaN (or a
blank) for a result. ``None``, a missing number as strict JSON stores it (``null``,
:func:`mamlscope.io.to_json`), is missing alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

import numpy as np


def found(x: float | None) -> TypeGuard[float]:
    """Whether ``x`` is a number: not None (JSON's null), NaN or infinite."""
    return x is not None and bool(np.isfinite(x))


def pct(x: float | None, digits: int = 2) -> str:
    """``0.9671`` -> ``"96.71%"``; NaN or None -> ``""``."""
    return f"{100 * x:.{digits}f}%" if found(x) else ""


def _missing(n: int, of: int | None = None) -> str:
    """`` (3 episodes missing)``, `` (1 of 200 episodes missing)``; empty for none."""
    if not n:
        return ""
    return f" ({n}{f' of {of:,}' if of else ''} episode{'s' if n != 1 or of else ''} missing)"


def accuracy_cell(
    mean: float | None, ci95: float | None, missing: int = 0, episodes: int = 0
) -> str:
    """``88.13 ± 0.77%``, saying how many episodes lack an accuracy; ``missing`` when
    none has one (a NaN is never printed as a number)."""
    if not found(mean):
        return "missing"
    if not found(ci95):
        return f"{pct(mean)}{_missing(missing, episodes)}"
    return f"{100 * mean:.2f} ± {100 * ci95:.2f}%{_missing(missing, episodes)}"


def seed_cells(means: Sequence[float | None], missing: Sequence[int] = ()) -> str:
    """Each seed's mean, in seed order: ``87.44% (1 episode missing), missing``."""
    counts = list(missing) or [0] * len(means)
    return ", ".join(
        (pct(m) + _missing(k)) if found(m) else "missing"
        for m, k in zip(means, counts, strict=True)
    )


def plain_cells(plain: Sequence[float | None], digits: int = 2) -> str:
    """Plain test accuracy per seed; empty when no seed has one (the method reports none
    or the test classes are unseen), ``missing`` for a seed that lacks it."""
    if not any(found(p) for p in plain):
        return ""
    return ", ".join(pct(p, digits) if found(p) else "missing" for p in plain)


def over_seeds(means: Sequence[float | None], low: float | None, high: float | None) -> str:
    """The mean of the seed means ± the half width of their t interval; one seed: none.
    Seeds without a mean (NaN or None) are left out, and the cell says so."""
    present = [m for m in means if found(m)]
    lacking = len(means) - len(present)
    note = f" ({lacking} of {len(means)} seeds missing)" if lacking else ""
    if not present:
        return "missing"
    if not (found(low) and found(high)):
        return ("one seed: no interval" if len(present) == 1 else "") + note
    return f"{100 * np.mean(present):.2f} ± {100 * (high - low) / 2:.2f}%{note}"
