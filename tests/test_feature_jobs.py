"""The feature-study jobs' own computations: CKA before/after adaptation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mamlscope.features.activations import activations_frame
from mamlscope.features.cka_study import adaptation_cka


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
    # One value per episode (the probe, episode -1, is not one of them), their mean above.
    assert list(table.loc["fc1", "episode_ids"]) == [0, 1] and table.loc["fc1", "episodes"] == 2
    assert list(table.loc["fc1", "episode_cka"]) == pytest.approx([1.0, 1.0])
    head = np.asarray(table.loc["head", "episode_cka"])
    assert table.loc["head", "cka"] == pytest.approx(head.mean())
    assert table.loc["head", "low"] <= table.loc["head", "cka"] <= table.loc["head", "high"]
