"""Snapshots of a model during training, so the analyses can ask *when* a verdict appears.

Rapid learning or feature reuse may depend on how long a model has trained (docs/results.md
saw rapid learning in the last conv block of Omniglot models after 400 meta-steps): the
training loop keeps the weights at a few evenly spaced steps (``maml.snapshots``), and the
analyses run on each (:mod:`mamlscope.analyses`). One file per run holds them all:
``{"format", "total", "steps", "state_dicts"}``; a snapshot is rebuilt from the run's
checkpoint (its network description) and the snapshot's weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mamlscope.checkpoint import Checkpoint
from mamlscope.errors import CheckpointError
from mamlscope.io import atomic_path

FORMAT = "mamlscope-snapshots/1"


def snapshot_steps(total: int, count: int) -> list[int]:
    """``count`` evenly spaced steps of ``total``, the last one ``total`` (e.g. 600 and 5:
    120, 240, 360, 480, 600); fewer when ``total`` has fewer steps; none for ``count`` 0."""
    if total < 0 or count < 0:
        raise ValueError(f"total and count must be >= 0, got {total} and {count}")
    if total == 0 or count == 0:
        return []
    return sorted({max(1, round(total * i / count)) for i in range(1, count + 1)})


@dataclass
class Snapshots:
    """The weights kept during one training run, at `snapshot_steps(total, count)`."""

    total: int
    count: int
    taken: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def final(cls, model: nn.Module) -> Snapshots:
        """The final weights alone: what standard training keeps."""
        kept = cls(1, 1)
        kept.take(1, model)
        return kept

    @property
    def steps(self) -> list[int]:
        return snapshot_steps(self.total, self.count)

    def take(self, step: int, model: nn.Module) -> None:
        """Keep a CPU copy of ``model``'s weights if ``step`` is a snapshot step."""
        if step in self.steps:
            self.taken[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state(self) -> dict[int, dict[str, torch.Tensor]]:
        """What a resume state carries (the snapshots taken so far)."""
        return dict(self.taken)

    def restore(self, taken: dict[int, dict[str, torch.Tensor]] | None) -> None:
        """Continue from a resume state's snapshots (None: a state written without them)."""
        self.taken = {int(k): v for k, v in (taken or {}).items()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every snapshot taken; a missing one (a step the run never reached) is an
        error, so a file never looks complete when it is not."""
        missing = [s for s in self.steps if s not in self.taken]
        if missing:
            raise RuntimeError(f"snapshots of steps {missing} were never taken")
        payload = {
            "format": FORMAT,
            "total": self.total,
            "steps": self.steps,
            "state_dicts": {str(s): self.taken[s] for s in self.steps},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)


def load_snapshots(
    path: str | os.PathLike[str], checkpoint: Checkpoint
) -> list[tuple[float, nn.Module]]:
    """``(fraction of training, model)`` of every snapshot in ``path``, in step order, each
    rebuilt like ``checkpoint`` (its network, device, eval mode) with the snapshot's
    weights. Every way the file can be wrong is a CheckpointError naming it."""
    path = Path(path)
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable snapshots file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mamlscope snapshots file (expected {FORMAT})")
    device = next(checkpoint.model.parameters()).device
    out = []
    for step in payload["steps"]:
        model = checkpoint.spec.build()
        try:
            model.load_state_dict(payload["state_dicts"][str(step)])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: snapshot of step {step} does not fit the run's "
                f"{checkpoint.spec.arch} network: {exc}"
            ) from exc
        out.append((step / payload["total"], model.to(device).eval()))
    return out
