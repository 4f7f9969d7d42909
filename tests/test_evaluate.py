"""Interval arithmetic and the batched head fine-tuning of the baseline's evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mamlscope.evaluate import evaluate_finetune, features_of, summarize


def test_interval_is_196_std_over_sqrt_n():
    values = [0.2, 0.4, 0.6, 0.8]
    acc = summarize(values)
    std = np.std(values, ddof=1)
    assert acc.mean == pytest.approx(0.5)
    assert acc.std == pytest.approx(std)
    assert acc.ci95 == pytest.approx(1.96 * std / math.sqrt(4))
    assert acc.episodes == 4


def test_single_episode_has_zero_width_and_empty_is_an_error():
    assert summarize([1.0]).ci95 == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_str_reports_percentages():
    assert str(summarize([0.5, 0.5])) == "50.00% +- 0.00% (2 episodes)"


class Body(nn.Module):
    """Features that separate the classes perfectly: the input itself."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.flat = nn.Flatten()
        self.head = nn.Linear(dim, classes)


def test_finetuned_head_solves_separable_episodes():
    torch.manual_seed(123)  # not 0: the head's own initialisation draws from seed 0
    way, shot, query, episodes, dim = 3, 2, 4, 5, 6
    centres = torch.randn(episodes, way, dim) * 5

    def draw(k):
        y = torch.arange(way).repeat_interleave(k).expand(episodes, -1)
        x = centres.gather(1, y[..., None].expand(-1, -1, dim)) + 0.1 * torch.randn(
            episodes, way * k, dim
        )
        return x, y

    sx, sy = draw(shot)
    qx, qy = draw(query)
    model = Body(dim, 10)
    assert features_of(model, sx[0]).shape == (way * shot, dim)
    acc = evaluate_finetune(model, [(sx, sy, qx, qy)], way=way, steps=300, lr=0.1)
    assert acc.shape == (episodes,)
    assert acc.mean() == pytest.approx(1.0)
    # Too few steps from a near-zero head cannot be better than chance on average.
    untrained = evaluate_finetune(model, [(sx, sy, qx, qy)], way=way, steps=1, lr=1e-6)
    assert untrained.mean() < 0.9
