"""The feature-study jobs' own computations: head-only adaptation and CKA before/after."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mamlscope.features.activations import activations_frame
from mamlscope.features.cka_study import adaptation_cka
from mamlscope.features.head_only import head_only_accuracy
from mamlscope.finetune import features_of
from mamlscope.models import batch_statistics, build_model


def episodes(count: int = 4, way: int = 3, shot: int = 2, query: int = 3):
    gen = torch.Generator().manual_seed(0)
    support_x = torch.randn(count, way * shot, 1, 6, 6, generator=gen)
    query_x = torch.randn(count, way * query, 1, 6, 6, generator=gen)
    support_y = torch.arange(way).repeat_interleave(shot).repeat(count, 1)
    query_y = torch.arange(way).repeat_interleave(query).repeat(count, 1)
    return support_x, support_y, query_x, query_y


@pytest.mark.parametrize("steps", [0, 3])
def test_head_only_adaptation_is_sgd_on_the_head_alone(steps: int) -> None:
    """Against a per-episode loop: the body's features (each batch's own statistics) are
    fixed and only the head takes `steps` SGD steps from its meta-learned weights."""
    torch.manual_seed(0)
    model = build_model("fc", (1, 6, 6), 3, hidden=[8, 8])
    batch = episodes()
    hits = head_only_accuracy(
        model, [batch], inner_lr=0.5, inner_steps=steps, batchnorm="transductive"
    )
    support_x, support_y, query_x, query_y = batch
    for e in range(len(support_x)):
        with torch.no_grad(), batch_statistics():
            fs, fq = features_of(model, support_x[e]), features_of(model, query_x[e])
        w = model.head.weight.detach().clone().requires_grad_()
        b = model.head.bias.detach().clone().requires_grad_()
        for _ in range(steps):
            loss = F.cross_entropy(fs @ w.T + b, support_y[e])
            gw, gb = torch.autograd.grad(loss, (w, b))
            w = (w - 0.5 * gw).detach().requires_grad_()
            b = (b - 0.5 * gb).detach().requires_grad_()
        expected = ((fq @ w.T + b).argmax(-1) == query_y[e]).float().mean().item()
        assert hits[e] == pytest.approx(expected)


def test_adaptation_cka_is_one_for_unchanged_layers_and_lower_for_changed_ones() -> None:
    rng = np.random.default_rng(0)
    frames = []
    for episode in (0, 1):
        ids = np.arange(10) + 10 * episode
        body = rng.normal(size=(10, 6))
        head = rng.normal(size=(10, 3))
        changed = rng.normal(size=(10, 3))
        labels = np.zeros(10)
        frames.append(
            activations_frame(
                {"fc1": body, "head": head}, ids, labels, stage="meta", episode=episode
            )
        )
        frames.append(
            activations_frame(
                {"fc1": 2 * body, "head": changed}, ids, labels, stage="adapted", episode=episode
            )
        )
    frames.append(activations_frame({"fc1": rng.normal(size=(5, 6))}, np.arange(5), np.zeros(5)))
    table = adaptation_cka(pd.concat(frames, ignore_index=True)).set_index("layer")
    assert table.loc["fc1", "cka"] == pytest.approx(1.0)  # scaled: CKA is scale invariant
    assert table.loc["head", "cka"] < 0.6
