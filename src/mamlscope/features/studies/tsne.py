"""t-SNE of the probe set: which classes the last hidden layer keeps apart."""

from __future__ import annotations

from pathlib import Path

from mamlscope.features.studies._embedding import draw_embedding
from mamlscope.features.studies.base import FigureStudy, StudyContext


def draw(context: StudyContext, out: Path) -> None:
    draw_embedding(context, out, "tsne", "t-SNE")


STUDY = FigureStudy(
    key="tsne",
    title="t-SNE of the probe set",
    caption="The last hidden layer's activations of the probe images, embedded in 2-D by "
    "t-SNE, coloured by class.",
    draw=draw,
    position=20,
)
