"""The baseline's fresh-head fine-tuning on frozen features, under each BatchNorm mode.

Its evaluation normalises with running statistics; the meta-learned models normalise with
batch statistics. Fitting the same seeded fresh heads (:func:`mamlscope.finetune.fit_heads`)
on features normalised each way separates what standard training learnt from how its
features were normalised at test time. Under ``"running"`` this is its evaluation,
episode for episode (with ``baseline.finetune_all`` its evaluation fine-tunes every layer
instead; this analysis still fits the head alone, the frozen-feature question it asks).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from mamlscope.analyses.features import episode_features
from mamlscope.finetune import Batch, fit_heads


def fresh_head_accuracy(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    batchnorm: str,
    way: int,
    steps: int,
    lr: float,
    seed: int,
    episode_ids: Sequence[int],
) -> np.ndarray:
    """Per-episode accuracy of a fresh N-way head fitted on each support set's frozen
    features (``batchnorm``: how they are normalised), seeded by (``seed``, episode number)
    as :func:`mamlscope.finetune.evaluate_finetune` seeds it; ``episode_ids`` are the
    numbers of the episodes in the order the batches feed them."""
    accuracies = []
    fed = 0
    for support_x, support_y, query_x, query_y in batches:
        episodes = support_y.shape[0]
        numbers = [int(n) for n in episode_ids[fed : fed + episodes]]
        if len(numbers) != episodes:
            raise ValueError(f"more episodes fed than the {len(episode_ids)} episode_ids given")
        fed += episodes
        fs, fq = episode_features(model, support_x, query_x, batchnorm)
        weight, bias = fit_heads(
            fs, support_y, way=way, steps=steps, lr=lr, seed=seed, numbers=numbers
        )
        with torch.no_grad():
            logits = torch.baddbmm(bias, fq, weight.transpose(1, 2))  # [E, N*Q, way]
        accuracies.append((logits.argmax(-1) == query_y).float().mean(-1).cpu().numpy())
    return np.concatenate(accuracies)
