"""The figure jobs: every figure study of one trained model (`plot_features`), and
the same figure for every method side by side (`compare_methods`).

The studies are the registered :class:`~mamlscope.features.studies.FigureStudy` entries
(:mod:`mamlscope.features.studies`: first-layer filters, t-SNE and PCA of the penultimate
layer, most and least activating probe images, saliency, activation maximisation, training
curves, and any plug-in's). :func:`plot_model_features` loads what they read once, as a
:class:`~mamlscope.features.studies.StudyContext`, and has each draw its PNG.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.features import figures
from mamlscope.features.activations import read_activations
from mamlscope.features.studies import FigureStudy, StudyContext, studies, study
from mamlscope.io import read_parquet
from mamlscope.methods import label as method_label
from mamlscope.methods import ordered
from mamlscope.model_job import ModelJob, open_model_job
from mamlscope.models import normalised_layers
from mamlscope.train_log import progress

log = logging.getLogger("mamlscope")


def chosen_neurons(model: Any, neurons: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """The configured neurons, or by default unit 0 of the last two recorded layers that
    are (``bn3``, ``bn4``) or hold (a residual block) a BatchNorm."""
    if neurons is not None:
        return [dict(n) for n in neurons]
    return [{"layer": name, "unit": 0} for name in normalised_layers(model)[-2:]]


def selected_studies(keys: Iterable[str]) -> list[FigureStudy]:
    """The registered studies named by ``keys``, in display order; an unknown key is a
    ConfigError listing the registered ones."""
    wanted = {study(key).key for key in keys}
    return [s for s in studies() if s.key in wanted]


def study_context(
    job: ModelJob,
    *,
    probe: str | os.PathLike[str],
    activations: str | os.PathLike[str],
    metrics: str | os.PathLike[str],
    features: Mapping[str, Any],
    title: str,
) -> StudyContext:
    """What every study of ``job``'s model reads: the probe images (raw and normalised),
    the activations, the training metrics and ``features`` with its neurons chosen."""
    probe_df = read_parquet(probe)
    ids = probe_df["example_id"].to_numpy(np.int64)
    return StudyContext(
        job=job,
        probe=probe_df,
        pixels=job.data.images[ids],  # uint8 [P, C, H, W]
        images=job.images(ids),  # [P, C, H, W], normalised
        activations=read_activations(activations),
        metrics=read_parquet(metrics),
        features={**features, "neurons": chosen_neurons(job.model, features["neurons"])},
        title=title,
    )


def plot_model_features(
    *,
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    probe: str | os.PathLike[str],
    activations: str | os.PathLike[str],
    metrics: str | os.PathLike[str],
    features: Mapping[str, Any],
    title: str,
    out: Mapping[str, str | os.PathLike[str]],
    device: str = "cpu",
    threads: int | None = None,
) -> None:
    """Draw the studies named by ``out``'s keys for one model, each to ``out[key]``.

    The rule names every registered study (:func:`~mamlscope.features.studies.study_keys`);
    a key that names no study is a ConfigError before anything is loaded.
    """
    chosen = selected_studies(out)
    job = open_model_job(
        checkpoint=checkpoint, images=images, index=index, meta=meta, device=device, threads=threads
    )
    context = study_context(
        job, probe=probe, activations=activations, metrics=metrics, features=features, title=title
    )
    # A line in the job's log every 30 s (t-SNE and maximisation take the longest).
    for figure_study in progress(chosen, desc=f"figures {title}", unit="figure"):
        figure_study.draw(context, Path(out[figure_study.key]))
    log.info("%s: %d figures", title, len(chosen))


def figures_by_method(paths: Sequence[str | os.PathLike[str]]) -> dict[str, dict[str, str]]:
    """``{method: {figure name: path}}`` from paths laid out as
    ``results/{dataset}/{method}/seed{seed}/figures/{name}.png``."""
    grouped: dict[str, dict[str, str]] = {}
    for path in paths:
        path = Path(path)
        grouped.setdefault(path.parents[2].name, {})[path.stem] = os.fspath(path)
    return grouped


def compare_methods(
    pngs: Mapping[str, Mapping[str, str | os.PathLike[str]]],
    out: Mapping[str, str | os.PathLike[str]],
    title: str,
) -> None:
    """For each study named by ``out``'s keys (in display order), the methods' PNGs
    (``pngs[method][key]``) side by side in the methods' display order
    (:func:`mamlscope.methods.ordered`), written to ``out[key]``."""
    methods = ordered(pngs)
    for figure_study in progress(selected_studies(out), desc=f"compare {title}", unit="figure"):
        key = figure_study.key
        figures.side_by_side(
            [pngs[m][key] for m in methods],
            [method_label(m) for m in methods],
            out[key],
            title=f"{title} · {key}",
        )
