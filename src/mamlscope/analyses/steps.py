"""Accuracy against the number of inner steps: is the method's adaptation fast or slow?

Zero steps is the meta-learned initialisation's own prediction (no adaptation at all);
the counts always include the training inner steps and the evaluation's, so the curve
passes through both operating points.
"""

from __future__ import annotations

from collections.abc import Iterable


def step_counts(configured: Iterable[int], train_steps: int, test_steps: int) -> list[int]:
    """The configured counts plus the training and test inner steps, ascending, once each."""
    counts = {*configured, train_steps, test_steps}
    bad = sorted(n for n in counts if isinstance(n, bool) or not isinstance(n, int) or n < 0)
    if bad:
        raise ValueError(f"inner step counts must be integers >= 0, got {bad}")
    return sorted(counts)
