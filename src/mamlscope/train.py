"""Training, on one dataset and seed: standard training, and meta-training for every
meta-learning method (its meta-gradient order and what its inner loop adapts come from its
:class:`~mamlscope.methods.Method`).

Both loops return the trained model and a metrics table (step, phase, loss, accuracy,
elapsed seconds); `run_training` ties them to the prepared data, the split and a
checkpoint so that a Snakemake rule is one call.

Training is resumable (:mod:`mamlscope.resume`): both loops write a resume state when due
and on SIGTERM, and a rerun of the same run continues from it to the same weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mamlscope.checkpoint import ModelSpec, save_checkpoint
from mamlscope.data.lookup import class_labels, pool_classes, pool_ids
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.tasks import TaskSampler, configured_episodes, images_to_tensor, normalize_batch
from mamlscope.errors import ConfigError
from mamlscope.evaluate import evaluate_maml
from mamlscope.finetune import plain_accuracy
from mamlscope.io import atomic_path, read_parquet
from mamlscope.maml.graph import load_optimizer_state, plan_training_step
from mamlscope.methods import Method
from mamlscope.methods import method as lookup_method
from mamlscope.resume import Resume, resume_key, resume_state_path, set_rng_state, sigterm_saves
from mamlscope.runtime import resolve_device, seed_everything, set_threads
from mamlscope.snapshots import Snapshots
from mamlscope.train_log import Metrics as _Metrics
from mamlscope.train_log import StepLog as _StepLog
from mamlscope.train_log import progress as _progress
from mamlscope.train_step import meta_step_runner

log = logging.getLogger("mamlscope")


# MAML training keeps each step's loss and accuracy on the device and reads them to the host
# (one transfer) every LOG_EVERY meta-steps, before a validation or a resume state, and at
# the end: a CUDA-graph step then never waits for the GPU. Every step still gets its row.
LOG_EVERY = 100


@dataclass
class TrainResult:
    model: torch.nn.Module
    spec: ModelSpec
    metrics: pd.DataFrame
    resumed_from: int = 0  # the step a resume state let the run start after (0: none)
    meta_step: str = ""  # MAML: "cuda-graph", or "eager (why not a graph)"
    snapshots: Snapshots | None = None  # weights kept during training (`maml.snapshots`)


def train_baseline(
    data: PreparedDataset,
    pools: pd.DataFrame,
    ds_cfg: dict[str, Any],
    *,
    seed: int,
    device: torch.device,
    progress: bool = True,
    resume: Resume | None = None,
    name: str = "standard training",
) -> TrainResult:
    """Standard supervised training on the meta-train pool (Adam with L2, BatchNorm with
    running statistics), validated each epoch on held-out images of the same classes.

    ``resume``: where and how often to write a resume state, and one to continue from;
    the state is taken after a step (after the epoch's validation at an epoch's end).
    ``name``: the run's name in the progress bar and log (the workflow's method).
    """
    resume = resume or Resume()
    cfg = ds_cfg["baseline"]
    seed_everything(seed)
    index = data.index.set_index("example_id")
    train_ids = pool_ids(pools, "train")
    classes = pool_classes(data.index, pools, "train")
    val_ids = pool_ids(pools, "val")
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
    labels = torch.as_tensor(class_labels(data.index, classes), device=device)

    spec = ModelSpec.from_config(
        ds_cfg["model"], tuple(data.images.shape[1:]), len(classes), running_stats=True
    )
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
    total = cfg["epochs"] * steps_per_epoch
    step, first_epoch, done_in_epoch, order = 0, 0, 0, None
    state = resume.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        metrics.restore(state["metrics"], state["elapsed_s"])
        step, first_epoch = int(state["step"]), int(state["epoch"])
        done_in_epoch, order = int(state["batch_in_epoch"]), state["order"]
        set_rng_state(state["rng"])
        log.info("resuming %s after step %d of %d", name, step, total)
    resumed_from = step
    bar = _progress(total=total, initial=step, desc=name, disable=not progress)
    for epoch in range(first_epoch, cfg["epochs"]):
        model.train()
        if order is None:
            order = train_t[torch.randperm(len(train_t), generator=generator)]
        batches = order.to(device).split(cfg["batch_size"])
        for b in range(done_in_epoch, len(batches)):
            batch = batches[b]
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
            if b == len(batches) - 1:
                val_loss, val_acc = plain_accuracy(
                    model, images, labels, val_ids, mean, std, device
                )
                metrics.add(step, "val", val_loss, val_acc)
                log.info("epoch %d: val accuracy %.4f", epoch + 1, val_acc)
            if resume.due(step, total):
                resume.save(
                    step,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "generator": generator.get_state(),
                        "metrics": metrics.rows,
                        "elapsed_s": metrics.elapsed(),
                        "epoch": epoch,
                        "batch_in_epoch": b + 1,
                        "order": order,
                    },
                )
        order, done_in_epoch = None, 0
    bar.close()
    return TrainResult(model=model, spec=spec, metrics=metrics.frame(), resumed_from=resumed_from)


def _meta_method(name: str) -> Method:
    """The meta-learning method ``name``; a ConfigError for another kind or an unknown one."""
    declared = lookup_method(name)
    if not declared.is_meta:
        raise ConfigError(
            f"method '{name}' uses {declared.training} training, not meta-training; "
            "train it with run_training, which picks its loop"
        )
    return declared


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
    resume: Resume | None = None,
) -> TrainResult:
    """Finn et al. (2017) Algorithm 1: Adam on the mean query loss after inner SGD steps,
    tasks sampled on the fly from the meta-train pool, validated on fixed val episodes.

    ``method``: a meta-learning method (:mod:`mamlscope.methods`); its ``order`` is the
    meta-gradient's, and its inner loop (in training and validation) adapts the parameters
    its ``adapts`` names (every one, or only the head or the body; the outer loop updates
    them all).

    ``resume``: where and how often to write a resume state (after a meta-step and its
    validation), and one to continue from.

    The meta-step (`mamlscope.maml.graph.plan_training_step`): with ``maml.strategy``
    ``graph``, and ``auto`` on CUDA, the batched step and a capturable Adam run as one CUDA
    graph (`GraphedMetaStep`; eagerly over the same buffers where no graph can be captured,
    with the reason logged); otherwise `meta_step` with that strategy. ``maml.
    max_tasks_in_flight`` bounds the tasks computed at once (chunks; None: all). Each
    step's loss and accuracy are read from the device every `LOG_EVERY` steps, before a
    validation or resume state and at the end, not after every step.
    """
    resume = resume or Resume()
    declared = _meta_method(method)
    cfg, ep = ds_cfg["maml"], ds_cfg["episodes"]
    seed_everything(seed)
    mean, std = data.normalize
    images = images_to_tensor(data.images, device)
    train_ids = pool_ids(pools, "train")
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
    spec = ModelSpec.from_config(
        ds_cfg["model"], tuple(data.images.shape[1:]), ep["way"], running_stats=False
    )
    model = spec.build().to(device)
    adapted = declared.adapted(model)  # None: every parameter (the inner loop's default)
    # `graph` (and `auto` on CUDA): the meta-step and a capturable Adam as one CUDA graph.
    plan = plan_training_step(cfg["strategy"], model, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["meta_lr"], capturable=plan.capture)
    metrics = _Metrics()
    order = declared.order
    # Only a finite-difference order reads fd_epsilon (only its training section has it).
    fd = {"fd_epsilon": cfg["fd_epsilon"]} if order == "finite-difference" else {}
    # None (the default, and configs written before the key): all tasks at once.
    max_tasks = cfg.get("max_tasks_in_flight")
    total, resumed_from = cfg["meta_steps"], 0
    snapshots = Snapshots(total, cfg.get("snapshots", 0))
    state = resume.load()
    if state is not None:
        model.load_state_dict(state["model"])
        model.train(bool(state["training"]))
        load_optimizer_state(optimizer, state["optimizer"], capturable=plan.capture)
        sampler.generator.set_state(state["generator"])
        metrics.restore(state["metrics"], state["elapsed_s"])
        resumed_from = int(state["step"])
        snapshots.restore(state.get("snapshots"))
        set_rng_state(state["rng"])
        log.info("resuming %s after meta-step %d of %d", method, resumed_from, total)
    bar = _progress(
        range(resumed_from + 1, total + 1),
        initial=resumed_from,
        total=total,
        desc=method,
        disable=not progress,
    )
    kw = {"inner_lr": cfg["inner_lr"], "inner_steps": cfg["inner_steps"], "order": order, **fd}
    run_step, mode = meta_step_runner(
        model,
        optimizer,
        plan,
        strategy=cfg["strategy"],
        max_tasks_in_flight=max_tasks,
        adapted=adapted,
        **kw,
    )
    log.info("%s: meta-step %s", method, mode())  # a failed capture later logs a warning
    pending = _StepLog(metrics)
    for step in bar:
        loss, acc = run_step(*sampler.sample(cfg["meta_batch"]))
        pending.add(step, loss, acc)
        snapshots.take(step, model)
        validate = bool(len(val_episodes)) and (step % cfg["val_every"] == 0 or step == total)
        if validate or step % LOG_EVERY == 0 or step == total:
            last = pending.flush()
            if last is not None:
                bar.set_postfix(loss=f"{last[0]:.3f}", acc=f"{last[1]:.3f}", refresh=False)
        if validate:
            val = evaluate_maml(
                model,
                configured_episodes(images, val_episodes, ds_cfg, mean, std, device),
                inner_lr=cfg["inner_lr"],
                inner_steps=cfg["test_inner_steps"],
                adapted=adapted,
            )
            metrics.add(step, "val", float("nan"), float(val.mean()))
            log.info("step %d: val accuracy %.4f", step, val.mean())
        if resume.due(step, total):
            pending.flush()  # the state carries every row so far
            resume.save(
                step,
                {
                    "model": model.state_dict(),
                    "training": model.training,
                    "optimizer": optimizer.state_dict(),
                    "generator": sampler.generator.get_state(),
                    "metrics": metrics.rows,
                    "elapsed_s": metrics.elapsed(),
                    "snapshots": snapshots.state(),
                },
            )
    pending.flush()
    bar.close()
    return TrainResult(
        model=model,
        spec=spec,
        metrics=metrics.frame(),
        resumed_from=resumed_from,
        meta_step=mode(),
        snapshots=snapshots,
    )


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
    snapshots: str | os.PathLike[str] | None = None,
    saved_config: Mapping[str, Any] | None = None,
    threads: int | None = None,
    progress: bool = True,
    resume: bool = True,
    resume_every_steps: int = 1000,
    resume_every_seconds: float = 300,
) -> TrainResult:
    """Train one method on one dataset and seed; write the checkpoint and metrics.

    ``images``, ``index``, ``meta``: the prepared dataset's files; ``pools`` and
    ``val_episodes`` (MAML only): the run's validation episodes. ``config``: what training reads,
    `config.train_section` (a whole dataset config works too). The checkpoint records
    ``saved_config`` (default ``config``): the workflow passes the whole resolved dataset
    config, so that a standalone checkpoint knows its data and evaluation settings.

    ``resume``: continue from the resume state in `resume_state_path(checkpoint)` when
    one fits this run (same ``config``, method, seed, inputs and code), and write one every
    ``resume_every_steps`` steps or ``resume_every_seconds`` seconds (either; 0 turns one
    off) and on SIGTERM; the state is deleted once the checkpoint is written.

    ``snapshots``: where to write the weights kept during meta-training (`maml.snapshots`
    evenly spaced steps, `mamlscope.snapshots`); standard training keeps its final weights.
    """
    declared = lookup_method(method)
    if declared.is_meta and val_episodes is None:
        raise ConfigError(f"method '{method}' validates on episodes: give val_episodes")
    set_threads(threads)
    torch_device = resolve_device(device)
    data = PreparedDataset.from_files(images, index, meta)
    pool_table = read_parquet(pools)
    log.info("training %s on %s (seed %d, device %s)", method, images, seed, torch_device)
    cfg = dict(config)
    validation = [val_episodes] if declared.is_meta and val_episodes is not None else []
    inputs = [images, index, meta, pools, *validation]
    state = Resume()
    if resume:
        state = Resume(
            resume_state_path(checkpoint),
            resume_key(cfg, method, seed, inputs),
            resume_every_steps,
            resume_every_seconds,
        )
    with sigterm_saves(state):
        kw: dict[str, Any] = dict(seed=seed, device=torch_device, progress=progress, resume=state)
        if declared.is_meta:
            assert val_episodes is not None  # refused above
            val = read_parquet(val_episodes)
            result = train_maml(data, pool_table, val, cfg, method, **kw)
        else:
            result = train_baseline(data, pool_table, cfg, name=method, **kw)
    saved = dict(saved_config if saved_config is not None else config)
    save_checkpoint(checkpoint, result.model, result.spec, method=method, seed=seed, config=saved)
    with atomic_path(metrics) as tmp:
        result.metrics.assign(method=method, seed=seed).to_parquet(tmp, index=False)
    if snapshots is not None:
        (result.snapshots or Snapshots.final(result.model)).save(snapshots)
    state.clear()
    return result
