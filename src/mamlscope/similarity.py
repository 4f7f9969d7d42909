"""Linear centred kernel alignment (CKA) between two representations of the same examples.

CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited")
compares layers of different networks, or of one network before and after adaptation,
without matching units: it is invariant to orthogonal transforms and isotropic scaling
of either representation, but not to arbitrary invertible linear maps. On column-centred
``X`` [n, p] and ``Y`` [n, q]::

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F * ||Y^T Y||_F)
              = <X X^T, Y Y^T>_F / (||X X^T||_F * ||Y Y^T||_F)

The first (feature-space) form costs about ``n (p + q)^2`` and the second (example-space,
Gram) form about ``n^2 (p + q)``; :func:`linear_cka` uses whichever is cheaper, and both
give the same number up to float64 rounding.

A representation that is constant over the examples (every column has zero variance,
e.g. a layer of dead ReLUs) has no similarity structure: CKA is 0/0 there, and
:func:`linear_cka` returns ``nan`` so that it stays visible (a blank cell in a heat map)
instead of passing for "unrelated" (0) or "identical" (1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class _Centred:
    """One representation, column-centred in float64, with its self-similarity norm cached."""

    x: np.ndarray  # [n, p], float64, column-centred
    constant: bool  # every column has zero variance
    _norm: float | None = None

    def self_norm(self) -> float:
        """``||X^T X||_F`` (= ``||X X^T||_F``), computed in the cheaper space."""
        if self._norm is None:
            n, p = self.x.shape
            gram = self.x.T @ self.x if p <= n else self.x @ self.x.T  # [p, p] or [n, n]
            self._norm = float(np.linalg.norm(gram))
        return self._norm


def _as_float64(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):  # via torch: numpy knows no bfloat16
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [examples, features]; got shape {arr.shape}. "
            "Summarise conv activations first (features.activations.summarise) or flatten them."
        )
    if arr.shape[0] < 2:
        raise ValueError(f"{name} has {arr.shape[0]} example(s); CKA needs at least 2")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _centre(x: ArrayLike, name: str) -> _Centred:
    arr = _as_float64(x, name)
    constant_cols = np.ptp(arr, axis=0) == 0  # [p]
    centred = arr - arr.mean(axis=0, keepdims=True)  # [n, p]
    centred[:, constant_cols] = 0.0  # exact zeros, not rounding residue of the mean
    return _Centred(centred, constant=bool(constant_cols.all()))


def _cka_centred(a: _Centred, b: _Centred) -> float:
    if a.x.shape[0] != b.x.shape[0]:
        raise ValueError(
            f"CKA needs the same examples in both inputs; got {a.x.shape[0]} and "
            f"{b.x.shape[0]} rows"
        )
    if a.constant or b.constant:
        return float("nan")
    n, p = a.x.shape
    q = b.x.shape[1]
    feature_space = p + q <= n  # n (p + q)^2 <= n^2 (p + q)
    cross = _cross_features(a.x, b.x) if feature_space else _cross_gram(a.x, b.x)
    value = cross / (a.self_norm() * b.self_norm())
    return float(min(max(value, 0.0), 1.0))  # clip rounding just outside [0, 1]


def _cross_features(x: np.ndarray, y: np.ndarray) -> float:
    """``||Y^T X||_F^2`` on centred ``x`` [n, p], ``y`` [n, q]: cheap when p + q < n."""
    return float(np.linalg.norm(y.T @ x) ** 2)  # [q, p]


def _cross_gram(x: np.ndarray, y: np.ndarray) -> float:
    """``<X X^T, Y Y^T>_F``, the same number from [n, n] Gram matrices: cheap when n < p + q."""
    return float(np.sum((x @ x.T) * (y @ y.T)))  # [n, n]


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA in [0, 1] between ``x`` [n, p] and ``y`` [n, q] (rows are the same examples).

    Numpy arrays or torch tensors of any float dtype; computed in float64 on the CPU.
    Returns ``nan`` when either input is constant over the examples (see module docstring).
    Raises ``ValueError`` for non-2-D input, fewer than 2 examples, mismatched example
    counts, or non-finite values.
    """
    return _cka_centred(_centre(x, "x"), _centre(y, "y"))


def cka_matrix(acts_a: Mapping[str, ArrayLike], acts_b: Mapping[str, ArrayLike]) -> pd.DataFrame:
    """CKA for every pair of layers: rows ``layer_a, layer_b, cka`` in the mappings' orders.

    Each layer is centred once; pass ``acts_b=acts_a`` for a network against itself.
    All arrays must hold the same examples in the same order.
    """
    centred_a = {name: _centre(x, f"acts_a[{name!r}]") for name, x in acts_a.items()}
    if acts_b is acts_a:
        centred_b = centred_a
    else:
        centred_b = {name: _centre(x, f"acts_b[{name!r}]") for name, x in acts_b.items()}
    rows = [
        (name_a, name_b, _cka_centred(a, b))
        for name_a, a in centred_a.items()
        for name_b, b in centred_b.items()
    ]
    frame = pd.DataFrame(rows, columns=["layer_a", "layer_b", "cka"])
    return frame.astype({"layer_a": str, "layer_b": str, "cka": np.float64})
