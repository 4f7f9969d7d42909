"""What every job on a trained model opens first: the checkpoint, its method and its data.

Evaluation, the accuracy analyses, activation extraction and the feature figures all read
"checkpoint + images + index + meta" onto one device; :func:`open_model_job` does it once,
the same way for each, so they cannot differ in how a model meets its images.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from mamlscope.checkpoint import Checkpoint, load_checkpoint
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.tasks import images_to_tensor, normalize_batch
from mamlscope.methods import Method, method
from mamlscope.runtime import resolve_device, set_threads

if TYPE_CHECKING:
    from mamlscope.evaluate import EvalSettings
    from mamlscope.finetune import Batch


@dataclass(frozen=True)
class ModelJob:
    """A trained model, its method's declaration and its prepared dataset, on ``device``.

    The images move to the device on first use (:attr:`pixels`), so a job that needs none
    of them (or only a few, :meth:`images`) never copies the whole dataset.
    """

    checkpoint: Checkpoint
    method: Method
    data: PreparedDataset
    device: torch.device

    @property
    def model(self) -> nn.Module:
        return self.checkpoint.model

    @functools.cached_property
    def pixels(self) -> torch.Tensor:
        """Every image, uint8 ``[N, C, H, W]`` on the device."""
        return images_to_tensor(self.data.images, self.device)

    def images(self, example_ids: np.ndarray) -> torch.Tensor:
        """The given examples normalised as the model was trained, ``[n, C, H, W]`` float."""
        mean, std = self.data.normalize
        ids = np.asarray(example_ids, dtype=np.int64)
        return normalize_batch(images_to_tensor(self.data.images[ids], self.device), mean, std)

    def episodes(self, table: pd.DataFrame, settings: EvalSettings) -> Iterator[Batch]:
        """The fixed episodes of ``table`` in batches as ``settings`` says, on the device."""
        return settings.batches(self.pixels, table, self.data)


def open_model_job(
    *,
    checkpoint: str | os.PathLike[str],
    images: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    device: str,
    threads: int | None = None,
) -> ModelJob:
    """Set the job's threads, pick the device, load the checkpoint and its data."""
    set_threads(threads)
    torch_device = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, torch_device)
    data = PreparedDataset.from_files(images, index, meta)
    return ModelJob(ckpt, method(ckpt.method), data, torch_device)
