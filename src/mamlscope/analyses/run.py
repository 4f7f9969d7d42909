"""The `analyze` job: every accuracy-based analysis of one trained model, per test episode.

Which analyses a run gets is its method's declaration (:class:`mamlscope.methods.Method`),
never its name: an inner-loop method gets layer freezing and the inner-steps sweep, a
fine-tuned one its fresh head under each BatchNorm mode, every one nearest centroid.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from mamlscope.analyses.centroid import centroid_accuracy
from mamlscope.analyses.features import feature_modes
from mamlscope.analyses.finetune import fresh_head_accuracy
from mamlscope.analyses.freeze import adaptation_accuracy, freeze_settings
from mamlscope.analyses.recorder import Recorder
from mamlscope.analyses.steps import step_counts
from mamlscope.analyses.table import classes_of, run_rows, typed
from mamlscope.analyses.training_cka import cka_episodes, run_cka_rows, training_cka, write_table
from mamlscope.errors import ConfigError
from mamlscope.evaluate import EvalSettings, counted
from mamlscope.finetune import Batch
from mamlscope.io import atomic_path
from mamlscope.maml import BATCHNORM_MODES
from mamlscope.methods import Method
from mamlscope.model_job import open_model_job
from mamlscope.snapshots import load_snapshots
from mamlscope.train_log import progress

log = logging.getLogger("mamlscope")
Episodes = Callable[[], Iterable[Batch]]  # a fresh pass over the same batches per call


@dataclass(frozen=True)
class AnalysisSettings:
    """The config's ``analyses`` section: BatchNorm modes, inner-step counts, and how many
    test episodes (the first ones; None: all), for the final model and for each training
    snapshot (``snapshot_episodes``: the snapshots' analyses are the job's extra cost)."""

    batchnorm: tuple[str, ...] = BATCHNORM_MODES
    steps: tuple[int, ...] = (0, 1, 2, 5, 10)
    episodes: int | None = None
    snapshot_episodes: int | None = 100

    def __post_init__(self) -> None:
        unknown = [m for m in self.batchnorm if m not in BATCHNORM_MODES]
        if unknown or not self.batchnorm:
            raise ConfigError(
                f"analyses.batchnorm must list some of {list(BATCHNORM_MODES)}, got "
                f"{list(self.batchnorm)}"
            )
        step_counts(self.steps, 0, 0)  # integers >= 0, or a ValueError naming them
        for key in ("episodes", "snapshot_episodes"):
            value = getattr(self, key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"analyses.{key} must be null or an integer >= 1, got {value!r}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> AnalysisSettings:
        return cls(
            batchnorm=tuple(section.get("batchnorm", BATCHNORM_MODES)),
            steps=tuple(section.get("steps", cls.steps)),
            episodes=section.get("episodes"),
            snapshot_episodes=section.get("snapshot_episodes", cls.snapshot_episodes),
        )


def analyze_model(
    model: nn.Module,
    method: Method,
    episodes: Episodes,
    settings: EvalSettings,
    analyses: AnalysisSettings,
    *,
    episode_ids: Sequence[int],
    seed: int,
    train_inner_steps: int | None = None,
    label: str = "analyses",
    snapshot: bool = False,
) -> pd.DataFrame:
    """Every analysis of ``model`` on the episodes ``episodes()`` feeds (numbered
    ``episode_ids``, in order), as rows ``analysis, setting, batchnorm, episode, accuracy``.

    A model, not a checkpoint path, so that training snapshots are analysed the same way.
    ``train_inner_steps``: the inner steps it was meta-trained with (the steps sweep
    includes them); needed for an inner-loop method's final model only. ``seed`` seeds a
    fine-tuned method's fresh heads, as its evaluation does (the run's seed).

    ``snapshot``: a training snapshot, analysed for what a verdict needs and no more:
    layer freezing, the method's own adaptation at the test steps (the ``steps`` row a
    verdict takes as full adaptation; the same computation as one freeze setting, so it
    costs nothing) and nearest centroid; no steps sweep, no fresh head; logged by the
    caller in one line.
    """
    if settings.method != method.name:
        raise ConfigError(
            f"evaluation settings are for '{settings.method}', but the method analysed is "
            f"'{method.name}'; build them with EvalSettings.from_config(cfg, method)"
        )
    record = Recorder(episode_ids, label, quiet=snapshot)
    modes = list(analyses.batchnorm)
    if method.evaluation == "inner-loop":
        if train_inner_steps is None and not snapshot:
            raise ConfigError(f"{method.name}: the steps analysis needs its training inner steps")
        _inner_loop_analyses(
            model, method, episodes, settings, analyses, train_inner_steps, record, snapshot
        )
    for mode in feature_modes(model, modes):
        record.timed(
            "centroid",
            "penultimate",
            mode,
            centroid_accuracy,
            model,
            episodes(),
            batchnorm=mode,
            way=settings.way,
        )
    if method.evaluation == "finetune" and not snapshot:
        steps, lr = settings.finetune()
        for mode in feature_modes(model, modes):
            record.timed(
                "finetune",
                "fresh head",
                mode,
                fresh_head_accuracy,
                model,
                episodes(),
                batchnorm=mode,
                way=settings.way,
                steps=steps,
                lr=lr,
                seed=seed,
                episode_ids=episode_ids,
            )
    return record.frame()


def _inner_loop_analyses(
    model: nn.Module,
    method: Method,
    episodes: Episodes,
    settings: EvalSettings,
    analyses: AnalysisSettings,
    train_inner_steps: int | None,
    record: Recorder,
    snapshot: bool,
) -> None:
    """Layer freezing and the steps sweep (a snapshot: only the test step count); a
    computation that both ask for (the same adapted set, steps and mode) runs once."""
    inner_lr, test_steps = settings.inner_loop()
    every = frozenset(n for n, _ in model.named_parameters())
    own = method.adapted(model)
    done: dict[tuple[frozenset[str], int, str], np.ndarray] = {}

    def accuracy(adapted: frozenset[str] | None, steps: int, mode: str) -> np.ndarray:
        key = (every if adapted is None else adapted, steps, mode)
        if key not in done:
            done[key] = adaptation_accuracy(
                model,
                episodes(),
                inner_lr=inner_lr,
                inner_steps=steps,
                batchnorm=mode,
                adapted=adapted,
            )
        return done[key]

    if snapshot:
        counts = [test_steps]
    else:
        assert train_inner_steps is not None  # analyze_model checked
        counts = step_counts(analyses.steps, train_inner_steps, test_steps)
    for mode in analyses.batchnorm:
        for setting, adapted in freeze_settings(model):
            record.timed("freeze", setting, mode, accuracy, adapted, test_steps, mode)
        for n in counts:
            record.timed("steps", str(n), mode, accuracy, own, n, mode)


def first_episodes(table: pd.DataFrame, count: int | None) -> pd.DataFrame:
    """The rows of the first ``count`` episodes (by number) of an episode table; all of
    them for None."""
    if count is None:
        return table
    keep = np.unique(table["episode"].to_numpy(np.int64))[:count]
    return table[table["episode"].isin(keep)]


def analyze_snapshots(
    snapshots: Sequence[tuple[float, nn.Module]],
    method: Method,
    episodes: Episodes,
    settings: EvalSettings,
    analyses: AnalysisSettings,
    *,
    episode_ids: Sequence[int],
    seed: int,
    label: str = "analyses",
) -> list[tuple[float, pd.DataFrame]]:
    """``(fraction, rows)`` of each training snapshot before the final weights (those are
    analysed in full by :func:`analyze_model`), analysed as a snapshot (``snapshot=True``);
    nothing for a method without an inner loop. One log line per snapshot, with its time."""
    if method.evaluation != "inner-loop":
        return []
    out = []
    for fraction, model in snapshots:
        if fraction >= 1.0:
            continue
        start = time.perf_counter()
        rows = analyze_model(
            model,
            method,
            episodes,
            settings,
            analyses,
            episode_ids=episode_ids,
            seed=seed,
            label=label,
            snapshot=True,
        )
        log.info(
            "%s: snapshot at %.0f%% of training: %d rows on %d episodes, %.1f s",
            label,
            100 * fraction,
            len(rows),
            len(episode_ids),
            time.perf_counter() - start,
        )
        out.append((float(fraction), rows))
    return out


def run_analyses(
    *,
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    test_episodes: str | os.PathLike[str],
    settings: EvalSettings,
    analyses: Mapping[str, Any],
    protocol: str,
    dataset: str,
    device: str,
    out: str | os.PathLike[str],
    snapshots: str | os.PathLike[str] | None = None,
    cka_out: str | os.PathLike[str] | None = None,
    adapt_episodes: int | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Analyse one trained run on its dataset's test episodes and write its table to
    ``out`` (:mod:`mamlscope.analyses.table`'s columns).

    ``snapshots`` (the run's ``snapshots.pt``): each snapshot before the final weights is
    analysed too (:func:`analyze_snapshots`, on the first ``analyses.snapshot_episodes``
    of the analysed episodes), as rows whose ``snapshot`` is its fraction of training.
    ``cka_out``: where to write the per-episode CKA before against after adaptation at
    each snapshot and the final weights, on the first ``adapt_episodes`` test episodes
    (:mod:`mamlscope.analyses.training_cka`).
    """
    start = time.perf_counter()
    chosen = AnalysisSettings.from_config(analyses)
    job = open_model_job(
        checkpoint=checkpoint, images=images, index=index, meta=meta, device=device, threads=threads
    )
    ckpt, method = job.checkpoint, job.method
    test_table = pd.read_parquet(test_episodes)
    table = first_episodes(test_table, chosen.episodes)
    episode_ids = np.unique(table["episode"].to_numpy(np.int64)).tolist()  # as batched
    train_steps = None
    if method.evaluation == "inner-loop":
        ckpt.require("maml.inner_steps")
        train_steps = int(ckpt.config["maml"]["inner_steps"])
    label = f"{dataset} {ckpt.method} seed {ckpt.seed}"
    # Episodes adapted so far over every analysis (their number is not known up front):
    # a line in the job's log every 30 s.
    bar = progress(desc=f"analyze {label}", unit="episode")
    results = analyze_model(
        job.model,
        method,
        lambda: counted(job.episodes(table, settings), bar),
        settings,
        chosen,
        episode_ids=episode_ids,
        seed=ckpt.seed,
        train_inner_steps=train_steps,
        label=label,
    )
    queries = settings.way * settings.query

    def rows_of(found: pd.DataFrame, fraction: float = 1.0) -> pd.DataFrame:
        return run_rows(
            found,
            dataset=dataset,
            method=ckpt.method,
            seed=ckpt.seed,
            classes=classes_of(protocol),
            queries=queries,
            snapshot=fraction,
        )

    frames = [rows_of(results)]
    extra = time.perf_counter()  # what training snapshots add to the job
    inner_loop = method.evaluation == "inner-loop"
    kept = load_snapshots(snapshots, ckpt) if snapshots is not None and inner_loop else []
    earlier = [(f, model) for f, model in kept if f < 1.0]
    if earlier:
        part = first_episodes(table, chosen.snapshot_episodes)
        found = analyze_snapshots(
            earlier,
            method,
            lambda: counted(job.episodes(part, settings), bar),
            settings,
            chosen,
            episode_ids=np.unique(part["episode"].to_numpy(np.int64)).tolist(),
            seed=ckpt.seed,
            label=label,
        )
        frames += [rows_of(f_rows, f) for f, f_rows in found]
    bar.close()
    frame = typed(pd.concat(frames, ignore_index=True))
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    if cka_out is not None:
        if adapt_episodes is None:
            raise ConfigError("CKA over training needs features.adapt_episodes")
        cka = training_cka(
            [*earlier, (1.0, job.model)],
            method,
            settings,
            cka_episodes(test_table, adapt_episodes),
            job.images,
            label=label,
        )
        write_table(run_cka_rows(cka, dataset=dataset, method=ckpt.method, seed=ckpt.seed), cka_out)
    if inner_loop:
        log.info(
            "%s: %d snapshot(s) before the final weights and CKA over training: %.1f s",
            label,
            len(earlier),
            time.perf_counter() - extra,
        )
    log.info("%s: %d rows, %.1f s in all", label, len(frame), time.perf_counter() - start)
    return frame
