"""The feature studies as the report finds them: figures and CKA tables.

The studies are written by the feature rules (rules/features.smk) at these paths; the
report shows whatever of them a run produced and says "not produced by this run" for the
rest, so it works with or without them. Which figure studies there are, and their titles
and captions, is the study registry's word (:mod:`mamlscope.features.studies`)::

    {results}/{dataset}/{method}/seed{seed}/figures/{study}.png    one model
    {results}/{dataset}/{method}/seed{seed}/figures/{study}.note.json  why that figure
        shows no result (e.g. t-SNE of collapsed features), when it does not
    {results}/{dataset}/compare/seed{seed}/{study}.png             the methods side by side
    {results}/{dataset}/compare/seed{seed}/cka.parquet             dataset, seed, model_a,
        model_b, layer_a, layer_b, stage ('meta': the reference model against each other
        on the probe set; 'adaptation': one model's layer before against after adaptation,
        per test episode, then the mean over episodes), cka, low, high, episodes,
        episode_ids, episode_cka (mamlscope.features.cka_study)
    {results}/{dataset}/compare/seed{seed}/cka_methods.png, cka_adaptation.png
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mamlscope.features.cka_study import COLUMNS as CKA_COLUMNS
from mamlscope.features.studies import FigureStudy, study
from mamlscope.features.studies import studies as registered_studies
from mamlscope.io import read_note, read_parquet

# The figure study the report shows in its training section, beside its own curves.
CURVES = "curves"


@dataclass(frozen=True)
class Study:
    """A figure the CKA rule draws: its file name (without ``.png``), a title, a caption."""

    key: str
    title: str
    caption: str


def figure_studies() -> tuple[FigureStudy, ...]:
    """The registered figure studies the feature-studies section shows, in display order,
    with their titles and captions (:mod:`mamlscope.features.studies`): every one but
    :data:`CURVES`, which the training section shows."""
    return tuple(s for s in registered_studies() if s.key != CURVES)


def curves_study() -> FigureStudy:
    """The training-curves figure study (its caption goes under the side-by-side curves)."""
    return study(CURVES)


CKA_FIGURES: tuple[Study, ...] = (
    Study(
        "cka_methods",
        "CKA between methods",
        "Linear CKA of every layer of the reference model (standard training) against every "
        "layer of each other model, on the probe set (the same images for every model).",
    ),
    Study(
        "cka_adaptation",
        "CKA before against after adaptation",
        "Linear CKA of each layer with itself before against after adaptation, per test "
        "episode: on the support and query images of one episode, adapted on its own "
        "support labels; the mean over the recorded episodes with a 95% bootstrap interval "
        "over episodes (error bars). 1: the layer represents the episode's images as before, "
        "up to rotation and scale.",
    ),
)


def compare_figure(results: str | os.PathLike[str], dataset: str, seed: int, key: str) -> Path:
    return Path(results) / dataset / "compare" / f"seed{seed}" / f"{key}.png"


def model_figure(
    results: str | os.PathLike[str], dataset: str, method: str, seed: int, key: str
) -> Path:
    return Path(results) / dataset / method / f"seed{seed}" / "figures" / f"{key}.png"


def cka_file(results: str | os.PathLike[str], dataset: str, seed: int) -> Path:
    return Path(results) / dataset / "compare" / f"seed{seed}" / "cka.parquet"


def study_files(
    results: str | os.PathLike[str],
    key: str,
    datasets: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
) -> dict[tuple[str, int], list[tuple[str, Path]]]:
    """The figures of one study to show, by (dataset, seed): ``[(label, path), ...]``.

    The side-by-side figure when it exists (it holds every method), else each method's own
    figure that exists; an empty list means the run did not produce the study.
    """
    out: dict[tuple[str, int], list[tuple[str, Path]]] = {}
    for dataset in datasets:
        for seed in seeds:
            side = compare_figure(results, dataset, seed, key)
            if side.is_file():
                out[(dataset, seed)] = [(" | ".join(methods), side)]
                continue
            own = [(m, model_figure(results, dataset, m, seed, key)) for m in methods]
            out[(dataset, seed)] = [(m, p) for m, p in own if p.is_file()]
    return out


def study_notes(
    results: str | os.PathLike[str],
    key: str,
    datasets: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
) -> dict[tuple[str, int], list[tuple[str, str]]]:
    """Why a method's figure of one study shows no result, by (dataset, seed):
    ``[(method, message), ...]`` from the notes the figure job wrote beside the figures
    (:func:`mamlscope.io.write_note`); only the (dataset, seed) pairs that have one."""
    out: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for dataset in datasets:
        for seed in seeds:
            for method in methods:
                note = read_note(model_figure(results, dataset, method, seed, key))
                if note is not None:
                    out.setdefault((dataset, seed), []).append((method, note))
    return out


def cka_table(
    results: str | os.PathLike[str], datasets: Sequence[str], seeds: Sequence[int]
) -> pd.DataFrame:
    """Every ``cka.parquet`` of the run in one table (empty, with the columns, when none)."""
    columns = list(CKA_COLUMNS)
    parts = [
        read_parquet(p) for d in datasets for s in seeds if (p := cka_file(results, d, s)).is_file()
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True).reindex(columns=columns)


def adaptation_rows(cka: pd.DataFrame) -> pd.DataFrame:
    """The rows of a model's layer against itself before and after adaptation (stage
    ``adaptation``: the mean over test episodes and its interval)."""
    same = (cka["model_a"] == cka["model_b"]) & (cka["layer_a"] == cka["layer_b"])
    return cka[same & (cka["stage"] == "adaptation")]


def _interval(mean: float, low: float, high: float) -> str:
    if not np.isfinite(mean):
        return "undefined"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def adaptation_table(cka: pd.DataFrame, methods: Sequence[str] = ()) -> pd.DataFrame:
    """CKA before against after adaptation for display: one row per (dataset, seed, layer)
    in network order, one column per method (``methods`` first, in that order) holding
    "mean [low, high]" over that seed's test episodes, and ``episodes`` (the most any
    method of the row has). Seeds stay apart: each interval is over one model's episodes.
    Empty when the table holds no adaptation rows."""
    part = adaptation_rows(cka)
    if part.empty:
        return pd.DataFrame(columns=["dataset", "seed", "layer", "episodes"])
    rank = {m: i for i, m in enumerate(methods)}
    names = sorted(dict.fromkeys(part["model_a"]), key=lambda m: rank.get(m, len(rank)))
    rows = []
    for (dataset, seed), g in part.groupby(["dataset", "seed"], sort=False):
        for layer in dict.fromkeys(g["layer_a"]):
            at = g[g["layer_a"] == layer].set_index("model_a")
            row: dict[str, object] = dict(dataset=dataset, seed=int(seed), layer=layer)
            for m in names:
                cell = at.loc[m, ["cka", "low", "high"]].astype(float) if m in at.index else None
                row[m] = "" if cell is None else _interval(*cell)
            row["episodes"] = int(at["episodes"].max())
            rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "seed", "layer", *names, "episodes"])
