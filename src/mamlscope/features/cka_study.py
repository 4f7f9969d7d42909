"""The `cka` job: rapid learning or feature reuse? (Raghu et al. 2020)

Two tables of linear CKA (:func:`mamlscope.similarity.linear_cka`), one file:

* stage ``meta``: every layer of the reference model (the method declared
  ``cka_reference``, standard training) against every layer of each other model, on the
  probe set (the same images for every model);
* stage ``adaptation``: each layer of each model before against after adaptation, on the
  images of the fixed test episodes both were recorded on (pooled over episodes). Raghu et
  al. report MAML's body barely changes in adaptation (CKA above 0.9) while the head
  changes most: feature reuse rather than rapid learning.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mamlscope.features import figures
from mamlscope.features.activations import layer_matrix, read_activations
from mamlscope.io import atomic_path
from mamlscope.methods import label as method_label
from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.similarity import cka_matrix, linear_cka

COLUMNS = ("dataset", "seed", "model_a", "model_b", "layer_a", "layer_b", "stage", "cka")


def _probe_layers(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    probe = frame[frame["episode"] == -1]
    return {layer: layer_matrix(frame, layer).values for layer in dict.fromkeys(probe["layer"])}


def _pooled(frame: pd.DataFrame, layer: str, stage: str) -> np.ndarray:
    """One layer's rows of every recorded episode at ``stage``, episode by episode."""
    episodes = sorted(e for e in frame["episode"].unique() if e >= 0)
    return np.concatenate(
        [layer_matrix(frame, layer, stage=stage, episode=e).values for e in episodes]
    )


def adaptation_cka(frame: pd.DataFrame) -> pd.DataFrame:
    """``layer, cka`` of each layer before against after adaptation (same images)."""
    adapted = frame[frame["stage"] == "adapted"]
    rows = [
        {
            "layer": layer,
            "cka": linear_cka(_pooled(frame, layer, "meta"), _pooled(frame, layer, "adapted")),
        }
        for layer in dict.fromkeys(adapted["layer"])
    ]
    return pd.DataFrame(rows, columns=["layer", "cka"])


def reference_model(methods: Iterable[str]) -> str | None:
    """The first of ``methods`` (in display order) that CKA compares the others against."""
    return next((m for m in ordered(methods) if lookup_method(m).cka_reference), None)


def cka_table(
    activations: Mapping[str, str | os.PathLike[str]], *, dataset: str, seed: int
) -> pd.DataFrame:
    """Both stages (module docstring) for the models given as ``{method: activations file}``."""
    frames = {method: read_activations(path) for method, path in activations.items()}
    parts = []
    reference = reference_model(frames)
    if reference is not None:
        base = _probe_layers(frames[reference])
        for method in ordered(frames):
            if method == reference:
                continue
            part = cka_matrix(base, _probe_layers(frames[method]))
            parts.append(part.assign(model_a=reference, model_b=method, stage="meta"))
    for method, frame in frames.items():
        part = adaptation_cka(frame).rename(columns={"layer": "layer_a"})
        part["layer_b"] = part["layer_a"]
        parts.append(part.assign(model_a=method, model_b=method, stage="adaptation"))
    table = pd.concat(parts, ignore_index=True).assign(dataset=dataset, seed=seed)
    return table[list(COLUMNS)]


def plot_adaptation(table: pd.DataFrame, title: str) -> Figure:
    """CKA before against after adaptation, per layer, one line per model."""
    part = table[table["stage"] == "adaptation"]
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    layers = list(dict.fromkeys(part["layer_a"]))
    for method in ordered(part["model_a"]):
        rows = part[part["model_a"] == method].set_index("layer_a").reindex(layers)
        ax.plot(range(len(layers)), rows["cka"], marker="o", label=method_label(method))
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1, label="0.9 (Raghu et al.)")
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("linear CKA, before vs after adaptation")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def run_cka(
    activations: Mapping[str, str | os.PathLike[str]],
    *,
    dataset: str,
    seed: int,
    table_out: str | os.PathLike[str],
    methods_png: str | os.PathLike[str],
    adaptation_png: str | os.PathLike[str],
) -> pd.DataFrame:
    """Write the CKA table, the reference-against-each-model heatmaps and the adaptation
    plot."""
    table = cka_table(activations, dataset=dataset, seed=seed)
    with atomic_path(table_out) as tmp:
        table.to_parquet(tmp, index=False)
    title = f"{dataset} · seed {seed}"
    meta = table[table["stage"] == "meta"]
    others = list(dict.fromkeys(meta["model_b"]))
    if others:
        reference = str(meta["model_a"].iloc[0])
        panels = []
        for method in others:
            part = meta[meta["model_b"] == method]
            panel = f"{os.fspath(methods_png)}.{method}.png"
            figures.save(figures.plot_cka(part, f"{title} · CKA", reference, method), panel)
            panels.append(panel)
        figures.side_by_side(panels, [f"{reference} vs {m}" for m in others], methods_png)
        for panel in panels:
            os.remove(panel)
    else:
        figures.save(_note(f"{title}: no reference model and other model to compare"), methods_png)
    figures.save(
        plot_adaptation(table, f"{title} · CKA before vs after adaptation"), adaptation_png
    )
    return table


def _note(text: str) -> Figure:
    fig = Figure(figsize=(6, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return fig
