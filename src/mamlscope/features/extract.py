"""The probe set and the `extract_activations` job: every layer of a trained model, on the
probe images and on a few fixed test episodes before and after adaptation.

What the rows hold (layout: :mod:`mamlscope.features.activations`):

* stage ``meta``, episode ``-1``: the probe set, the same images for every method, through
  the trained weights. BatchNorm follows the project policy: standard training uses its
  running statistics; meta-learned models use batch statistics, here those of the whole
  probe batch.
* stage ``meta`` and ``adapted``, episode ``e``: the support and query images of test
  episode ``e`` before and after adaptation on its support set, as the method's
  evaluation adapts (:mod:`mamlscope.methods`): its inner loop adapts what it adapts
  (every weight, or only the head or the body) and normalises as its evaluation does
  (``maml.eval_batchnorm``: support and queries each with their own batch statistics, or
  both with the support set's); a fine-tuned model keeps its body and fits a fresh
  N-way head.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from mamlscope.data.lookup import pool_ids
from mamlscope.evaluate import EvalSettings
from mamlscope.features.activations import (
    activations_frame,
    layer_activations,
    summarise,
    write_activations,
)
from mamlscope.features.probe import choose_probe
from mamlscope.finetune import features_of, fit_heads
from mamlscope.io import atomic_path, read_parquet
from mamlscope.maml import adapt
from mamlscope.model_job import open_model_job
from mamlscope.models import statistics_from_first
from mamlscope.train_log import progress

log = logging.getLogger("mamlscope")
Acts = dict[str, torch.Tensor]


def write_probe(
    index: str | os.PathLike[str],
    pools: str | os.PathLike[str],
    *,
    images: int,
    seed: int,
    out: str | os.PathLike[str],
) -> pd.DataFrame:
    """Choose ``images`` meta-test images, class-balanced (all of them if the pool is
    smaller), and write ``example_id, class_id`` to ``out``."""
    index_df, pools_df = read_parquet(index), read_parquet(pools)
    available = len(pool_ids(pools_df, "test"))
    if images > available:
        log.info(
            "probe: the test pool holds %d images, fewer than %d; taking all", available, images
        )
    probe = choose_probe(index_df, pools_df, min(images, available), seed)
    with atomic_path(out) as tmp:
        probe.to_parquet(tmp, index=False)
    return probe


def _all_layers(
    model: nn.Module, x: torch.Tensor, *, maml: bool, params: Mapping[str, torch.Tensor] | None
) -> Acts:
    acts = layer_activations(model, x, batch_statistics=maml, params=params)
    return {name: summarise(a) for name, a in acts.items()}  # [N, F] each


def episode_activations(
    model: nn.Module,
    support_x: torch.Tensor,
    query_x: torch.Tensor,
    *,
    maml: bool,
    batchnorm: str,
    params: Mapping[str, torch.Tensor] | None = None,
) -> Acts:
    """Every layer for ``[support; query]`` of one episode, ``{layer: [N*K + N*Q, F]}``.

    MAML models normalise as their evaluation does (``batchnorm``); the baseline uses its
    running statistics, so its examples are independent.
    """
    if not maml:
        return _all_layers(model, torch.cat([support_x, query_x]), maml=False, params=params)
    if batchnorm == "support":
        with statistics_from_first(len(support_x)):
            return _all_layers(model, torch.cat([support_x, query_x]), maml=True, params=params)
    support = _all_layers(model, support_x, maml=True, params=params)
    query = _all_layers(model, query_x, maml=True, params=params)
    return {name: torch.cat([support[name], query[name]]) for name in support}


def _episode_rows(episodes: pd.DataFrame, count: int) -> list[tuple[int, pd.DataFrame]]:
    """The first ``count`` episodes, each as its rows with support first, label-major."""
    first = np.sort(episodes["episode"].unique())[:count]
    picked = episodes[episodes["episode"].isin(first)].copy()
    picked["is_query"] = picked["role"] == "query"
    picked = picked.sort_values(["episode", "is_query", "label"], kind="stable")
    return [(int(e), rows) for e, rows in picked.groupby("episode", sort=True)]


@torch.no_grad()
def extract_activations(
    *,
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    probe: str | os.PathLike[str],
    test_episodes: str | os.PathLike[str],
    settings: EvalSettings,
    adapt_episodes: int,
    device: str,
    out: str | os.PathLike[str],
    threads: int | None = None,
) -> pd.DataFrame:
    """Write the activations of one trained model (module docstring) to ``out``."""
    job = open_model_job(
        checkpoint=checkpoint, images=images, index=index, meta=meta, device=device, threads=threads
    )
    ckpt, method, torch_device, batch = job.checkpoint, job.method, job.device, job.images
    # Meta-learned models use batch statistics (the BatchNorm policy), others running ones.
    model, maml = ckpt.model, method.is_meta

    probe_df = read_parquet(probe)
    ids = probe_df["example_id"].to_numpy(np.int64)
    frames = [
        activations_frame(
            _all_layers(model, batch(ids), maml=maml, params=None), ids, probe_df["class_id"]
        )
    ]
    params = {k: p.detach() for k, p in model.named_parameters()}
    adapted_names = method.adapted(model)  # what its inner loop adapts (None: every weight)
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    chosen = _episode_rows(read_parquet(test_episodes), adapt_episodes)
    label = f"extract {ckpt.method} seed {ckpt.seed}"  # a log line every 30 s
    for episode, rows in progress(chosen, desc=label, unit="episode"):
        support, query = rows[~rows["is_query"]], rows[rows["is_query"]]
        support_x = batch(support["example_id"].to_numpy(np.int64))
        query_x = batch(query["example_id"].to_numpy(np.int64))
        support_y = torch.tensor(support["label"].to_numpy(np.int64), device=torch_device)  # a copy
        ep_ids = rows["example_id"].to_numpy(np.int64)
        labels = rows["label"].to_numpy(np.int64)
        mode = settings.batchnorm
        before = episode_activations(model, support_x, query_x, maml=maml, batchnorm=mode)
        if method.evaluation == "inner-loop":
            inner_lr, inner_steps = settings.inner_loop()
            with torch.enable_grad():
                adapted = adapt(
                    model,
                    params,
                    buffers,
                    support_x,
                    support_y,
                    inner_lr=inner_lr,
                    inner_steps=inner_steps,
                    adapted=adapted_names,
                )
            after = episode_activations(
                model, support_x, query_x, maml=maml, batchnorm=mode, params=adapted
            )
        else:
            after = _fresh_head_adapted(
                model, before, support_x, support_y, settings, ckpt.seed, episode
            )
        frames.append(activations_frame(before, ep_ids, labels, stage="meta", episode=episode))
        frames.append(activations_frame(after, ep_ids, labels, stage="adapted", episode=episode))
    frame = pd.concat(frames, ignore_index=True)
    write_activations(out, frame)
    log.info("%s seed %d: %d activation rows", ckpt.method, ckpt.seed, len(frame))
    return frame


def _fresh_head_adapted(
    model: nn.Module,
    before: Acts,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    settings: EvalSettings,
    seed: int,
    episode: int,
) -> Acts:
    """A fine-tuned model after adaptation: its body unchanged, and the fresh N-way head
    fitted on the support features as its evaluation fits it (the same seeded initial
    head)."""
    model.eval()
    steps, lr = settings.finetune()
    fs = features_of(model, support_x).unsqueeze(0)  # [1, N*K, F]
    weight, bias = fit_heads(
        fs,
        support_y.unsqueeze(0),
        way=settings.way,
        steps=steps,
        lr=lr,
        seed=seed,
        numbers=[episode],
    )
    names = list(before)
    penultimate = before[names[names.index("head") - 1]]  # [N*K + N*Q, F]
    after = {name: act for name, act in before.items() if name != "head"}
    after["head"] = penultimate @ weight[0].T + bias[0]  # [N*K + N*Q, way]
    return after
