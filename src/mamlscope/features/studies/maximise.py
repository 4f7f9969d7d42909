"""Activation maximisation (Olah et al. 2017): an input optimised to excite each neuron."""

from __future__ import annotations

from pathlib import Path

import torch

from mamlscope.features.maximise import maximise
from mamlscope.features.studies.base import FigureStudy, StudyContext

# A meta-learned model's copies are normalised among this many probe images (batch
# statistics need a batch).
CONTEXT_IMAGES = 64


def draw(context: StudyContext, out: Path) -> None:
    """One optimised image per chosen neuron, captioned with its activation before and
    after (``features.maximise_steps`` steps, seeded by the run's seed)."""
    from mamlscope.features import figures  # matplotlib, only when drawing (package doc)

    x, maml = context.images, context.meta_learned
    mean, std = context.job.data.normalize
    results, names = [], []
    for neuron in context.neurons:
        vis = maximise(
            context.model,
            neuron["layer"],
            neuron["unit"],
            in_shape=context.in_shape,
            mean=mean,
            std=std,
            batch_statistics=maml,
            context=x[:CONTEXT_IMAGES] if maml else None,
            steps=context.features["maximise_steps"],
            seed=context.seed,
        )
        results.append(vis.image.cpu())
        names.append(
            f"{vis.layer}[{vis.unit}]\n{vis.start_activation:.2f} -> {vis.final_activation:.2f}"
        )
    title = f"{context.title}\nactivation maximisation"
    figures.save(figures.plot_images(torch.stack(results), names, title), out)


STUDY = FigureStudy(
    key="maximise",
    title="Activation maximisation",
    caption="Inputs optimised to excite each chosen neuron.",
    draw=draw,
    position=60,
)
