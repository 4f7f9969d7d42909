"""Pools by protocol and fixed evaluation episodes, so every method sees the same data.

A *pool* is the set of examples a stage may touch: ``train`` (meta-training or standard
training), ``val`` (model selection) and ``test`` (the reported numbers); they are made
in :mod:`mamlscope.data.pools` (``make_pools`` is re-exported here). Evaluation
episodes are drawn once, written to disk and shared by every method, so differences in
accuracy come from the methods and not from the luck of the draw.

Randomness: pools come from ``numpy.random.default_rng(seed)``; the episodes of a pool
come from ``default_rng([seed, k])`` with ``k`` fixed per pool name, so val and test
episodes of one seed differ even when the two pools hold the same classes.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mamlscope.data.lookup import pool_ids
from mamlscope.data.pools import POOLS, example_pool_sizes, make_pools, source_ids
from mamlscope.errors import ConfigError, DataError
from mamlscope.io import atomic_path

# The files of one seed's split folder (the workflow's rules name them from here too).
POOLS_FILE, VAL_EPISODES, TEST_EPISODES = (
    "pools.parquet",
    "episodes_val.parquet",
    "episodes_test.parquet",
)

__all__ = [
    "POOLS",
    "check_episode_budget",
    "check_way_shot",
    "example_pool_sizes",
    "make_episodes",
    "make_pools",
    "pool_table",
    "source_ids",
    "write_split",
]

_POOL_KEY = {"train": 1, "val": 2, "test": 3}
# Random keys per episode chunk in make_episodes; bounds memory (8 bytes each).
_KEYS_PER_CHUNK = 1 << 22


def _pool_classes(index: pd.DataFrame, pools: pd.DataFrame, pool: str) -> pd.DataFrame:
    """``example_id``, ``class_id`` of a pool, sorted by class then example (stable order)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}")
    ids = pool_ids(pools, pool)
    return pool_table(index, ids)


def pool_table(index: pd.DataFrame, example_ids: np.ndarray) -> pd.DataFrame:
    """Class of each given example, sorted by ``class_id`` then ``example_id``.

    Shared with :mod:`mamlscope.data.tasks` so episodes and sampled tasks see one class table.
    """
    lookup = index.set_index("example_id")["class_id"]
    ids = np.unique(np.asarray(example_ids, dtype=np.int64))
    cls = lookup.reindex(ids)
    if cls.isna().any():
        missing = ids[cls.isna().to_numpy()][:5].tolist()
        raise DataError(f"example ids {missing} are not in the index table")
    out = pd.DataFrame({"example_id": ids, "class_id": cls.to_numpy(np.int64)})
    return out.sort_values(["class_id", "example_id"], kind="stable").reset_index(drop=True)


def check_way_shot(class_counts: pd.Series, pool: str, *, way: int, shot: int, query: int) -> None:
    """Fail with the key to change when a pool cannot give ``way``-way ``shot+query`` tasks.

    ``class_counts``: examples per class of the pool, indexed by ``class_id``. Strict on
    purpose: a class too small for an episode is an error, not silently dropped.
    """
    for key, value, low in (("way", way, 1), ("shot", shot, 1), ("query", query, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ConfigError(f"episodes.{key}: expected a whole number >= {low}; got {value!r}")
    if way > len(class_counts):
        raise ConfigError(
            f"episodes.way: {way} classes per episode, but pool '{pool}' has only "
            f"{len(class_counts)} classes; lower episodes.way or give the pool more classes"
        )
    need = shot + query
    smallest = int(class_counts.min())
    if need > smallest:
        cls = int(class_counts.idxmin())
        raise ConfigError(
            f"episodes.shot + episodes.query: {shot} + {query} = {need} examples per class are "
            f"needed, but class {cls} in pool '{pool}' has only {smallest}; lower episodes.shot "
            "or episodes.query"
        )


def make_episodes(
    index: pd.DataFrame,
    pools: pd.DataFrame,
    pool: str,
    *,
    way: int,
    shot: int,
    query: int,
    count: int,
    seed: int,
) -> pd.DataFrame:
    """Draw ``count`` fixed episodes from one pool.

    Each episode has ``way`` distinct classes, labelled 0..way-1 in random order, and per
    class ``shot + query`` distinct examples. Rows: per episode all support rows, then all
    query rows, each label-major (label 0's examples first). Deterministic per
    ``(seed, pool)``.
    """
    members = _pool_classes(index, pools, pool)
    counts = members.groupby("class_id", sort=True).size()
    check_way_shot(counts, pool, way=way, shot=shot, query=query)
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ConfigError(f"episodes.{pool}_episodes: expected a whole number >= 0; got {count!r}")
    rng = np.random.default_rng([seed, _POOL_KEY[pool]])
    n_cls, per = len(counts), shot + query
    sizes = counts.to_numpy(np.int64)
    width = int(sizes.max())
    table = np.zeros((n_cls, width), dtype=np.int64)
    rows = np.repeat(np.arange(n_cls), sizes)
    cols = np.arange(len(members)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    table[rows, cols] = members["example_id"].to_numpy(np.int64)

    chunk = max(1, _KEYS_PER_CHUNK // (way * width))
    picked = []
    for start in range(0, count, chunk):
        e = min(chunk, count - start)
        chosen = np.argsort(rng.random((e, n_cls)), axis=1, kind="stable")[:, :way]
        keys = rng.random((e, way, width))
        keys[np.arange(width) >= sizes[chosen][..., None]] = np.inf
        pos = np.argpartition(keys, per - 1, axis=-1)[..., :per]
        pos = np.take_along_axis(
            pos, np.argsort(np.take_along_axis(keys, pos, -1), -1, kind="stable"), -1
        )
        picked.append(table[chosen[..., None], pos])  # [e, way, shot+query]
    ids = np.concatenate(picked) if picked else np.zeros((0, way, per), dtype=np.int64)
    support = ids[..., :shot].reshape(count, way * shot)
    queries = ids[..., shot:].reshape(count, way * query)
    per_episode = way * per
    return pd.DataFrame(
        {
            "episode": np.repeat(np.arange(count, dtype=np.int64), per_episode),
            "role": np.tile(np.repeat(["support", "query"], [way * shot, way * query]), count),
            "example_id": np.concatenate([support, queries], axis=1).reshape(-1),
            "label": np.tile(
                np.concatenate(
                    [np.repeat(np.arange(way), shot), np.repeat(np.arange(way), query)]
                ).astype(np.int64),
                count,
            ),
        }
    )


def _episode_value(episodes_cfg: Mapping[str, Any], key: str) -> Any:
    """A key of the validated ``episodes`` section (the schema fills the defaults)."""
    if key not in episodes_cfg:
        raise ConfigError(
            f"episodes.{key}: required (validate the config first: the schema fills defaults)"
        )
    return episodes_cfg[key]


def _episode_keys(episodes_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    way, shot, query = (_episode_value(episodes_cfg, k) for k in ("way", "shot", "query"))
    return way, shot, query


def check_episode_budget(
    index: pd.DataFrame, pools: pd.DataFrame, episodes_cfg: Mapping[str, Any]
) -> None:
    """Check that train, val and test pools can all give the configured episodes.

    Train is checked too: meta-training samples its tasks from it. An empty val pool
    (``split.val: 0``) is skipped: ``write_split`` then writes an empty val table and
    training runs without validation.
    """
    way, shot, query = _episode_keys(episodes_cfg)
    for pool in POOLS:
        members = _pool_classes(index, pools, pool)
        if pool == "val" and len(members) == 0:
            continue
        counts = members.groupby("class_id", sort=True).size()
        check_way_shot(counts, pool, way=way, shot=shot, query=query)


def write_split(
    index: pd.DataFrame,
    split_cfg: Mapping[str, Any],
    episodes_cfg: Mapping[str, Any],
    seed: int,
    out_dir: str | os.PathLike[str],
) -> None:
    """Write ``pools.parquet``, ``episodes_val.parquet``, ``episodes_test.parquet``.

    Everything is computed and checked first; the folder then appears whole (atomic
    rename) or not at all.
    """
    pools = make_pools(index, split_cfg, seed)
    check_episode_budget(index, pools, episodes_cfg)
    way, shot, query = _episode_keys(episodes_cfg)
    tables = {}
    for pool in ("val", "test"):
        if pool == "val" and not len(pool_ids(pools, "val")):
            tables[pool] = _empty_episodes()
            continue
        count = _episode_value(episodes_cfg, f"{pool}_episodes")
        tables[pool] = make_episodes(
            index, pools, pool, way=way, shot=shot, query=query, count=count, seed=seed
        )
    with atomic_path(out_dir) as tmp:
        tmp = Path(tmp)
        tmp.mkdir()
        pools.to_parquet(tmp / POOLS_FILE, index=False)
        tables["val"].to_parquet(tmp / VAL_EPISODES, index=False)
        tables["test"].to_parquet(tmp / TEST_EPISODES, index=False)


def _empty_episodes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "episode": np.zeros(0, np.int64),
            "role": pd.Series([], dtype=str),
            "example_id": np.zeros(0, np.int64),
            "label": np.zeros(0, np.int64),
        }
    )
