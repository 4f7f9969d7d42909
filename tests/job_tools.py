"""Jobs run as the workflow's rules run them, on the session's tiny digits (conftest's
``tiny_digits``), for tests that need a trained model without Snakemake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamlscope.config import train_section
from mamlscope.train import TrainResult, run_training


def train_job(
    tiny: dict[str, Any],
    cfg: dict[str, Any],
    method: str,
    folder: Path,
    *,
    seed: int = 0,
    snapshots: bool = False,
) -> TrainResult:
    """One training job into ``folder`` (model.pt, metrics.parquet, and snapshots.pt when
    ``snapshots``), as the train rule runs it: the method's training keys as its config,
    the whole dataset config saved with the checkpoint."""
    return run_training(
        **{k: tiny[k] for k in ("images", "index", "meta", "pools", "val_episodes")},
        config=train_section(cfg, method),
        saved_config=cfg,
        method=method,
        seed=seed,
        device="cpu",
        checkpoint=folder / "model.pt",
        metrics=folder / "metrics.parquet",
        snapshots=folder / "snapshots.pt" if snapshots else None,
        progress=False,
    )
