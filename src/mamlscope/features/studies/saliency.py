"""Saliency (Simonyan et al. 2014): which pixels the predicted class's score depends on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mamlscope.features.activations import layer_activations
from mamlscope.features.saliency import saliency_maps
from mamlscope.features.studies.base import FigureStudy, StudyContext


def saliency_rows(probe: pd.DataFrame, count: int) -> np.ndarray:
    """Positions in the probe of the first image of each class, up to ``count``."""
    firsts = probe.reset_index(drop=True).groupby("class_id", sort=True).head(1)
    return firsts.index.to_numpy(copy=True)[:count]  # writable: torch takes it as is


def draw(context: StudyContext, out: Path) -> None:
    """The first probe image of each class above its map. Meta-learned models normalise
    with the batch statistics of these images, the baseline with its running ones."""
    from mamlscope.features import figures  # matplotlib, only when drawing (package doc)

    model, x, maml = context.model, context.images, context.meta_learned
    rows = saliency_rows(context.probe, context.features["saliency_images"])
    chosen = x[torch.as_tensor(rows, device=x.device)]  # [S, C, H, W]
    with torch.no_grad():
        acts = layer_activations(model, chosen, ["head"], batch_statistics=maml)
    predicted = acts["head"].argmax(-1)  # [S]
    maps = saliency_maps(model, chosen, predicted, batch_statistics=maml)  # [S, H, W]
    fig = figures.plot_saliency(
        context.pixels[rows], maps, predicted.cpu().numpy(), f"{context.title} · saliency"
    )
    figures.save(fig, out)


STUDY = FigureStudy(
    key="saliency",
    title="Saliency",
    caption="The gradient of the predicted class's score with respect to the input pixels, "
    "for the first probe image of each class.",
    draw=draw,
    position=50,
)
