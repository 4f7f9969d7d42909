"""Evaluation on fixed episodes, as each method says (:mod:`mamlscope.methods`): its inner
loop adapts on each support set, or a fresh head is fine-tuned on frozen features.

Accuracy is reported as the mean over episodes with a 95% interval,
1.96 * std / sqrt(episodes) (std with ddof=1, the sample standard deviation).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mamlscope import __version__
from mamlscope.checkpoint import Checkpoint
from mamlscope.config import evaluate_section
from mamlscope.data.lookup import class_labels, pool_classes, pool_ids
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.tasks import iterate_episodes
from mamlscope.errors import ConfigError
from mamlscope.finetune import Batch, evaluate_finetune, plain_accuracy
from mamlscope.io import atomic_path, read_parquet, to_json
from mamlscope.maml import adapt_and_predict
from mamlscope.methods import method as lookup_method
from mamlscope.methods.base import LEGACY_DEFAULTS
from mamlscope.model_job import open_model_job
from mamlscope.runtime import cpu_model
from mamlscope.train_log import progress

log = logging.getLogger("mamlscope")


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


def counted(batches: Iterable[Batch], bar: tqdm) -> Iterator[Batch]:
    """``batches`` as they come, adding each batch's episodes to ``bar`` once the consumer
    is done with it (asks for the next), so the bar counts finished episodes."""
    for batch in batches:
        yield batch
        bar.update(int(batch[1].shape[0]))  # support labels [E, N*K]: E episodes


def evaluate_maml(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str = "transductive",
    adapted: frozenset[str] | None = None,
) -> np.ndarray:
    """Per-episode query accuracy after adapting on each support set.

    ``adapted``: the parameter names the inner loop adapts (the method's
    :meth:`~mamlscope.methods.Method.adapted`); None, every parameter.

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
            adapted=adapted,
        )  # [E, N*Q, way]
        hits = (logits.argmax(-1) == query_y).float().mean(-1)  # [E]
        accuracies.append(hits.cpu().numpy())
    return np.concatenate(accuracies)


def evaluate_checkpoint_on(
    checkpoint: Checkpoint,
    batches: Iterable[Batch],
    settings: EvalSettings,
    *,
    episode_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-episode accuracy of a checkpoint as its method evaluates (a fresh head
    fine-tuned on frozen features, or its own inner loop), with the given settings.

    The settings come from the config at evaluation time (the workflow) or from the
    checkpoint's saved config (`mamlscope evaluate`); see `EvalSettings`. ``episode_ids``
    (ascending, as the batches come) seed the baseline's fresh heads, so an episode scores
    the same whichever other episodes are evaluated with it.
    """
    if settings.method != checkpoint.method:
        raise ConfigError(
            f"evaluation settings are for '{settings.method}', but the checkpoint is a "
            f"'{checkpoint.method}' run; build them with EvalSettings.from_config(cfg, method)"
        )
    method = lookup_method(checkpoint.method)
    if method.evaluation == "finetune":
        steps, lr = settings.finetune()
        return evaluate_finetune(
            checkpoint.model,
            batches,
            way=settings.way,
            steps=steps,
            lr=lr,
            finetune_all=settings.finetune_all,
            seed=checkpoint.seed,
            episode_ids=episode_ids,
        )
    inner_lr, inner_steps = settings.inner_loop()
    return evaluate_maml(
        checkpoint.model,
        batches,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        batchnorm=settings.batchnorm,
        adapted=method.adapted(checkpoint.model),
    )


def _unset(settings: EvalSettings, keys: str) -> ConfigError:
    """The error for settings that lack what their method's evaluation needs."""
    return ConfigError(
        f"evaluation settings for '{settings.method}' leave {keys} unset; "
        f"build them with EvalSettings.from_config(cfg, '{settings.method}')"
    )


# --- the evaluation job --------------------------------------------------------------------


def _with_legacy_defaults(cfg: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
    """``cfg`` with each of ``keys`` that it lacks and `LEGACY_DEFAULTS` knows filled in."""
    for key in keys:
        section, _, name = key.partition(".")
        if key in LEGACY_DEFAULTS and isinstance(cfg.get(section), Mapping):
            if name not in cfg[section]:
                cfg = {**cfg, section: {**cfg[section], name: LEGACY_DEFAULTS[key]}}
    return cfg


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
    # "finetune": a fresh N-way head fine-tuned on each support set (baseline.finetune_*)
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    finetune_all: bool = False
    # "inner-loop": the method's inner loop on each support set
    inner_lr: float | None = None  # maml.inner_lr
    inner_steps: int | None = None  # maml.test_inner_steps
    batchnorm: str = "transductive"  # maml.eval_batchnorm

    def inner_loop(self) -> tuple[float, int]:
        """``(inner_lr, inner_steps)`` of an inner-loop evaluation; a ConfigError if unset."""
        if self.inner_lr is None or self.inner_steps is None:
            raise _unset(self, "inner_lr and inner_steps")
        return self.inner_lr, self.inner_steps

    def finetune(self) -> tuple[int, float]:
        """``(finetune_steps, finetune_lr)`` of a fine-tuning evaluation; a ConfigError if
        unset."""
        if self.finetune_steps is None or self.finetune_lr is None:
            raise _unset(self, "finetune_steps and finetune_lr")
        return self.finetune_steps, self.finetune_lr

    @property
    def batchnorm_used(self) -> str:
        """How BatchNorm normalised the queries: the mode the method fixes (standard
        training's ``"running"`` statistics), else the configured batch-statistics mode."""
        return lookup_method(self.method).batchnorm or self.batchnorm

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], method: str) -> EvalSettings:
        """From a dataset's resolved config or its evaluation section (same nesting).

        A key of `methods.base.LEGACY_DEFAULTS` that the config lacks (a checkpoint saved
        before the key existed) takes the value it implied then.
        """
        declared = lookup_method(method)
        cfg = _with_legacy_defaults(cfg, declared.evaluate_keys)
        section = evaluate_section(cfg, method)
        ep, maml = section["episodes"], section["maml"]
        common: dict[str, Any] = dict(
            method=method,
            way=ep["way"],
            shot=ep["shot"],
            query=ep["query"],
            batch=maml["eval_batch"],
        )
        if declared.evaluation == "finetune":
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

    def batches(
        self, images: torch.Tensor, episodes: pd.DataFrame, data: PreparedDataset
    ) -> Iterator[Batch]:
        """The fixed ``episodes`` as batches of :attr:`batch` episodes, normalised as
        ``data`` says, on the device of ``images`` (uint8 ``[N, C, H, W]``)."""
        mean, std = data.normalize
        return iterate_episodes(
            images,
            episodes,
            way=self.way,
            shot=self.shot,
            query=self.query,
            mean=mean,
            std=std,
            batch_size=self.batch,
            device=images.device,
        )


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
    start = time.perf_counter()
    job = open_model_job(
        checkpoint=checkpoint, images=images, index=index, meta=meta, device=device, threads=threads
    )
    ckpt, data, torch_device = job.checkpoint, job.data, job.device
    episodes = read_parquet(test_episodes)
    batches = job.episodes(episodes, settings)
    episode_ids = np.unique(episodes["episode"].to_numpy(np.int64)).tolist()  # sorted, as batched
    # The job's log gets a progress line every 30 s (at once on a terminal).
    label = f"evaluate {dataset} {ckpt.method} seed {ckpt.seed}"
    with progress(total=len(episode_ids), desc=label, unit="episode") as bar:
        per_episode = evaluate_checkpoint_on(
            ckpt, counted(batches, bar), settings, episode_ids=episode_ids
        )
    accuracy = summarize(per_episode)
    plain = _plain_test_accuracy(ckpt, data, read_parquet(pools), job.pixels, torch_device)
    row: dict[str, Any] = {
        "dataset": dataset,
        "method": ckpt.method,
        "seed": ckpt.seed,
        "way": settings.way,
        "shot": settings.shot,
        "query": settings.query,
        "batchnorm": settings.batchnorm_used,
        **accuracy.as_dict(),
        "test_accuracy": plain,
        "device": str(torch_device),
        "eval_seconds": time.perf_counter() - start,
        "version": __version__,
        # Where the number was made: the same CPU model and torch reproduce it to the digit.
        "cpu": cpu_model(),
        "torch": torch.__version__,
    }
    log.info("%s %s seed %d: %s", dataset, ckpt.method, ckpt.seed, accuracy)
    summary = {
        **row,
        "per_episode": per_episode.tolist(),
        "config": ckpt.config,
        "evaluation": asdict(settings),
    }
    with atomic_path(summary_json) as tmp:
        tmp.write_text(to_json(summary, indent=2))
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
    NaN otherwise, and for methods that report none (a meta-learned head is per episode).
    """
    if not lookup_method(ckpt.method).plain_accuracy:
        return float("nan")
    train_classes = pool_classes(data.index, pools, "train")
    test_ids = pool_ids(pools, "test")
    by_id = data.index.set_index("example_id")
    test_ids = test_ids[np.isin(by_id.loc[test_ids, "class_id"].to_numpy(), train_classes)]
    if test_ids.size == 0 or len(train_classes) != ckpt.spec.num_classes:
        return float("nan")
    labels = torch.as_tensor(class_labels(data.index, train_classes), device=device)
    mean, std = data.normalize
    return plain_accuracy(ckpt.model, images, labels, test_ids, mean, std, device)[1]
