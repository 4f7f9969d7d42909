"""A fixed probe set: the same examples feed every model's feature study for one seed.

Comparing representations (CKA, embeddings, extreme examples) across methods only means
something on identical inputs, so the probe is chosen once per dataset and seed, balanced
over classes so that no class dominates an embedding or a similarity score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mamlscope.data.lookup import pool_ids
from mamlscope.errors import DataError


def _quotas(sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per class how many to take: as equal as ``n`` and the class sizes allow.

    Water-filling: small classes are taken whole, the rest share the remainder equally;
    the few left over after an equal split go to randomly chosen classes that still have
    examples to give.
    """
    order = np.argsort(sizes, kind="stable")
    quotas = np.zeros(len(sizes), dtype=np.int64)
    remaining = n
    for rank, cls in enumerate(order):
        share = remaining // (len(sizes) - rank)
        if sizes[cls] <= share:
            quotas[cls] = sizes[cls]
            remaining -= int(sizes[cls])
            continue
        rest = order[rank:]  # every class here has more than `share` examples
        quotas[rest] = share
        extra = remaining - share * len(rest)  # < len(rest)
        quotas[rng.choice(np.sort(rest), size=extra, replace=False)] += 1
        break
    return quotas


def choose_probe(
    index: pd.DataFrame, pools: pd.DataFrame, n: int, seed: int, pool: str = "test"
) -> pd.DataFrame:
    """``n`` examples of ``pool``, class-balanced, the same for the same ``seed``.

    ``index`` has ``example_id, class_id``; ``pools`` has ``example_id, pool``. Returns
    ``example_id, class_id`` (int64) sorted by example id. Each class gets ``n // classes``
    or one more; a class too small for its share is taken whole and the others make up
    the difference.
    """
    for name, frame, cols in (
        ("index", index, ("example_id", "class_id")),
        ("pools", pools, ("example_id", "pool")),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"{name} lacks column(s) {missing}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"probe size n must be a positive integer; got {n!r}")
    available = sorted(pools["pool"].astype(str).unique())
    if pool not in available:
        raise DataError(f"pool {pool!r} is not in the pools table; it has {available}")
    ids = pool_ids(pools, pool)
    members = index.loc[index["example_id"].isin(ids), ["example_id", "class_id"]]
    members = members.astype(np.int64).sort_values(["class_id", "example_id"], kind="stable")
    if n > len(members):
        raise DataError(f"probe of {n} examples asked for, but pool {pool!r} has {len(members)}")
    groups = [g["example_id"].to_numpy() for _, g in members.groupby("class_id", sort=True)]
    classes = np.sort(members["class_id"].unique())
    rng = np.random.default_rng(seed)
    quotas = _quotas(np.array([len(g) for g in groups], dtype=np.int64), n, rng)
    picked = [rng.choice(g, size=q, replace=False) for g, q in zip(groups, quotas, strict=True)]
    probe = pd.DataFrame(
        {
            "example_id": np.concatenate(picked).astype(np.int64),
            "class_id": np.repeat(classes, quotas).astype(np.int64),
        }
    )
    return probe.sort_values("example_id", kind="stable").reset_index(drop=True)
