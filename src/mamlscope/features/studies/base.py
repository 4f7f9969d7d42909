"""What a figure study is: one figure of one trained model, its words, and how it is drawn.

A :class:`FigureStudy` holds everything the workflow and the report need to know about one
figure: the file stem (``key``) the rules name the PNG by, the title and caption the
report shows, the place among the other figures (``position``), and ``draw``, which gets
a :class:`StudyContext` (what every study reads, loaded once per model) and the path to
write.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mamlscope.errors import ConfigError

if TYPE_CHECKING:
    from mamlscope.checkpoint import Checkpoint
    from mamlscope.model_job import ModelJob

# A key is a file stem and a Snakemake output name: lower case, digits, underscores.
KEY_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
# The CKA rule writes these figures into the same folder as the side-by-side studies.
RESERVED_KEYS = frozenset({"cka_methods", "cka_adaptation"})


@dataclass(frozen=True)
class StudyContext:
    """What the figure studies of one model read, loaded once by the figure job.

    ``probe`` is the probe table (``example_id``, ``class_id``) in its file's order;
    ``pixels`` (uint8 ``[P, C, H, W]``) and ``images`` (normalised, on the job's device)
    are its images in that order. ``activations`` is the model's ``activations.parquet``,
    ``metrics`` its training metrics, ``features`` the ``features`` config with
    ``neurons`` resolved to the chosen ``[{"layer", "unit"}, ...]``. ``title`` starts
    every figure's title (``"mnist5k · maml · seed 0"``).
    """

    job: ModelJob
    probe: pd.DataFrame
    pixels: np.ndarray
    images: torch.Tensor
    activations: pd.DataFrame
    metrics: pd.DataFrame
    features: Mapping[str, Any]
    title: str

    @property
    def checkpoint(self) -> Checkpoint:
        return self.job.checkpoint

    @property
    def model(self) -> nn.Module:
        return self.job.model

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """The model's input ``(C, H, W)``, as its checkpoint's spec records it."""
        return self.job.checkpoint.spec.in_shape

    @property
    def meta_learned(self) -> bool:
        """Whether the model runs with batch statistics (the BatchNorm policy: meta-learned
        models do, standard-trained ones use their running statistics)."""
        return self.job.method.is_meta

    @property
    def seed(self) -> int:
        """The run's seed: seeds every random choice of a figure (t-SNE, maximisation)."""
        return self.job.checkpoint.seed

    @property
    def neurons(self) -> list[dict[str, Any]]:
        """The chosen neurons, ``[{"layer": ..., "unit": ...}, ...]``."""
        return list(self.features["neurons"])


Draw = Callable[[StudyContext, Path], None]


@dataclass(frozen=True)
class FigureStudy:
    """One figure drawn for every trained model, and side by side for the methods.

    ``key``: the PNG's stem (``figures/{key}.png``) and the rules' output name; ``title``
    and ``caption``: what the report shows above the figure; ``draw(context, out)``:
    writes the PNG to ``out`` (:func:`mamlscope.features.figures.save` writes atomically);
    ``position``: the figure's place in the report, smallest first (the built-ins use
    10, 20, ...; ties by key).
    """

    key: str
    title: str
    caption: str
    draw: Draw
    position: int

    def __post_init__(self) -> None:
        where = f"figure study {self.key!r}"
        if not isinstance(self.key, str) or not KEY_PATTERN.fullmatch(self.key):
            raise ConfigError(
                f"{where}: key must be a lower-case file stem of letters, digits and "
                "underscores starting with a letter, e.g. 'weight_histogram'"
            )
        if self.key in RESERVED_KEYS:
            raise ConfigError(
                f"{where}: the CKA rule writes {self.key}.png beside the studies; "
                "choose another key"
            )
        for name in ("title", "caption"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}: {name} must be a non-empty string")
        if not callable(self.draw):
            raise ConfigError(f"{where}: draw must be a function draw(context, out_path)")
        if isinstance(self.position, bool) or not isinstance(self.position, int):
            raise ConfigError(f"{where}: position must be an integer, got {self.position!r}")
