"""Most and least activating probe images of each chosen neuron: what excites it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from mamlscope.data.images import read_image
from mamlscope.features.activations import layer_matrix
from mamlscope.features.studies.base import FigureStudy, StudyContext
from mamlscope.io import atomic_path


def stack_vertically(pngs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> None:
    """One PNG of ``pngs`` stacked top to bottom, left-aligned on white (no resampling).

    A part that cannot be read (corrupt, truncated, too large) is a DataError naming it.
    """
    images = [read_image(p, "RGB") for p in pngs]
    canvas = Image.new(
        "RGB", (max(i.width for i in images), sum(i.height for i in images)), "white"
    )
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    with atomic_path(out) as tmp:
        canvas.save(tmp, format="png")


def draw(context: StudyContext, out: Path) -> None:
    """One row pair per neuron (``features.extremes`` images each), stacked in one PNG."""
    from mamlscope.features import figures  # matplotlib, only when drawing (package doc)

    parts = []
    for i, neuron in enumerate(context.neurons):
        layer, unit = neuron["layer"], neuron["unit"]
        values = layer_matrix(context.activations, layer).values[:, unit]  # [P], probe order
        fig = figures.plot_extreme_examples(
            context.pixels, values, context.features["extremes"], f"{layer}[{unit}]", context.title
        )
        part = f"{os.fspath(out)}.part{i}.png"
        figures.save(fig, part)
        parts.append(part)
    stack_vertically(parts, out)
    for part in parts:
        os.remove(part)


STUDY = FigureStudy(
    key="extremes",
    title="Most and least activating examples",
    caption="For each chosen neuron, the probe images that excite it most and least.",
    draw=draw,
    position=40,
)
