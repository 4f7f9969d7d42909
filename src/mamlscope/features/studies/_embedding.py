"""What the t-SNE and PCA studies share: the penultimate layer's probe activations in 2-D."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mamlscope.features.activations import layer_matrix
from mamlscope.features.embedding import DegenerateFeatures, embed
from mamlscope.features.studies.base import StudyContext
from mamlscope.models import layer_names

log = logging.getLogger("mamlscope")


def penultimate(layers: Sequence[str]) -> str:
    """The recorded layer before ``head``: its output is ``head``'s input (the registry's
    contract), the penultimate features."""
    return layers[list(layers).index("head") - 1]


def draw_embedding(context: StudyContext, out: Path, method: str, name: str) -> None:
    """The penultimate layer's probe activations embedded by ``method`` (:func:`embed`,
    seeded by the run's seed), coloured by class; ``name`` labels the axes.

    Features that cannot be embedded (:class:`DegenerateFeatures`: a diverged run) give a
    figure saying why, with the reason in a note beside it for the report, so the job and
    the other studies go on."""
    from mamlscope.features import figures  # matplotlib, only when drawing (package doc)

    layer = penultimate(layer_names(context.model))
    matrix = layer_matrix(context.activations, layer)  # probe rows, sorted by example id
    title = f"{context.title} · {layer}"
    try:
        points = embed(matrix.values, method, seed=context.seed)
    except DegenerateFeatures as exc:
        note = f"No {name} of {layer}: {exc}."
        log.warning("%s: %s", context.title, note)
        figures.save(figures.plot_message(note, title), out, note=note)
        return
    fig = figures.plot_embedding(points, matrix.labels, title, method=name)
    figures.save(fig, out)
