"""Linear CKA: the invariances that define it, a value worked out by hand, and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mamlscope import similarity
from mamlscope.similarity import cka_matrix, linear_cka


def _random(n: int, p: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, p))


def _orthogonal(p: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(p, p)))
    return q


def test_identical_inputs_give_one() -> None:
    x = _random(50, 8, 0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n, p", [(60, 10), (10, 60)])  # feature-space and Gram paths
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(n: int, p: int) -> None:
    x, y = _random(n, p, 1), _random(n, 5, 2) + 0.3 * _random(n, p, 1)[:, :5]
    reference = linear_cka(x, y)
    assert 0.0 < reference < 1.0
    assert linear_cka(x @ _orthogonal(p, 3), y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(x, y @ _orthogonal(5, 4)) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(7.5 * x, y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(x, 0.01 * y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(x + 3.0, y - 1.0) == pytest.approx(reference, abs=1e-10)  # centred


def test_not_invariant_to_an_arbitrary_invertible_linear_map() -> None:
    x = _random(200, 6, 5)
    stretch = np.diag([50.0, 1.0, 1.0, 1.0, 1.0, 0.02])  # invertible, not orthogonal
    value = linear_cka(x, x @ stretch @ _orthogonal(6, 6))
    assert value < 0.6  # an orthogonal map alone would give 1


def test_symmetric() -> None:
    x, y = _random(40, 7, 7), _random(40, 3, 8)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-14)


def test_value_worked_out_by_hand() -> None:
    # X = [[0,0],[1,0],[0,1]] centres to Xc = [[-1,-1],[2,-1],[-1,2]] / 3;
    # Y = [[0,1],[1,0],[2,0]] centres to Yc = [[-1,2/3],[0,-1/3],[1,-1/3]].
    # Yc^T Xc = [[0, 1], [-1/3, -1/3]]           -> ||.||_F^2 = 1 + 2/9 = 11/9
    # Xc^T Xc = [[2/3, -1/3], [-1/3, 2/3]]       -> ||.||_F = sqrt(10/9)
    # Yc^T Yc = [[2, -1], [-1, 2/3]]             -> ||.||_F = sqrt(58/9)
    # CKA = (11/9) / (sqrt(10) * sqrt(58) / 9) = 11 / sqrt(580)
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    assert linear_cka(x, y) == pytest.approx(11 / math.sqrt(580), abs=1e-14)


@pytest.mark.parametrize("n, p, q", [(30, 4, 6), (6, 30, 40), (12, 5, 7)])
def test_feature_space_and_gram_formulas_agree(n: int, p: int, q: int) -> None:
    a = similarity._centre(_random(n, p, 9), "x")
    b = similarity._centre(_random(n, q, 10), "y")
    features = similarity._cross_features(a.x, b.x)
    gram = similarity._cross_gram(a.x, b.x)
    assert features == pytest.approx(gram, rel=1e-12)


def test_numpy_and_torch_inputs_agree() -> None:
    x, y = _random(25, 6, 11), _random(25, 4, 12)
    expected = linear_cka(x, y)
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, 1e-14)
    x32, y32 = x.astype(np.float32), torch.from_numpy(y).to(torch.bfloat16)
    assert linear_cka(x32, y32) == pytest.approx(linear_cka(x32, y32.float().numpy()), 1e-14)
    assert linear_cka(x32, y32) == pytest.approx(expected, abs=1e-2)


def test_constant_input_gives_nan() -> None:
    x = _random(10, 3, 13)
    assert math.isnan(linear_cka(np.full((10, 4), 0.1), x))
    assert math.isnan(linear_cka(x, np.zeros((10, 2))))
    partly_constant = np.column_stack([x[:, 0], np.full(10, 2.0)])
    assert not math.isnan(linear_cka(partly_constant, x))


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.zeros((5, 2)), np.zeros((6, 2)), "same examples"),
        (np.zeros((1, 2)), np.zeros((1, 2)), "at least 2"),
        (np.zeros((5, 2, 2)), np.zeros((5, 2)), "2-D"),
        (np.zeros(5), np.zeros((5, 2)), "2-D"),
        (np.array([[0.0], [np.nan]]), np.zeros((2, 1)), "NaN"),
    ],
)
def test_invalid_inputs_raise(x: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        linear_cka(x, y)


def test_cka_matrix_covers_every_pair() -> None:
    base = _random(20, 5, 14)
    acts_a = {"fc1": base, "fc2": _random(20, 3, 15)}
    acts_b = {"fc1": base @ _orthogonal(5, 16), "relu1": torch.from_numpy(_random(20, 4, 17))}
    frame = cka_matrix(acts_a, acts_b)
    assert list(frame.columns) == ["layer_a", "layer_b", "cka"]
    assert list(zip(frame.layer_a, frame.layer_b, strict=True)) == [
        ("fc1", "fc1"),
        ("fc1", "relu1"),
        ("fc2", "fc1"),
        ("fc2", "relu1"),
    ]
    assert frame.cka.iloc[0] == pytest.approx(1.0, abs=1e-12)
    assert frame.cka.iloc[3] == pytest.approx(linear_cka(acts_a["fc2"], acts_b["relu1"]))
    self_frame = cka_matrix(acts_a, acts_a)
    assert self_frame.cka.to_numpy()[[0, 3]] == pytest.approx([1.0, 1.0])
