"""Small lookups every stage makes on a split: a pool's examples, and labels 0..C-1.

One home for them so that training, evaluation and the feature studies cannot disagree on
which images a pool holds or how a model's classes are numbered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mamlscope.data.pools import POOLS
from mamlscope.errors import DataError


def pool_ids(pools: pd.DataFrame, pool: str) -> np.ndarray:
    """The ``example_id`` s of ``pool`` (``train``, ``val`` or ``test``), as int64, in table
    order."""
    if pool not in POOLS:
        raise DataError(f"unknown pool {pool!r}; the pools are {list(POOLS)}")
    return pools.loc[pools["pool"] == pool, "example_id"].to_numpy(np.int64)


def pool_classes(index: pd.DataFrame, pools: pd.DataFrame, pool: str) -> np.ndarray:
    """The sorted ``class_id`` s that ``pool`` holds."""
    by_id = index.set_index("example_id")
    return np.sort(by_id.loc[pool_ids(pools, pool), "class_id"].unique())


def class_labels(index: pd.DataFrame, classes: np.ndarray) -> np.ndarray:
    """Per row of ``index``: the position of its ``class_id`` in ``classes`` (a model's label
    0..C-1), or -1 for a class the model was not trained on."""
    class_id = index["class_id"].to_numpy(np.int64)
    lookup = np.full(int(class_id.max()) + 1, -1, dtype=np.int64)
    lookup[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
    return lookup[class_id]
