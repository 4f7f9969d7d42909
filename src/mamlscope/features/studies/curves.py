"""Training curves: loss and accuracy against step, as the training job recorded them."""

from __future__ import annotations

from pathlib import Path

from mamlscope.features.studies.base import FigureStudy, StudyContext


def draw(context: StudyContext, out: Path) -> None:
    from mamlscope.features import figures  # matplotlib, only when drawing (package doc)

    fig = figures.plot_training_curves(context.metrics, f"{context.title} · training")
    figures.save(fig, out)


STUDY = FigureStudy(
    key="curves",
    title="Training curves",
    caption="Training loss and accuracy against step (lines) and validation (points), as "
    "the training job recorded them.",
    draw=draw,
    position=70,
)
