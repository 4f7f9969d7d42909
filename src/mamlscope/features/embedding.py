"""2-D embeddings of a layer's probe activations, deterministic per seed.

The same seed gives the same picture, so a figure in a report can be regenerated, and
two methods embedded with the same seed differ only through their features.

Features are checked before scikit-learn sees them: a diverged run's collapsed features
(every row the same) make t-SNE's PCA initialisation divide by a zero spread, and its
Barnes-Hut code then dies with SIGSEGV, taking the job down without a message. Such input,
and any NaN or infinity, raises :class:`DegenerateFeatures` instead, which the figure job
turns into a figure that says why.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from mamlscope.errors import DataError

log = logging.getLogger(__name__)

METHODS = ("tsne", "pca")
# Rows are "equal" when every feature's range is within this fraction of the largest
# magnitude: a few float32 roundings (eps 1.2e-7), the activations' own precision.
RELATIVE_SPREAD = 1e-6
# Below this range squared distances underflow the smallest normal float64 (t-SNE and PCA
# work on squared distances and variances), whatever the features' scale.
ABSOLUTE_SPREAD = float(np.sqrt(np.finfo(np.float64).tiny))


class DegenerateFeatures(DataError):
    """The features cannot be embedded: non-finite values, or every row the same (a
    collapsed representation, e.g. a diverged run). The message says which."""


def check_features(x: np.ndarray) -> None:
    """Raise :class:`DegenerateFeatures` for a matrix ``[N, F]`` no embedding can show.

    Non-finite entries are counted; rows count as equal when the largest per-feature range
    is at most :data:`RELATIVE_SPREAD` of the largest magnitude, or below
    :data:`ABSOLUTE_SPREAD`.
    """
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise DegenerateFeatures(
            f"the features hold {int(bad.sum())} non-finite values (NaN or infinity) in "
            f"{rows} of {len(x)} rows: the model's activations diverged"
        )
    spread = float(np.ptp(x, axis=0).max())
    scale = float(np.abs(x).max())
    if spread <= max(RELATIVE_SPREAD * scale, ABSOLUTE_SPREAD):
        raise DegenerateFeatures(
            f"the features collapsed: all {len(x)} rows are equal (largest range over a "
            f"feature {spread:.3g}, largest magnitude {scale:.3g}), so there is nothing "
            "to embed (a diverged or dead network)"
        )


def embed(features: np.ndarray | torch.Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``[N, F]`` features to ``[N, 2]`` points with t-SNE or PCA (scikit-learn).

    t-SNE: ``init='pca'``, ``random_state=seed``, perplexity ``min(30, (N - 1) / 3)`` (the
    largest that the neighbourhood size ``3 * perplexity < N`` allows, capped at the usual
    30). PCA: the full SVD, so also deterministic. Features are standardised by nothing:
    the scale of a representation is part of what is compared. Features that are not
    finite or all equal raise :class:`DegenerateFeatures` (:func:`check_features`).
    """
    from sklearn.decomposition import PCA  # imported here: scikit-learn is slow to import
    from sklearn.manifold import TSNE

    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}; got {method!r}")
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4 or x.shape[1] < 2:
        raise ValueError(f"embed needs features [N >= 4, F >= 2]; got shape {x.shape}")
    check_features(x)
    start = time.perf_counter()
    if method == "pca":
        points = PCA(n_components=2, svd_solver="full").fit_transform(x)  # [N, 2]
    else:
        perplexity = min(30.0, (len(x) - 1) / 3)
        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
        points = tsne.fit_transform(x)  # [N, 2]
    log.info("%s of %d x %d features in %.1f s", method, *x.shape, time.perf_counter() - start)
    return np.asarray(points, dtype=np.float64)
