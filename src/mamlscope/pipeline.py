"""Evaluation jobs and the run table: what the evaluate and summarise rules call."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mamlscope import __version__
from mamlscope.checkpoint import load_checkpoint
from mamlscope.evaluate import evaluate_checkpoint_on, summarize
from mamlscope.io import atomic_path
from mamlscope.prepared import PreparedDataset
from mamlscope.tasks import configured_episodes, images_to_tensor
from mamlscope.train import plain_accuracy, resolve_device

log = logging.getLogger("mamlscope")


def run_evaluation(
    *,
    checkpoint: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    dataset: str,
    device: str,
    summary_json: str | os.PathLike[str],
    summary_parquet: str | os.PathLike[str],
    threads: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the fixed test episodes; write the JSON and one-row table."""
    if threads:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    start = time.perf_counter()
    ckpt = load_checkpoint(checkpoint, torch_device)
    data = PreparedDataset.load(data_dir)
    episodes = pd.read_parquet(Path(split_dir) / "episodes_test.parquet")
    cfg = ckpt.config
    ep = cfg["episodes"]
    mean, std = data.normalize
    images = images_to_tensor(data.images, torch_device)
    batches = configured_episodes(images, episodes, cfg, mean, std, torch_device)
    per_episode = evaluate_checkpoint_on(ckpt, batches, way=ep["way"])
    accuracy = summarize(per_episode)
    row: dict[str, Any] = {
        "dataset": dataset,
        "method": ckpt.method,
        "seed": ckpt.seed,
        "way": ep["way"],
        "shot": ep["shot"],
        "query": ep["query"],
        **accuracy.as_dict(),
        "test_accuracy": _plain_test_accuracy(ckpt, data, split_dir, images, torch_device),
        "device": str(torch_device),
        "eval_seconds": time.perf_counter() - start,
        "version": __version__,
    }
    log.info("%s %s seed %d: %s", dataset, ckpt.method, ckpt.seed, accuracy)
    with atomic_path(summary_json) as tmp:
        tmp.write_text(
            json.dumps({**row, "per_episode": per_episode.tolist(), "config": cfg}, indent=2)
        )
    with atomic_path(summary_parquet) as tmp:
        pd.DataFrame([row]).to_parquet(tmp, index=False)
    return row


def _plain_test_accuracy(ckpt, data, split_dir, images, device) -> float:  # type: ignore[no-untyped-def]
    """The baseline's ordinary accuracy on held-out test images of its own classes.

    Defined only where the test pool shares the training classes (protocol `examples`);
    NaN otherwise, and for MAML checkpoints, whose heads are per-episode.
    """
    if ckpt.method != "baseline":
        return float("nan")
    pools = pd.read_parquet(Path(split_dir) / "pools.parquet")
    index = data.index.set_index("example_id")
    train_classes = np.sort(
        index.loc[pools.loc[pools["pool"] == "train", "example_id"], "class_id"].unique()
    )
    test_ids = pools.loc[pools["pool"] == "test", "example_id"].to_numpy()
    test_ids = test_ids[np.isin(index.loc[test_ids, "class_id"].to_numpy(), train_classes)]
    if test_ids.size == 0 or len(train_classes) != ckpt.spec.num_classes:
        return float("nan")
    remap = np.full(int(index["class_id"].max()) + 1, -1)
    remap[train_classes] = np.arange(len(train_classes))
    labels = torch.as_tensor(remap[index["class_id"].to_numpy()], device=device)
    mean, std = data.normalize
    return plain_accuracy(ckpt.model, images, labels, test_ids, mean, std, device)[1]


def gather_runs(
    tables: Sequence[str | os.PathLike[str]],
    out_parquet: str | os.PathLike[str],
    out_markdown: str | os.PathLike[str],
) -> pd.DataFrame:
    """One table of every run, and a Markdown summary by dataset and method."""
    runs = pd.concat([pd.read_parquet(t) for t in tables], ignore_index=True)
    runs = runs.sort_values(["dataset", "method", "seed"]).reset_index(drop=True)
    with atomic_path(out_parquet) as tmp:
        runs.to_parquet(tmp, index=False)
    lines = [
        "| dataset | method | seed | way-shot | accuracy (95% CI) | plain test accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs.itertuples():
        plain = "" if np.isnan(r.test_accuracy) else f"{100 * r.test_accuracy:.2f}%"
        lines.append(
            f"| {r.dataset} | {r.method} | {r.seed} | {r.way}-way {r.shot}-shot | "
            f"{100 * r.mean:.2f} +- {100 * r.ci95:.2f}% | {plain} |"
        )
    with atomic_path(out_markdown) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return runs
