"""Nearest centroid on frozen features: how far the features alone go, with no adaptation.

Each class's prototype is the mean penultimate feature of its support images; each query
goes to the nearest prototype by Euclidean distance (Snell et al. 2017's rule, here on a
network not trained for it). The same rule for every method, the baseline included, so the
features themselves are compared, not the methods' ways of adapting.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mamlscope.analyses.features import episode_features
from mamlscope.finetune import Batch


def nearest_centroid(
    support_features: torch.Tensor,
    support_y: torch.Tensor,
    query_features: torch.Tensor,
    *,
    way: int,
) -> torch.Tensor:
    """Predicted labels ``[E, N*Q]``: each query's nearest class prototype.

    ``support_features`` ``[E, N*K, F]``, ``support_y`` ``[E, N*K]`` (labels 0..way-1),
    ``query_features`` ``[E, N*Q, F]``. Distances in float64, summed explicitly (no
    matrix-product shortcut), so near-ties resolve the same as a plain reference; ties go
    to the lower label.
    """
    fs, fq = support_features.double(), query_features.double()
    one_hot = F.one_hot(support_y, way).double()  # [E, N*K, way]
    counts = one_hot.sum(1).clamp(min=1).unsqueeze(-1)  # [E, way, 1]
    prototypes = one_hot.transpose(1, 2) @ fs / counts  # [E, way, F]
    distances = ((fq.unsqueeze(2) - prototypes.unsqueeze(1)) ** 2).sum(-1)  # [E, N*Q, way]
    return distances.argmin(-1)


def centroid_accuracy(
    model: nn.Module, batches: Iterable[Batch], *, batchnorm: str, way: int
) -> np.ndarray:
    """Per-episode query accuracy of nearest centroid on ``model``'s penultimate features
    (normalised as ``batchnorm`` says, :func:`~mamlscope.analyses.features.episode_features`)."""
    accuracies = []
    for support_x, support_y, query_x, query_y in batches:
        fs, fq = episode_features(model, support_x, query_x, batchnorm)
        predicted = nearest_centroid(fs, support_y, fq, way=way)
        accuracies.append((predicted == query_y).double().mean(-1).cpu().numpy())
    return np.concatenate(accuracies)
