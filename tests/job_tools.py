"""Jobs run as the workflow's rules run them, on the session's tiny digits (conftest's
``tiny_digits``), for tests that need a trained model without Snakemake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mamlscope.config import train_section
from mamlscope.evaluate import EvalSettings, run_evaluation
from mamlscope.features.extract import extract_activations
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


def evaluate_job(
    tiny: dict[str, Any], folder: Path, settings: EvalSettings, out: Path | None = None
) -> dict[str, Any]:
    """The evaluation of ``folder``'s model.pt on the fixed test episodes, as the evaluate
    rule runs it; evaluation.json and evaluation.parquet go to ``out`` (default ``folder``)."""
    out = folder if out is None else out
    return run_evaluation(
        checkpoint=folder / "model.pt",
        **{k: tiny[k] for k in ("images", "index", "meta", "pools", "test_episodes")},
        settings=settings,
        dataset="digits8",
        device="cpu",
        summary_json=out / "evaluation.json",
        summary_parquet=out / "evaluation.parquet",
    )


def extract_job(
    tiny: dict[str, Any],
    folder: Path,
    settings: EvalSettings,
    probe: Path,
    out: Path,
    adapt_episodes: int,
) -> None:
    """Activation extraction of ``folder``'s model.pt on ``probe`` into ``out``, as the
    extract_activations rule runs it."""
    extract_activations(
        checkpoint=folder / "model.pt",
        **{k: tiny[k] for k in ("images", "index", "meta")},
        probe=probe,
        test_episodes=tiny["test_episodes"],
        settings=settings,
        adapt_episodes=adapt_episodes,
        device="cpu",
        out=out,
    )
