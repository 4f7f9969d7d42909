"""Evaluation on fixed episodes: MAML adapts, the baseline fine-tunes a fresh head.

Accuracy is reported as the mean over episodes with a 95% interval,
1.96 * std / sqrt(episodes) (std with ddof=1, the sample standard deviation).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mamlscope import __version__
from mamlscope.checkpoint import Checkpoint, load_checkpoint
from mamlscope.config import evaluate_section
from mamlscope.errors import ConfigError
from mamlscope.io import atomic_path
from mamlscope.maml import adapt_and_predict
from mamlscope.prepared import PreparedDataset
from mamlscope.runtime import resolve_device, set_threads
from mamlscope.tasks import images_to_tensor, iterate_episodes, normalize_batch

log = logging.getLogger("mamlscope")

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Accuracy:
    """Mean accuracy over episodes with its 95% confidence interval half-width."""

    mean: float
    ci95: float
    std: float
    episodes: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f}% +- {100 * self.ci95:.2f}% ({self.episodes} episodes)"


def summarize(per_episode: Iterable[float]) -> Accuracy:
    """Mean and 1.96 * std / sqrt(n) of per-episode accuracies."""
    values = np.asarray(list(per_episode), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no episodes to summarise")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return Accuracy(
        mean=float(values.mean()),
        ci95=1.96 * std / math.sqrt(values.size),
        std=std,
        episodes=int(values.size),
    )


def evaluate_maml(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str = "transductive",
) -> np.ndarray:
    """Per-episode query accuracy after adapting on each support set.

    ``batchnorm`` (:data:`mamlscope.maml.BATCHNORM_MODES`): ``"transductive"`` normalises
    the queries with their own batch statistics (Finn et al.); it needs at least as many
    queries per episode as classes, or the prediction stops depending on the image.
    ``"support"`` normalises each query with the support set's statistics.
    """
    accuracies = []
    for support_x, support_y, query_x, query_y in batches:
        if batchnorm == "transductive" and query_y.shape[-1] < int(support_y.max()) + 1:
            raise ConfigError(
                f"batchnorm 'transductive' normalises the queries with their own batch "
                f"statistics, but episodes have {query_y.shape[-1]} queries for "
                f"{int(support_y.max()) + 1} classes, too few to normalise with (with one "
                "query the prediction ignores the image); use batchnorm 'support'"
            )
        logits = adapt_and_predict(
            model,
            support_x,
            support_y,
            query_x,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            batchnorm=batchnorm,
        )  # [E, N*Q, way]
        hits = (logits.argmax(-1) == query_y).float().mean(-1)  # [E]
        accuracies.append(hits.cpu().numpy())
    return np.concatenate(accuracies)


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate activations: every child of the model but its `head`."""
    for name, layer in model.named_children():
        if name == "head":
            break
        x = layer(x)
    return x.flatten(1)


def evaluate_finetune(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    way: int,
    steps: int,
    lr: float,
    finetune_all: bool = False,
    seed: int = 0,
    episode_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-episode accuracy of "pretrain, then fine-tune a fresh N-way head".

    The pretrained body runs in eval mode (its running statistics). Heads of all episodes
    in a batch are trained together as one batched linear map, so there is no loop over
    episodes; with ``finetune_all`` every layer is fine-tuned per episode instead, one
    episode at a time from a copy of the pretrained weights.

    Each episode's fresh head is drawn from (``seed``, episode number), the number being
    ``episode_ids[i]`` for the i-th episode fed, or ``i`` without them. Episodes' losses
    are independent and Adam is elementwise, so an episode's accuracy depends neither on
    the batch size nor on the other episodes.
    """
    model.eval()
    accuracies = []
    fed = 0
    for support_x, support_y, query_x, query_y in batches:
        episodes, n_support = support_y.shape
        numbers = _episode_numbers(fed, episodes, episode_ids)
        fed += episodes
        if finetune_all:
            accuracies.append(
                _finetune_all(
                    model,
                    (support_x, support_y, query_x, query_y),
                    numbers,
                    way=way,
                    steps=steps,
                    lr=lr,
                    seed=seed,
                )
            )
            continue
        with torch.no_grad():
            fs = features_of(model, support_x.flatten(0, 1)).unflatten(0, (episodes, n_support))
            fq = features_of(model, query_x.flatten(0, 1)).unflatten(0, (episodes, -1))
        weight = torch.stack([_fresh_head(seed, n, way, fs.shape[-1]) for n in numbers]).to(fs)
        weight.requires_grad_(True)
        bias = torch.zeros(episodes, 1, way, device=fs.device, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            logits = torch.baddbmm(bias, fs, weight.transpose(1, 2))  # [E, N*K, way]
            # Sum over episodes of each episode's mean loss: each head sees its own gradient.
            loss = F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum")
            optimizer.zero_grad()
            (loss / n_support).backward()
            optimizer.step()
        with torch.no_grad():
            logits = torch.baddbmm(bias, fq, weight.transpose(1, 2))  # [E, N*Q, way]
            accuracies.append((logits.argmax(-1) == query_y).float().mean(-1).cpu().numpy())
    return np.concatenate(accuracies)


def _episode_numbers(fed: int, episodes: int, episode_ids: Sequence[int] | None) -> list[int]:
    """Numbers of the next ``episodes`` episodes after ``fed`` of them."""
    if episode_ids is None:
        return list(range(fed, fed + episodes))
    if fed + episodes > len(episode_ids):
        raise ValueError(f"more episodes fed than the {len(episode_ids)} episode_ids given")
    return [int(n) for n in episode_ids[fed : fed + episodes]]


def _fresh_head(seed: int, episode: int, way: int, features: int) -> torch.Tensor:
    """The initial head weight [way, features] of one episode, from (seed, episode) alone.

    A generator per episode (SeedSequence spawn keys keep the streams independent), so
    the draw does not depend on which other episodes share the batch. Bias starts at 0.
    """
    state = np.random.SeedSequence(seed, spawn_key=(episode,)).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randn(way, features, generator=generator) * 0.01


def _finetune_all(
    model: nn.Module,
    batch: Batch,
    numbers: Sequence[int],
    *,
    way: int,
    steps: int,
    lr: float,
    seed: int,
) -> np.ndarray:
    """Per episode, fine-tune every layer of a copy, from the batched path's fresh head."""
    support_x, support_y, query_x, query_y = batch
    out = []
    for e, number in enumerate(numbers):
        local = copy.deepcopy(model)
        head = nn.utils.skip_init(nn.Linear, local.head.in_features, way)  # no global RNG
        with torch.no_grad():
            head.weight.copy_(_fresh_head(seed, number, way, head.in_features))
            head.bias.zero_()
        local.head = head.to(support_x.device)
        local.eval()  # keep the pretrained normalisation statistics fixed
        optimizer = torch.optim.Adam(local.parameters(), lr=lr)
        for _ in range(steps):
            loss = F.cross_entropy(local(support_x[e]), support_y[e])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out.append((local(query_x[e]).argmax(-1) == query_y[e]).float().mean().item())
    return np.asarray(out)


def evaluate_checkpoint_on(
    checkpoint: Checkpoint, batches: Iterable[Batch], settings: EvalSettings
) -> np.ndarray:
    """Per-episode accuracy of a checkpoint by its own method, with the given settings.

    The settings come from the config at evaluation time (the workflow) or from the
    checkpoint's saved config (`mamlscope evaluate`); see `EvalSettings`.
    """
    if settings.method != checkpoint.method:
        raise ConfigError(
            f"evaluation settings are for '{settings.method}', but the checkpoint is a "
            f"'{checkpoint.method}' run; build them with EvalSettings.from_config(cfg, method)"
        )
    if checkpoint.method == "baseline":
        return evaluate_finetune(
            checkpoint.model,
            batches,
            way=settings.way,
            steps=settings.finetune_steps,
            lr=settings.finetune_lr,
            finetune_all=settings.finetune_all,
            seed=checkpoint.seed,
        )
    return evaluate_maml(
        checkpoint.model,
        batches,
        inner_lr=settings.inner_lr,
        inner_steps=settings.inner_steps,
        batchnorm=settings.batchnorm,
    )


# --- the evaluation job --------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    """How a run is evaluated on episodes: `config.evaluate_section`, flattened.

    The workflow builds it from the config at evaluation time (the evaluate rule's params),
    so editing an evaluation key re-evaluates without retraining; `mamlscope evaluate`
    builds it from a standalone checkpoint's saved config.
    """

    method: str
    way: int
    shot: int
    query: int
    batch: int  # episodes per batch (maml.eval_batch)
    # baseline: a fresh N-way head fine-tuned on each support set (baseline.finetune_*)
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    finetune_all: bool = False
    # MAML flavours: adaptation on each support set
    inner_lr: float | None = None  # maml.inner_lr
    inner_steps: int | None = None  # maml.test_inner_steps
    batchnorm: str = "transductive"  # maml.eval_batchnorm

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], method: str) -> EvalSettings:
        """From a dataset's resolved config or its evaluation section (same nesting)."""
        if "eval_batchnorm" not in cfg["maml"]:  # a checkpoint saved before the key existed
            cfg = {**cfg, "maml": {**cfg["maml"], "eval_batchnorm": "transductive"}}
        section = evaluate_section(cfg, method)
        ep, maml = section["episodes"], section["maml"]
        common: dict[str, Any] = dict(
            method=method,
            way=ep["way"],
            shot=ep["shot"],
            query=ep["query"],
            batch=maml["eval_batch"],
        )
        if method == "baseline":
            base = section["baseline"]
            return cls(
                **common,
                finetune_steps=base["finetune_steps"],
                finetune_lr=base["finetune_lr"],
                finetune_all=base["finetune_all"],
            )
        return cls(
            **common,
            inner_lr=maml["inner_lr"],
            inner_steps=maml["test_inner_steps"],
            batchnorm=maml["eval_batchnorm"],
        )


@torch.no_grad()
def plain_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    ids: np.ndarray,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Loss and accuracy of a classifier in eval mode on the given example ids."""
    model.eval()
    total_loss, hits = 0.0, 0
    for batch in torch.as_tensor(ids).to(device).split(batch_size):
        logits = model(normalize_batch(images[batch], mean, std))
        total_loss += F.cross_entropy(logits, labels[batch], reduction="sum").item()
        hits += (logits.argmax(-1) == labels[batch]).sum().item()
    return total_loss / len(ids), hits / len(ids)


def run_evaluation(
    *,
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    pools: str | os.PathLike[str],
    test_episodes: str | os.PathLike[str],
    settings: EvalSettings,
    dataset: str,
    device: str,
    summary_json: str | os.PathLike[str],
    summary_parquet: str | os.PathLike[str],
    threads: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on the fixed test episodes; write the JSON and one-row table.

    The JSON holds the row, the per-episode accuracies, the checkpoint's training config
    (`config`) and the settings this evaluation used (`evaluation`).
    """
    set_threads(threads)
    torch_device = resolve_device(device)
    start = time.perf_counter()
    ckpt = load_checkpoint(checkpoint, torch_device)
    data = PreparedDataset.from_files(images, index, meta)
    episodes = pd.read_parquet(test_episodes)
    mean, std = data.normalize
    tensor = images_to_tensor(data.images, torch_device)
    batches = iterate_episodes(
        tensor,
        episodes,
        way=settings.way,
        shot=settings.shot,
        query=settings.query,
        mean=mean,
        std=std,
        batch_size=settings.batch,
        device=torch_device,
    )
    per_episode = evaluate_checkpoint_on(ckpt, batches, settings)
    accuracy = summarize(per_episode)
    plain = _plain_test_accuracy(ckpt, data, pd.read_parquet(pools), tensor, torch_device)
    row: dict[str, Any] = {
        "dataset": dataset,
        "method": ckpt.method,
        "seed": ckpt.seed,
        "way": settings.way,
        "shot": settings.shot,
        "query": settings.query,
        **accuracy.as_dict(),
        "test_accuracy": plain,
        "device": str(torch_device),
        "eval_seconds": time.perf_counter() - start,
        "version": __version__,
    }
    log.info("%s %s seed %d: %s", dataset, ckpt.method, ckpt.seed, accuracy)
    summary = {
        **row,
        "per_episode": per_episode.tolist(),
        "config": ckpt.config,
        "evaluation": asdict(settings),
    }
    with atomic_path(summary_json) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(summary_parquet) as tmp:
        pd.DataFrame([row]).to_parquet(tmp, index=False)
    return row


def _plain_test_accuracy(
    ckpt: Checkpoint,
    data: PreparedDataset,
    pools: pd.DataFrame,
    images: torch.Tensor,
    device: torch.device,
) -> float:
    """The baseline's ordinary accuracy on held-out test images of its own classes.

    Defined only where the test pool shares the training classes (protocol `examples`);
    NaN otherwise, and for MAML checkpoints, whose heads are per-episode.
    """
    if ckpt.method != "baseline":
        return float("nan")
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
