"""Pools by protocol and fixed evaluation episodes, so every method sees the same data.

A *pool* is the set of examples a stage may touch: ``train`` (meta-training or standard
training), ``val`` (model selection) and ``test`` (the reported numbers). Evaluation
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

from mamlscope.errors import ConfigError, DataError
from mamlscope.io import atomic_path

POOLS = ("train", "val", "test")
_POOL_KEY = {"train": 1, "val": 2, "test": 3}
_INDEX_COLUMNS = (
    "example_id",
    "class_id",
    "class_name",
    "base_class",
    "rotation",
    "group",
    "origin",
)
# Random keys per episode chunk in make_episodes; bounds memory (8 bytes each).
_KEYS_PER_CHUNK = 1 << 22


def _require_columns(index: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise DataError(f"index table lacks column(s) {missing}; has {list(index.columns)}")
    if len(index) == 0:
        raise DataError("index table is empty: the prepared dataset holds no examples")


def _count(split_cfg: Mapping[str, Any], key: str, default: int | None) -> int:
    """A class count from the config: a whole number (``20.0`` is accepted as 20)."""
    value = split_cfg.get(key, default)
    if value is None:
        raise ConfigError(
            f"split.{key}: required for protocol 'classes' (the number of base classes)"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != int(value):
        raise ConfigError(
            f"split.{key}: protocol 'classes' counts base classes; got {value!r}, "
            "expected a whole number"
        )
    if value < 0 or (key == "train" and value < 1):
        raise ConfigError(
            f"split.{key}: must be at least {1 if key == 'train' else 0}; got {value}"
        )
    return int(value)


def _fraction(split_cfg: Mapping[str, Any], key: str, default: float, low_open: bool) -> float:
    value = split_cfg.get(key, default)
    if value is None:
        value = default
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not ((0 < value) if low_open else (0 <= value)) or not value < 1:
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ConfigError(
            f"split.{key}: protocol 'examples' takes a fraction of each class's examples "
            f"in {interval}; got {value!r}"
        )
    return float(value)


def make_pools(index: pd.DataFrame, split_cfg: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """Assign every example to ``train``, ``val`` or ``test`` by the split protocol.

    ``classes``: base classes (all rotations together) are shuffled and the first
    ``split.train`` go to train, the next ``split.val`` (default 0) to val, the rest to
    test. With ``keep_groups`` the *groups* (alphabets) are shuffled instead and whole
    groups go to train until its base-class count reaches or exceeds ``split.train``, then
    to val likewise, the rest to test; so train and val may hold a few more classes than
    asked, never fewer.

    ``examples``: every class is in every pool. Per class the examples are shuffled and
    cut at ``round(train * n)`` and ``round((train + val) * n)`` (defaults 0.6, 0.2; test
    gets the rest). With ``test_origin`` the examples of that origin are the test pool and
    the others are cut per class at ``round(train / (train + val) * n)`` into train and val.

    Returns a table ``example_id``, ``pool`` sorted by ``example_id``. Checks the whole
    config before drawing anything, so a bad key fails fast with its name.
    """
    _require_columns(index, _INDEX_COLUMNS)
    protocol = split_cfg.get("protocol")
    table = index.sort_values("example_id", kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if protocol == "classes":
        pool = _class_pools(table, split_cfg, rng)
    elif protocol == "examples":
        pool = _example_pools(table, split_cfg, rng)
    else:
        raise ConfigError(f"split.protocol: expected 'classes' or 'examples'; got {protocol!r}")
    return pd.DataFrame(
        {"example_id": table["example_id"].to_numpy(np.int64), "pool": np.asarray(POOLS)[pool]}
    )


def _class_pools(
    table: pd.DataFrame, split_cfg: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    if split_cfg.get("test_origin"):
        raise ConfigError("split.test_origin: only used by protocol 'examples'")
    train = _count(split_cfg, "train", None)
    val = _count(split_cfg, "val", 0)
    base = table["base_class"].to_numpy(np.int64)
    classes = np.unique(base)
    available = len(classes)
    if train >= available:
        raise ConfigError(
            f"split.train: asks for {train} base classes but the dataset has only {available} "
            "(and at least one must be left for test)"
        )
    if train + val >= available:
        raise ConfigError(
            f"split.val: asks for {val} base classes but only {available - train} remain after "
            f"{train} train classes, and at least one must be left for test "
            f"({available} available in all)"
        )
    if split_cfg.get("keep_groups"):
        groups_per_class = table.groupby("base_class", sort=True)["group"].nunique()
        if (groups_per_class > 1).any():
            bad = int(groups_per_class[groups_per_class > 1].index[0])
            raise DataError(f"base class {bad} spans several groups; keep_groups needs one each")
        class_group = table.drop_duplicates("base_class").set_index("base_class")["group"]
        groups = np.unique(class_group.to_numpy().astype(str))
        order = groups[rng.permutation(len(groups))]
        sizes = class_group.astype(str).value_counts().reindex(order).to_numpy()
        filled = np.cumsum(sizes)
        # Groups up to and including the one where the running count reaches the target.
        n_train = int(np.searchsorted(filled, train)) + 1
        n_val = int(np.searchsorted(filled, filled[n_train - 1] + val)) + 1 if val else n_train
        if n_val >= len(order):
            raise ConfigError(
                f"split.keep_groups: whole groups for {train} train and {val} val base classes "
                f"use all {len(order)} groups ({available} classes), leaving none for test; "
                "lower split.train or split.val"
            )
        group_pool = pd.Series(0, index=order)
        group_pool.iloc[n_train:n_val] = 1
        group_pool.iloc[n_val:] = 2
        class_pool = class_group.astype(str).map(group_pool)
    else:
        shuffled = classes[rng.permutation(available)]
        class_pool = pd.Series(2, index=shuffled)
        class_pool.iloc[:train] = 0
        class_pool.iloc[train : train + val] = 1
    return class_pool.reindex(base).to_numpy(np.int64)


def _example_pools(
    table: pd.DataFrame, split_cfg: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    if split_cfg.get("keep_groups"):
        raise ConfigError("split.keep_groups: only used by protocol 'classes'")
    train = _fraction(split_cfg, "train", 0.6, low_open=True)
    val = _fraction(split_cfg, "val", 0.2, low_open=False)
    origin = split_cfg.get("test_origin")
    n = len(table)
    pool = np.full(n, 2, dtype=np.int64)
    if origin is None:
        if train + val >= 1:
            raise ConfigError(
                f"split.val: train + val = {train + val:g} leaves no test examples; "
                "make split.train + split.val less than 1"
            )
        rest = np.ones(n, dtype=bool)
        cut_train, cut_val = train, train + val
    else:
        origins = table["origin"].astype(str).to_numpy()
        available = sorted(set(origins))
        if origin not in available:
            raise ConfigError(
                f"split.test_origin: no examples have origin {origin!r}; available: {available}"
            )
        rest = origins != origin
        if not rest.any():
            raise ConfigError(
                f"split.test_origin: every example has origin {origin!r}, none left for train"
            )
        cut_train, cut_val = train / (train + val), 1.0
    idx = np.flatnonzero(rest)
    cls = table["class_id"].to_numpy(np.int64)[idx]
    keys = rng.random(len(idx))
    order = np.lexsort((keys, cls))  # by class, shuffled within class
    _, inverse, counts = np.unique(cls[order], return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[inverse]
    size = counts[inverse]
    b_train = np.floor(cut_train * size + 0.5)
    b_val = np.floor(cut_val * size + 0.5)
    pool[idx[order]] = np.where(rank < b_train, 0, np.where(rank < b_val, 1, 2))
    return pool


def _pool_classes(index: pd.DataFrame, pools: pd.DataFrame, pool: str) -> pd.DataFrame:
    """``example_id``, ``class_id`` of a pool, sorted by class then example (stable order)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}")
    ids = pools.loc[pools["pool"] == pool, "example_id"].to_numpy(np.int64)
    return pool_table(index, ids)


def pool_table(index: pd.DataFrame, example_ids: np.ndarray) -> pd.DataFrame:
    """Class of each given example, sorted by ``class_id`` then ``example_id``.

    Shared with :mod:`mamlscope.tasks` so episodes and sampled tasks see one class table.
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


def _episode_keys(episodes_cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    for key in ("way", "shot"):
        if key not in episodes_cfg:
            raise ConfigError(f"episodes.{key}: required")
    return episodes_cfg["way"], episodes_cfg["shot"], episodes_cfg.get("query", 15)


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
        if pool == "val" and not (pools["pool"] == "val").any():
            tables[pool] = _empty_episodes()
            continue
        count = episodes_cfg.get(f"{pool}_episodes", 100 if pool == "val" else 600)
        tables[pool] = make_episodes(
            index, pools, pool, way=way, shot=shot, query=query, count=count, seed=seed
        )
    with atomic_path(out_dir) as tmp:
        tmp = Path(tmp)
        tmp.mkdir()
        pools.to_parquet(tmp / "pools.parquet", index=False)
        for pool, table in tables.items():
            table.to_parquet(tmp / f"episodes_{pool}.parquet", index=False)


def _empty_episodes() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "episode": np.zeros(0, np.int64),
            "role": pd.Series([], dtype=str),
            "example_id": np.zeros(0, np.int64),
            "label": np.zeros(0, np.int64),
        }
    )
