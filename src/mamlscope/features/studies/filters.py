"""First-layer filters: what the network looks for in the pixels, read from its weights."""

from __future__ import annotations

from pathlib import Path

from mamlscope.features.studies.base import FigureStudy, StudyContext


def draw(context: StudyContext, out: Path) -> None:
    """Each first-layer unit's weights as an image (fc), or the first layer's kernels."""
    from mamlscope.features import figures  # matplotlib, only when drawing (package doc)

    fig = figures.plot_first_layer_filters(
        context.model, context.in_shape, f"{context.title} · first layer"
    )
    figures.save(fig, out)


STUDY = FigureStudy(
    key="filters",
    title="First-layer filters",
    caption="The first layer's weights as images (red positive, blue negative).",
    draw=draw,
    position=10,
)
