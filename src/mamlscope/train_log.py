"""What a training loop records as it runs: the metrics rows, MAML's step log read from
the device in batches, and the progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """tqdm that refreshes often on a terminal and every 30 s in a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, mininterval=0.1 if interactive else 30, **kwargs)


class Metrics:
    """Rows of (step, phase, loss, accuracy, elapsed_s), timed from construction."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def restore(self, rows: list[dict[str, Any]], elapsed: float) -> None:
        """Continue a resumed run: its rows so far, and its clock where it stopped."""
        self.rows = [dict(row) for row in rows]
        self.start = time.perf_counter() - elapsed

    def add(
        self, step: int, phase: str, loss: float, accuracy: float, elapsed: float | None = None
    ) -> None:
        """One row; ``elapsed`` (seconds since the start) when it was taken earlier, else now."""
        if elapsed is None:
            elapsed = time.perf_counter() - self.start
        self.rows.append(
            dict(step=step, phase=phase, loss=loss, accuracy=accuracy, elapsed_s=elapsed)
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "phase", "loss", "accuracy", "elapsed_s"])


class StepLog:
    """MAML training rows waiting to be read: each step's loss and accuracy (device tensors,
    or floats) and the time the step was issued. `flush` reads all pending tensors in one
    transfer (`reads` counts them) and adds the rows to the metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.pending: list[tuple[int, float, Any, Any]] = []
        self.reads = 0  # host reads of device values (one per flush with tensors pending)

    def add(self, step: int, loss: Any, accuracy: Any) -> None:
        self.pending.append((step, self.metrics.elapsed(), loss, accuracy))

    def _read(self, losses: list[Any], accuracies: list[Any]) -> list[tuple[float, float]]:
        if not isinstance(losses[0], torch.Tensor):
            return [(float(a), float(b)) for a, b in zip(losses, accuracies, strict=True)]
        self.reads += 1
        values = torch.stack([torch.stack(losses).double(), torch.stack(accuracies).double()])
        return [(float(a), float(b)) for a, b in values.T.cpu().tolist()]

    def flush(self) -> tuple[float, float] | None:
        """Add the pending rows; the last step's (loss, accuracy), or None if none pended."""
        if not self.pending:
            return None
        rows, self.pending = self.pending, []
        values = self._read([r[2] for r in rows], [r[3] for r in rows])
        for (step, elapsed, _, _), (loss, accuracy) in zip(rows, values, strict=True):
            self.metrics.add(step, "train", loss, accuracy, elapsed=elapsed)
        return values[-1]
