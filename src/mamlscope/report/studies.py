"""The feature studies as the report finds them: figures, CKA and head-only tables.

The studies are written by the feature rules (rules/features.smk) at these paths; the
report shows whatever of them a run produced and says "not produced by this run" for the
rest, so it works with or without them. Which figure studies there are, and their titles
and captions, is the study registry's word (:mod:`mamlscope.features.studies`)::

    {results}/{dataset}/{method}/seed{seed}/figures/{study}.png    one model
    {results}/{dataset}/compare/seed{seed}/{study}.png             the methods side by side
    {results}/{dataset}/compare/seed{seed}/cka.parquet             dataset, seed, model_a,
        model_b, layer_a, layer_b, stage ('meta': the reference model against each other
        on the probe set; 'adaptation': one model's layer before against after adaptation), cka
    {results}/{dataset}/compare/seed{seed}/cka_methods.png, cka_adaptation.png
    {results}/head_only.parquet      dataset, method, seed, adaptation ('full', 'body' or
        'head'), mean, ci95, episodes
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mamlscope.features.studies import FigureStudy, study
from mamlscope.features.studies import studies as registered_studies

# Raghu et al. 2020 ("Rapid learning or feature reuse?"): MAML's body representations
# barely change in adaptation, CKA before against after above this, while the head changes.
FEATURE_REUSE_CKA = 0.9
HEAD = "head"
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
        "Linear CKA of each layer with itself before and after adaptation on the test "
        "episodes' support sets: near 1, the layer barely changed (feature reuse).",
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


def head_only_file(results: str | os.PathLike[str]) -> Path:
    return Path(results) / "head_only.parquet"


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


def cka_table(
    results: str | os.PathLike[str], datasets: Sequence[str], seeds: Sequence[int]
) -> pd.DataFrame:
    """Every ``cka.parquet`` of the run in one table (empty, with the columns, when none)."""
    columns = ["dataset", "seed", "model_a", "model_b", "layer_a", "layer_b", "stage", "cka"]
    parts = [
        pd.read_parquet(p)
        for d in datasets
        for s in seeds
        if (p := cka_file(results, d, s)).is_file()
    ]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)


def adaptation_rows(cka: pd.DataFrame) -> pd.DataFrame:
    """CKA of a model's layer with itself, before against after adaptation."""
    same = (cka["model_a"] == cka["model_b"]) & (cka["layer_a"] == cka["layer_b"])
    return cka[same & (cka["stage"] != "meta")]


def feature_reuse(cka: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method): body and head CKA before against after adaptation.

    Columns: dataset, method, seeds, body_mean, body_min, body_min_layer, head, layers
    (``{layer: mean CKA over seeds}`` in network order), reuse (every body layer at least
    :data:`FEATURE_REUSE_CKA` and the head lower than every body layer). The head is the
    layer named ``head`` (else the last); layers whose CKA is undefined (NaN: constant
    activations) are left out of the body figures.
    """
    rows = []
    part = adaptation_rows(cka)
    for (dataset, method), g in part.groupby(["dataset", "model_a"], sort=False):
        order = list(dict.fromkeys(g["layer_a"]))
        means = g.groupby("layer_a", sort=False)["cka"].mean()
        layers = {layer: float(means[layer]) for layer in order}
        head = HEAD if HEAD in layers else order[-1]
        body = {k: v for k, v in layers.items() if k != head and np.isfinite(v)}
        if not body:
            continue
        low = min(body, key=body.__getitem__)
        head_cka = layers[head]
        rows.append(
            dict(
                dataset=dataset,
                method=method,
                seeds=int(g["seed"].nunique()),
                body_mean=float(np.mean(list(body.values()))),
                body_min=body[low],
                body_min_layer=low,
                head=head_cka,
                layers=layers,
                reuse=bool(body[low] >= FEATURE_REUSE_CKA and head_cka < body[low]),
            )
        )
    return pd.DataFrame(
        rows,
        columns=[
            "dataset",
            "method",
            "seeds",
            "body_mean",
            "body_min",
            "body_min_layer",
            "head",
            "layers",
            "reuse",
        ],
    )


def head_only_table(
    results: str | os.PathLike[str], methods: Sequence[str] = ()
) -> pd.DataFrame | None:
    """``head_only.parquet`` with seeds combined per (dataset, method, adaptation), or None.

    The table holds each seed's mean and interval, not its episodes, so seeds are combined
    as the mean of their means, with the interval of that mean for independent seeds,
    sqrt(sum of ci95^2) / seeds (close to pooling the episodes when the seeds' means agree).
    """
    path = head_only_file(results)
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    grouped = table.groupby(["dataset", "method", "adaptation"], sort=False)
    out = grouped.agg(
        seeds=("seed", "nunique"),
        mean=("mean", "mean"),
        ci95=("ci95", lambda c: float(np.sqrt(np.mean(np.square(c)) / len(c)))),
        episodes=("episodes", "sum"),
    )
    out = out.reset_index()
    rank = {m: i for i, m in enumerate(methods)}
    out["_order"] = [
        (rank.get(m, len(rank)), a != "full")
        for m, a in zip(out["method"], out["adaptation"], strict=True)
    ]
    return (
        out.sort_values(["dataset", "_order"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
