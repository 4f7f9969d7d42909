"""The figure jobs: the seed's visualisations of one trained model (`plot_features`), and the
same figure for every method side by side (`compare_methods`).

Per model (:data:`FIGURES`): first-layer filters; t-SNE and PCA of the penultimate layer
on the probe set; the probe images that most and least activate each configured neuron;
class saliency maps of the first probe image of each class (gradient of the predicted
class's score, Simonyan et al. 2014); activation maximisation of the same neurons; the
training curves. MAML models run with batch statistics (the probe batch, or for saliency
the saliency images themselves); the baseline with its running statistics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from mamlscope.checkpoint import load_checkpoint
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.tasks import images_to_tensor, normalize_batch
from mamlscope.features import figures
from mamlscope.features.activations import layer_activations, layer_matrix, read_activations
from mamlscope.features.embedding import embed
from mamlscope.features.maximise import maximise
from mamlscope.features.saliency import saliency_maps
from mamlscope.io import atomic_path
from mamlscope.methods import label as method_label
from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.models import layer_names, normalised_layers
from mamlscope.runtime import resolve_device, set_threads

log = logging.getLogger("mamlscope")

FIGURES = ("filters", "tsne", "pca", "extremes", "saliency", "maximise", "curves")
# MAML's activation maximisation normalises its copies among this many probe images.
_CONTEXT_IMAGES = 64


def stack_vertically(pngs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> None:
    """One PNG of ``pngs`` stacked top to bottom, left-aligned on white (no resampling)."""
    images = [Image.open(p).convert("RGB") for p in pngs]
    canvas = Image.new(
        "RGB", (max(i.width for i in images), sum(i.height for i in images)), "white"
    )
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="png")


def chosen_neurons(model: Any, neurons: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """The configured neurons, or by default unit 0 of the last two recorded layers that
    are (``bn3``, ``bn4``) or hold (a residual block) a BatchNorm."""
    if neurons is not None:
        return [dict(n) for n in neurons]
    return [{"layer": name, "unit": 0} for name in normalised_layers(model)[-2:]]


def _penultimate(layers: Sequence[str]) -> str:
    """The recorded layer before ``head``: its output is ``head``'s input (the registry's
    contract), the penultimate features."""
    return layers[list(layers).index("head") - 1]


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
    """Write every figure of :data:`FIGURES` for one model to ``out[name]``."""
    set_threads(threads)
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, torch_device)
    # Meta-learned models run with batch statistics (the BatchNorm policy); others with
    # their running statistics.
    model, maml = ckpt.model, lookup_method(ckpt.method).is_meta
    data = PreparedDataset.from_files(images, index, meta)
    mean, std = data.normalize
    probe_df = pd.read_parquet(probe)
    ids = probe_df["example_id"].to_numpy(np.int64)
    pixels = data.images[ids]  # uint8 [P, C, H, W]
    x = normalize_batch(images_to_tensor(pixels, torch_device), mean, std)  # [P, C, H, W]
    frame = read_activations(activations)
    seed = ckpt.seed
    features = {**features, "neurons": chosen_neurons(model, features["neurons"])}

    figures.save(
        figures.plot_first_layer_filters(model, ckpt.spec.in_shape, f"{title} · first layer"),
        out["filters"],
    )
    layer = _penultimate(layer_names(model))
    matrix = layer_matrix(frame, layer)  # probe rows, sorted by example id like `ids`
    for method, name in (("tsne", "t-SNE"), ("pca", "PCA")):
        points = embed(matrix.values, method, seed=seed)
        fig = figures.plot_embedding(points, matrix.labels, f"{title} · {layer}", method=name)
        figures.save(fig, out[method])
    _plot_extremes(frame, pixels, features, title, out["extremes"])
    _plot_saliency(model, x, pixels, probe_df, features, maml, title, out["saliency"])
    _plot_maximise(model, x, data, features, maml, seed, title, out["maximise"])
    figures.save(
        figures.plot_training_curves(pd.read_parquet(metrics), f"{title} · training"),
        out["curves"],
    )
    log.info("%s: %d figures", title, len(FIGURES))


def _plot_extremes(
    frame: pd.DataFrame,
    pixels: np.ndarray,
    features: Mapping[str, Any],
    title: str,
    out: str | os.PathLike[str],
) -> None:
    parts = []
    for i, neuron in enumerate(features["neurons"]):
        layer, unit = neuron["layer"], neuron["unit"]
        values = layer_matrix(frame, layer).values[:, unit]  # [P], probe order
        fig = figures.plot_extreme_examples(
            pixels, values, features["extremes"], f"{layer}[{unit}]", title
        )
        part = f"{os.fspath(out)}.part{i}.png"
        figures.save(fig, part)
        parts.append(part)
    stack_vertically(parts, out)
    for part in parts:
        os.remove(part)


def _saliency_rows(probe_df: pd.DataFrame, count: int) -> np.ndarray:
    """Positions in the probe of the first image of each class, up to ``count``."""
    firsts = probe_df.reset_index(drop=True).groupby("class_id", sort=True).head(1)
    return firsts.index.to_numpy()[:count]


def _plot_saliency(model, x, pixels, probe_df, features, maml, title, out) -> None:  # type: ignore[no-untyped-def]
    rows = _saliency_rows(probe_df, features["saliency_images"])
    chosen = x[torch.as_tensor(rows, device=x.device)]  # [S, C, H, W]
    with torch.no_grad():
        acts = layer_activations(model, chosen, ["head"], batch_statistics=maml)
    predicted = acts["head"].argmax(-1)  # [S]
    maps = saliency_maps(model, chosen, predicted, batch_statistics=maml)  # [S, H, W]
    fig = figures.plot_saliency(pixels[rows], maps, predicted.cpu().numpy(), f"{title} · saliency")
    figures.save(fig, out)


def _plot_maximise(model, x, data, features, maml, seed, title, out) -> None:  # type: ignore[no-untyped-def]
    mean, std = data.normalize
    results, names = [], []
    for neuron in features["neurons"]:
        vis = maximise(
            model,
            neuron["layer"],
            neuron["unit"],
            in_shape=tuple(x.shape[1:]),
            mean=mean,
            std=std,
            batch_statistics=maml,
            context=x[:_CONTEXT_IMAGES] if maml else None,
            steps=features["maximise_steps"],
            seed=seed,
        )
        results.append(vis.image.cpu())
        names.append(
            f"{vis.layer}[{vis.unit}]\n{vis.start_activation:.2f} -> {vis.final_activation:.2f}"
        )
    fig = figures.plot_images(torch.stack(results), names, f"{title}\nactivation maximisation")
    figures.save(fig, out)


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
    """For each figure name in ``out``, the methods' PNGs (``pngs[method][name]``) side by
    side in the methods' display order (:func:`mamlscope.methods.ordered`)."""
    methods = ordered(pngs)
    for name, path in out.items():
        figures.side_by_side(
            [pngs[m][name] for m in methods],
            [method_label(m) for m in methods],
            path,
            title=f"{title} · {name}",
        )
