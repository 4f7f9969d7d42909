"""Evaluation inputs that cannot work fail at once with an error that names the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mamlscope.checkpoint import Checkpoint, ModelSpec
from mamlscope.errors import ConfigError
from mamlscope.evaluate import EvalSettings, evaluate_checkpoint_on
from mamlscope.finetune import evaluate_finetune


def _checkpoint(method: str) -> Checkpoint:
    model = nn.Sequential()
    model.add_module("head", nn.Linear(4, 2))
    spec = ModelSpec(arch="fc", in_shape=(1, 2, 2), num_classes=2)
    return Checkpoint(model=model, spec=spec, method=method, seed=0, config={}, version="x")


def _batch(episodes: int = 1, way: int = 2, dim: int = 4) -> tuple[torch.Tensor, ...]:
    x = torch.randn(episodes, way, dim)
    y = torch.arange(way).expand(episodes, -1)
    return x, y, x.clone(), y.clone()


@pytest.mark.parametrize(
    ("method", "unset"),
    [("baseline", "finetune_steps and finetune_lr"), ("maml", "inner_lr and inner_steps")],
)
def test_settings_without_the_evaluations_keys_are_a_config_error(method, unset):
    settings = EvalSettings(method=method, way=2, shot=1, query=1, batch=1)
    with pytest.raises(ConfigError, match=unset) as info:
        evaluate_checkpoint_on(_checkpoint(method), [_batch()], settings)
    assert "EvalSettings.from_config" in str(info.value)


def test_settings_with_the_keys_evaluate():
    settings = EvalSettings(
        method="baseline", way=2, shot=1, query=1, batch=1, finetune_steps=2, finetune_lr=0.1
    )
    per_episode = evaluate_checkpoint_on(_checkpoint("baseline"), [_batch(3)], settings)
    assert per_episode.shape == (3,)


def test_finetune_all_needs_a_linear_head():
    model = nn.Sequential()
    model.add_module("head", nn.Sequential(nn.Linear(4, 2)))  # a head, but not nn.Linear
    with pytest.raises(TypeError, match="not the nn.Linear"):
        evaluate_finetune(model, [_batch()], way=2, steps=1, lr=0.1, finetune_all=True)
