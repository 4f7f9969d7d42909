"""Per-episode CKA over training: how much each layer moves in adaptation, at each snapshot.

The feature studies' CKA (:mod:`mamlscope.features.cka_study`) describes the final model
only. Here the same description is taken at every training snapshot and at the final
weights (:mod:`mamlscope.snapshots`), so the report can show whether the body starts or
stops moving in adaptation as meta-training goes on, beside the accuracy verdicts.

Each value is one episode's, exactly as the feature studies compute it: the support and
query images of one fixed test episode recorded before and after adaptation on its own
support labels (the method's inner loop, its adapted set, the evaluation's steps and
BatchNorm mode), linear CKA of each layer on the rows in example order, as
:func:`~mamlscope.features.cka_study.episode_cka` computes it from the activations file.
Only the first ``features.adapt_episodes`` test episodes, their inner loops batched as
evaluation batches them, to keep the job cheap. A method without an inner loop (standard training)
keeps only its final weights and adapts a fresh head: it has no rows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import vmap

from mamlscope.evaluate import EvalSettings
from mamlscope.features.extract import episode_activations
from mamlscope.io import atomic_path, read_parquet
from mamlscope.maml import adapt
from mamlscope.methods import Method
from mamlscope.similarity import linear_cka

log = logging.getLogger("mamlscope")

# results/{dataset}/{method}/seed{seed}/training_cka.parquet and results/training_cka.parquet:
# name -> dtype, in column order.
COLUMNS: dict[str, str] = {
    "dataset": "str",
    "method": "str",
    "seed": "int64",
    "snapshot": "float64",
    "layer": "str",
    "episode": "int64",
    "cka": "float64",
}
# Layers keep their network order within a (run, snapshot): a stable sort on these only.
SORT = ["dataset", "method", "seed", "snapshot"]
Images = Callable[[np.ndarray], torch.Tensor]  # example ids -> normalised [n, C, H, W]


@dataclass(frozen=True)
class CkaEpisode:
    """One fixed test episode's examples, support first, each part label-major (the order
    the feature studies record them in)."""

    episode: int
    support_ids: np.ndarray
    support_labels: np.ndarray
    query_ids: np.ndarray
    query_labels: np.ndarray


def cka_episodes(table: pd.DataFrame, count: int) -> list[CkaEpisode]:
    """The first ``count`` episodes (by number) of an episode table
    (``episode, role, example_id, label``)."""
    if count < 1:
        raise ValueError(f"features.adapt_episodes must be >= 1, got {count}")
    first = np.sort(table["episode"].unique())[:count]
    picked = table[table["episode"].isin(first)].sort_values(["episode", "label"], kind="stable")
    out = []
    for episode, rows in picked.groupby("episode", sort=True):
        support, query = rows[rows["role"] == "support"], rows[rows["role"] == "query"]
        out.append(
            CkaEpisode(
                int(episode),
                support["example_id"].to_numpy(np.int64),
                support["label"].to_numpy(np.int64),
                query["example_id"].to_numpy(np.int64),
                query["label"].to_numpy(np.int64),
            )
        )
    return out


def _matrix(act: torch.Tensor) -> np.ndarray:
    """A layer's ``[N, F]`` activations as the activations file stores them (float32)."""
    return act.detach().to("cpu", torch.float32).numpy()


def _adapted_batch(
    model: nn.Module,
    method: Method,
    settings: EvalSettings,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The adapted parameters of a batch of episodes ``[E, ...]`` (each episode's own inner
    loop, mapped over the batch as evaluation maps it: one call per batch, not per episode)."""
    inner_lr, inner_steps = settings.inner_loop()
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    names = method.adapted(model)

    def one(sx: torch.Tensor, sy: torch.Tensor) -> dict[str, torch.Tensor]:
        return adapt(model, params, buffers, sx, sy, inner_lr=inner_lr, inner_steps=inner_steps,
                     adapted=names)  # fmt: skip

    with torch.enable_grad():  # torch.func.grad inside
        return vmap(one)(support_x, support_y)


@torch.no_grad()
def model_episode_cka(
    model: nn.Module,
    method: Method,
    settings: EvalSettings,
    episodes: Sequence[CkaEpisode],
    images: Images,
) -> pd.DataFrame:
    """``layer, episode, cka`` of one inner-loop model: every recorded layer before against
    after adaptation, per episode, layer by layer in network order.

    The feature studies' computation (:func:`~mamlscope.features.cka_study.episode_cka` of
    the activations :func:`~mamlscope.features.extract.extract_activations` records: rows in
    example order, float32) without writing the activations out; episodes adapt
    ``settings.batch`` at a time."""
    if method.evaluation != "inner-loop":
        raise ValueError(f"{method.name}: CKA over training needs an inner-loop method")
    mode, maml = settings.batchnorm, method.is_meta
    rows: list[tuple[str, int, float]] = []
    for first in range(0, len(episodes), settings.batch):
        chunk = episodes[first : first + settings.batch]
        support = [images(ep.support_ids) for ep in chunk]
        labels = [torch.as_tensor(ep.support_labels.copy(), device=support[0].device)
                  for ep in chunk]  # fmt: skip
        adapted = _adapted_batch(model, method, settings, torch.stack(support), torch.stack(labels))
        for i, ep in enumerate(chunk):
            query_x = images(ep.query_ids)
            weights = {k: v[i] for k, v in adapted.items()}
            before = episode_activations(model, support[i], query_x, maml=maml, batchnorm=mode)
            after = episode_activations(
                model, support[i], query_x, maml=maml, batchnorm=mode, params=weights
            )
            order = np.argsort(np.concatenate([ep.support_ids, ep.query_ids]), kind="stable")
            for layer, act in before.items():
                value = linear_cka(_matrix(act)[order], _matrix(after[layer])[order])
                rows.append((layer, ep.episode, value))
    out = pd.DataFrame(rows, columns=["layer", "episode", "cka"])
    rank = {layer: i for i, layer in enumerate(dict.fromkeys(out["layer"]))}
    out = out.sort_values("layer", key=lambda c: c.map(rank), kind="stable")
    return out.astype({"layer": str, "episode": np.int64, "cka": np.float64}).reset_index(drop=True)


def training_cka(
    models: Sequence[tuple[float, nn.Module]],
    method: Method,
    settings: EvalSettings,
    episodes: Sequence[CkaEpisode],
    images: Images,
    *,
    label: str = "CKA over training",
) -> pd.DataFrame:
    """``snapshot, layer, episode, cka`` for each ``(fraction of training, model)``; no
    rows for a method without an inner loop. Logs one line per model with its time."""
    parts = []
    if method.evaluation == "inner-loop":
        for fraction, model in models:
            start = time.perf_counter()
            part = model_episode_cka(model, method, settings, episodes, images)
            parts.append(part.assign(snapshot=float(fraction)))
            log.info(
                "%s: CKA before/after adaptation at %.0f%% of training: %d episodes, mean "
                "%.3f, %.1f s",
                label,
                100 * fraction,
                len(episodes),
                float(np.nanmean(part["cka"])) if len(part) else float("nan"),
                time.perf_counter() - start,
            )
    if not parts:
        return pd.DataFrame({"snapshot": [], "layer": [], "episode": [], "cka": []})
    return pd.concat(parts, ignore_index=True)[["snapshot", "layer", "episode", "cka"]]


def empty_table() -> pd.DataFrame:
    """The table with its columns and no row (a run without an inner loop)."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly :data:`COLUMNS`, of their dtypes, stably sorted by
    :data:`SORT` (layers stay in network order); a missing column is a ValueError."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"the CKA-over-training table lacks the columns {missing}")
    out = frame[list(COLUMNS)].astype(COLUMNS)
    return out.sort_values(SORT, kind="stable").reset_index(drop=True)


def run_cka_rows(frame: pd.DataFrame, *, dataset: str, method: str, seed: int) -> pd.DataFrame:
    """One run's table: :func:`training_cka`'s rows with the run's columns added."""
    return typed(frame.assign(dataset=dataset, method=method, seed=int(seed)))


def write_table(frame: pd.DataFrame, out: str | os.PathLike[str]) -> None:
    with atomic_path(out) as tmp:
        typed(frame).to_parquet(tmp, index=False)


def gather_training_cka(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> pd.DataFrame:
    """Every run's CKA over training in one table (:data:`COLUMNS`), written to ``out``."""
    frames = [read_parquet(path) for path in paths]
    frames = [f for f in frames if len(f)] or [empty_table()]
    table = typed(pd.concat(frames, ignore_index=True))
    write_table(table, out)
    return table
