"""Interval arithmetic and the batched head fine-tuning of the baseline's evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mamlscope.evaluate import summarize
from mamlscope.finetune import evaluate_finetune, features_of


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flat(x))


def test_finetuned_head_solves_separable_episodes():
    torch.manual_seed(123)  # the data's; heads draw from (seed, episode) generators
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


# --- the baseline's fresh heads: drawn from (seed, episode number) alone ---------------------


def random_episodes(episodes: int = 50, way: int = 5, shot: int = 1, query: int = 5):
    """Episodes of 8x8 images around per-class centres; hard enough that the head matters."""
    generator = torch.Generator().manual_seed(7)
    centres = torch.randn(episodes, way, 1, 8, 8, generator=generator)

    def draw(k):
        y = torch.arange(way).repeat_interleave(k).expand(episodes, -1)
        noise = torch.randn(episodes, way * k, 1, 8, 8, generator=generator)
        return centres[torch.arange(episodes)[:, None], y] + 1.5 * noise, y

    return (*draw(shot), *draw(query))


def in_batches(episodes, size: int):
    return [tuple(t[start : start + size] for t in episodes) for start in range(0, 50, size)]


@pytest.fixture
def fc_model() -> nn.Module:
    from mamlscope.models import build_model

    torch.manual_seed(5)
    return build_model("fc", (1, 8, 8), 10, running_stats=True).eval()


FINETUNE = dict(way=5, steps=5, lr=0.01)


def test_accuracy_per_episode_does_not_depend_on_the_batch_size(fc_model):
    """Each episode's head comes from (seed, episode number), not its place in a batch."""
    episodes = random_episodes()
    runs = {
        size: evaluate_finetune(fc_model, in_batches(episodes, size), seed=3, **FINETUNE)
        for size in (1, 7, 50)
    }
    assert 0.2 < runs[50].mean() < 0.95 and len(set(runs[50])) > 2  # not trivially equal
    np.testing.assert_array_equal(runs[1], runs[50])
    np.testing.assert_array_equal(runs[7], runs[50])


def test_the_seed_decides_the_heads_and_the_global_rng_does_not(fc_model):
    batches = in_batches(random_episodes(), 50)
    torch.manual_seed(0)
    first = evaluate_finetune(fc_model, batches, seed=3, **FINETUNE)
    torch.manual_seed(1)
    assert np.array_equal(evaluate_finetune(fc_model, batches, seed=3, **FINETUNE), first)
    assert not np.array_equal(evaluate_finetune(fc_model, batches, seed=4, **FINETUNE), first)


def test_episode_ids_number_the_episodes(fc_model):
    """Given their ids, a subset of episodes gets the heads it gets in the full run."""
    episodes = random_episodes()
    full = evaluate_finetune(fc_model, in_batches(episodes, 50), seed=3, **FINETUNE)
    later = tuple(t[20:] for t in episodes)
    alone = evaluate_finetune(fc_model, [later], seed=3, episode_ids=range(20, 50), **FINETUNE)
    np.testing.assert_array_equal(alone, full[20:])
    # Without ids they are numbered from 0, as the first episodes of the full run were.
    assert not np.array_equal(evaluate_finetune(fc_model, [later], seed=3, **FINETUNE), full[20:])


def test_finetune_all_is_seeded_and_starts_from_the_batched_head(fc_model):
    episodes = random_episodes()
    subset = [tuple(t[:6] for t in episodes)]
    torch.manual_seed(0)
    first = evaluate_finetune(fc_model, subset, seed=3, finetune_all=True, **FINETUNE)
    torch.manual_seed(1)
    again = evaluate_finetune(
        fc_model, in_batches(episodes, 4)[:2], seed=3, finetune_all=True, **FINETUNE
    )
    np.testing.assert_array_equal(again[:6], first)
    # With a learning rate of 0 nothing moves: both modes predict with the same fresh head.
    still = dict(FINETUNE, lr=0.0)
    np.testing.assert_array_equal(
        evaluate_finetune(fc_model, subset, seed=3, finetune_all=True, **still),
        evaluate_finetune(fc_model, subset, seed=3, **still),
    )


def one_query_episodes(episodes: int = 6, way: int = 5) -> tuple[torch.Tensor, ...]:
    """Episodes of 8x8 images with one support image per class and a single query."""
    gen = torch.Generator().manual_seed(0)
    support_x = torch.randn(episodes, way, 1, 8, 8, generator=gen)  # [E, N*K, C, H, W]
    support_y = torch.arange(way).repeat(episodes, 1)  # [E, N]
    labels = torch.randint(way, (episodes,), generator=gen)  # [E]
    query_x = support_x[torch.arange(episodes), labels].unsqueeze(1)  # [E, 1, C, H, W]
    query_x = query_x + 0.1 * torch.randn(query_x.shape, generator=gen)
    return support_x, support_y, query_x, labels.unsqueeze(1)


def test_transductive_maml_evaluation_refuses_fewer_queries_than_classes():
    """One query per episode: its own batch statistics erase it, whatever the image."""
    from mamlscope.errors import ConfigError
    from mamlscope.evaluate import evaluate_maml
    from mamlscope.models import build_model

    torch.manual_seed(0)
    model = build_model("fc", (1, 8, 8), 5, hidden=[16])
    batch = one_query_episodes()
    with pytest.raises(ConfigError, match="1 queries for 5 classes.*use batchnorm 'support'"):
        evaluate_maml(model, [batch], inner_lr=0.4, inner_steps=3)
    hits = evaluate_maml(model, [batch], inner_lr=0.4, inner_steps=3, batchnorm="support")
    assert hits.shape == (6,) and set(np.unique(hits)) <= {0.0, 1.0}
    # The query is a noisy copy of its class's support image: adapting on the support set
    # and normalising with its statistics recognises most of them.
    assert hits.mean() >= 0.5
