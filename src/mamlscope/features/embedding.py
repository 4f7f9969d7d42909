"""2-D embeddings of a layer's probe activations, deterministic per seed.

The same seed gives the same picture, so a figure in a report can be regenerated, and
two methods embedded with the same seed differ only through their features.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

log = logging.getLogger(__name__)

METHODS = ("tsne", "pca")


def embed(features: np.ndarray | torch.Tensor, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``[N, F]`` features to ``[N, 2]`` points with t-SNE or PCA (scikit-learn).

    t-SNE: ``init='pca'``, ``random_state=seed``, perplexity ``min(30, (N - 1) / 3)`` (the
    largest that the neighbourhood size ``3 * perplexity < N`` allows, capped at the usual
    30). PCA: the full SVD, so also deterministic. Features are standardised by nothing:
    the scale of a representation is part of what is compared.
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
    start = time.perf_counter()
    if method == "pca":
        points = PCA(n_components=2, svd_solver="full").fit_transform(x)  # [N, 2]
    else:
        perplexity = min(30.0, (len(x) - 1) / 3)
        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
        points = tsne.fit_transform(x)  # [N, 2]
    log.info("%s of %d x %d features in %.1f s", method, *x.shape, time.perf_counter() - start)
    return np.asarray(points, dtype=np.float64)
