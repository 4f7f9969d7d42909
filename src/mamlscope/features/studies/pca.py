"""PCA of the probe set: the linear view of the last hidden layer, beside t-SNE's."""

from __future__ import annotations

from pathlib import Path

from mamlscope.features.studies._embedding import draw_embedding
from mamlscope.features.studies.base import FigureStudy, StudyContext


def draw(context: StudyContext, out: Path) -> None:
    draw_embedding(context, out, "pca", "PCA")


STUDY = FigureStudy(
    key="pca",
    title="PCA of the probe set",
    caption="The same activations projected on their first two principal components.",
    draw=draw,
    position=30,
)
