"""Training: the standard baseline and MAML's three flavours, on one dataset and seed.

Both loops return the trained model and a metrics table (step, phase, loss, accuracy,
elapsed seconds); `run_training` ties them to the prepared data, the split and a
checkpoint so that a Snakemake rule is one call.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mamlscope.checkpoint import ModelSpec, save_checkpoint
from mamlscope.config import METHODS
from mamlscope.errors import ConfigError
from mamlscope.evaluate import evaluate_maml
from mamlscope.finetune import plain_accuracy
from mamlscope.io import atomic_path
from mamlscope.maml import meta_step
from mamlscope.prepared import PreparedDataset
from mamlscope.runtime import resolve_device, seed_everything, set_threads
from mamlscope.tasks import TaskSampler, configured_episodes, images_to_tensor, normalize_batch

log = logging.getLogger("mamlscope")


def _progress(iterable=None, **kwargs):  # type: ignore[no-untyped-def]
    """tqdm that refreshes often on a terminal and every 30 s in a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, mininterval=0.1 if interactive else 30, **kwargs)


MAML_ORDER = {"maml": "second", "fomaml": "first", "maml-fd": "finite-difference"}


@dataclass
class TrainResult:
    model: torch.nn.Module
    spec: ModelSpec
    metrics: pd.DataFrame


class _Metrics:
    """Rows of (step, phase, loss, accuracy, elapsed_s), timed from construction."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def add(self, step: int, phase: str, loss: float, accuracy: float) -> None:
        elapsed = time.perf_counter() - self.start
        self.rows.append(
            dict(step=step, phase=phase, loss=loss, accuracy=accuracy, elapsed_s=elapsed)
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "phase", "loss", "accuracy", "elapsed_s"])


def _model_spec(
    ds_cfg: dict[str, Any], in_shape: tuple[int, int, int], classes: int, running_stats: bool
) -> ModelSpec:
    model_cfg = ds_cfg["model"]
    return ModelSpec(
        arch=model_cfg["arch"],
        in_shape=in_shape,
        num_classes=classes,
        hidden=list(model_cfg["hidden"]),
        filters=model_cfg["filters"],
        running_stats=running_stats,
    )


def train_baseline(
    data: PreparedDataset,
    pools: pd.DataFrame,
    ds_cfg: dict[str, Any],
    *,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> TrainResult:
    """Standard supervised training on the meta-train pool (Adam with L2, BatchNorm with
    running statistics), validated each epoch on held-out images of the same classes."""
    cfg = ds_cfg["baseline"]
    seed_everything(seed)
    index = data.index.set_index("example_id")
    train_ids = pools.loc[pools["pool"] == "train", "example_id"].to_numpy()
    classes = np.sort(index.loc[train_ids, "class_id"].unique())
    val_ids = pools.loc[pools["pool"] == "val", "example_id"].to_numpy()
    val_ids = val_ids[np.isin(index.loc[val_ids, "class_id"].to_numpy(), classes)]
    if val_ids.size == 0:
        # Disjoint classes (protocol `classes`): hold out 10% of the train images instead.
        rng = np.random.default_rng(seed)
        shuffled = rng.permutation(train_ids)
        cut = max(1, len(shuffled) // 10)
        val_ids, train_ids = np.sort(shuffled[:cut]), np.sort(shuffled[cut:])
    mean, std = data.normalize
    images = images_to_tensor(data.images, device)
    # Classes outside the train pool (protocol `classes`) get -1; they are never batched.
    lookup = np.full(int(index["class_id"].max()) + 1, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    labels = torch.as_tensor(lookup[index["class_id"].to_numpy()], device=device)

    spec = _model_spec(ds_cfg, tuple(data.images.shape[1:]), len(classes), running_stats=True)
    model = spec.build().to(device)
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg["lr"],
        betas=tuple(cfg["betas"]),
        weight_decay=cfg["weight_decay"],
    )
    generator = torch.Generator().manual_seed(seed)
    train_t = torch.from_numpy(np.array(train_ids, dtype=np.int64))
    metrics = _Metrics()
    steps_per_epoch = -(-len(train_ids) // cfg["batch_size"])
    bar = _progress(total=cfg["epochs"] * steps_per_epoch, desc="baseline", disable=not progress)
    step = 0
    for epoch in range(cfg["epochs"]):
        model.train()
        order = train_t[torch.randperm(len(train_t), generator=generator)].to(device)
        for batch in order.split(cfg["batch_size"]):
            x = normalize_batch(images[batch], mean, std)
            logits = model(x)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            acc = (logits.argmax(-1) == labels[batch]).float().mean().item()
            metrics.add(step, "train", loss.item(), acc)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1, refresh=False)
        val_loss, val_acc = plain_accuracy(model, images, labels, val_ids, mean, std, device)
        metrics.add(step, "val", val_loss, val_acc)
        log.info("epoch %d: val accuracy %.4f", epoch + 1, val_acc)
    bar.close()
    return TrainResult(model=model, spec=spec, metrics=metrics.frame())


def train_maml(
    data: PreparedDataset,
    pools: pd.DataFrame,
    val_episodes: pd.DataFrame,
    ds_cfg: dict[str, Any],
    method: str,
    *,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> TrainResult:
    """Finn et al. (2017) Algorithm 1: Adam on the mean query loss after inner SGD steps,
    tasks sampled on the fly from the meta-train pool, validated on fixed val episodes."""
    if method not in MAML_ORDER:
        raise ConfigError(f"method '{method}' is not a MAML flavour; use one of {list(MAML_ORDER)}")
    cfg, ep = ds_cfg["maml"], ds_cfg["episodes"]
    seed_everything(seed)
    mean, std = data.normalize
    images = images_to_tensor(data.images, device)
    train_ids = pools.loc[pools["pool"] == "train", "example_id"].to_numpy()
    sampler = TaskSampler(
        images,
        data.index,
        train_ids,
        way=ep["way"],
        shot=ep["shot"],
        query=ep["query"],
        mean=mean,
        std=std,
        seed=seed,
        device=device,
    )
    spec = _model_spec(ds_cfg, tuple(data.images.shape[1:]), ep["way"], running_stats=False)
    model = spec.build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["meta_lr"])
    params = dict(model.named_parameters())
    metrics = _Metrics()
    order = MAML_ORDER[method]
    # Only maml-fd reads fd_epsilon (its training section carries it, the others' do not).
    fd = {"fd_epsilon": cfg["fd_epsilon"]} if order == "finite-difference" else {}
    bar = _progress(range(1, cfg["meta_steps"] + 1), desc=method, disable=not progress)
    for step in bar:
        support_x, support_y, query_x, query_y = sampler.sample(cfg["meta_batch"])
        result = meta_step(
            model,
            support_x,
            support_y,
            query_x,
            query_y,
            inner_lr=cfg["inner_lr"],
            inner_steps=cfg["inner_steps"],
            order=order,
            strategy=cfg["strategy"],
            **fd,
        )
        for name, grad in result.grads.items():
            params[name].grad = grad
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss, acc = float(result.query_loss), float(result.query_accuracy)
        metrics.add(step, "train", loss, acc)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", refresh=False)
        if len(val_episodes) and (step % cfg["val_every"] == 0 or step == cfg["meta_steps"]):
            val = evaluate_maml(
                model,
                configured_episodes(images, val_episodes, ds_cfg, mean, std, device),
                inner_lr=cfg["inner_lr"],
                inner_steps=cfg["test_inner_steps"],
            )
            metrics.add(step, "val", float("nan"), float(val.mean()))
            log.info("step %d: val accuracy %.4f", step, val.mean())
    return TrainResult(model=model, spec=spec, metrics=metrics.frame())


def run_training(
    *,
    images: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    pools: str | os.PathLike[str],
    val_episodes: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any],
    method: str,
    seed: int,
    device: str,
    checkpoint: str | os.PathLike[str],
    metrics: str | os.PathLike[str],
    saved_config: Mapping[str, Any] | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train one method on one dataset and seed; write the checkpoint and metrics.

    ``images``, ``index``, ``meta``: the prepared dataset's files; ``pools`` and
    ``val_episodes`` (MAML only): the seed's split. ``config``: what training reads,
    `config.train_section` (a whole dataset config works too). The checkpoint records
    ``saved_config`` (default ``config``): the workflow passes the whole resolved dataset
    config, so that a standalone checkpoint knows its data and evaluation settings.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; use one of {list(METHODS)}")
    if method != "baseline" and val_episodes is None:
        raise ConfigError(f"method '{method}' validates on episodes: give val_episodes")
    set_threads(threads)
    torch_device = resolve_device(device)
    data = PreparedDataset.from_files(images, index, meta)
    pool_table = pd.read_parquet(pools)
    log.info("training %s on %s (seed %d, device %s)", method, images, seed, torch_device)
    cfg = dict(config)
    if method == "baseline":
        result = train_baseline(
            data, pool_table, cfg, seed=seed, device=torch_device, progress=progress
        )
    else:
        val = pd.read_parquet(val_episodes)
        result = train_maml(
            data, pool_table, val, cfg, method, seed=seed, device=torch_device, progress=progress
        )
    saved = dict(saved_config if saved_config is not None else config)
    save_checkpoint(checkpoint, result.model, result.spec, method=method, seed=seed, config=saved)
    with atomic_path(metrics) as tmp:
        result.metrics.assign(method=method, seed=seed).to_parquet(tmp, index=False)
    return result
