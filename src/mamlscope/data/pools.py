"""Pools by protocol: which examples each stage may touch, with nothing leaking between them.

A *pool* is ``train`` (meta-training or standard training), ``val`` (model selection) or
``test`` (the reported numbers). Under ``classes`` the pools hold disjoint base classes;
under ``examples`` every class is in every pool with disjoint *source images*: the
rotated copies of one drawing are one source image and always share a pool, so a model
never meets in test a rotation of a drawing it trained on.

The split config is the validated one (`mamlscope.config` fills the schema's defaults);
a missing key is an error here, so no default is written twice.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mamlscope.errors import ConfigError, DataError

POOLS = ("train", "val", "test")
INDEX_COLUMNS = (
    "example_id",
    "class_id",
    "class_name",
    "base_class",
    "rotation",
    "group",
    "origin",
)
_ANGLES = (0, 90, 180, 270)
# Random group orders keep_groups tries per seed; the closest to the request wins.
_GROUP_ORDERS = 32


def require_columns(index: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Fail with the missing columns' names, or when the index is empty."""
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise DataError(f"index table lacks column(s) {missing}; has {list(index.columns)}")
    if len(index) == 0:
        raise DataError("index table is empty: the prepared dataset holds no examples")


def _value(split_cfg: Mapping[str, Any], key: str) -> Any:
    if key not in split_cfg:
        raise ConfigError(
            f"split.{key}: required (validate the config first: the schema fills defaults)"
        )
    return split_cfg[key]


def _count(split_cfg: Mapping[str, Any], key: str) -> int:
    """A class count from the config: a whole number (``20.0`` is accepted as 20)."""
    value = _value(split_cfg, key)
    number = isinstance(value, int | float | np.integer | np.floating)
    if isinstance(value, bool) or not number or value != int(value):
        raise ConfigError(
            f"split.{key}: protocol 'classes' counts base classes; got {value!r}, "
            "expected a whole number"
        )
    if value < 0 or (key == "train" and value < 1):
        raise ConfigError(
            f"split.{key}: must be at least {1 if key == 'train' else 0}; got {value}"
        )
    return int(value)


def _fraction(split_cfg: Mapping[str, Any], key: str, low_open: bool) -> float:
    value = _value(split_cfg, key)
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
    ``split.train`` go to train, the next ``split.val`` to val, the rest to test. With
    ``keep_groups`` whole groups (alphabets) are chosen instead, per seed, so that train
    and then val land as close to the request as whole groups allow: each count is within
    half the largest group (rounded down) of the request or, when every group left is at
    least twice the request, the smallest such group; otherwise (the groups cannot give
    it and leave one for each later pool) a ConfigError names ``split.keep_groups``.

    ``examples``: every class is in every pool. Per base class the source images are
    shuffled and cut at ``round(train * n)`` and ``round((train + val) * n)``, test gets
    the rest; each example goes where its source image goes, so a rotated class has the
    pools of its base class and every rotation of a drawing is in one pool. With
    ``test_origin`` that origin's examples are the test pool and the others are cut at
    ``round(train / (train + val) * n)`` into train and val.

    Returns a table ``example_id``, ``pool`` sorted by ``example_id``. Checks the whole
    config before drawing anything, so a bad key fails fast with its name.
    """
    require_columns(index, INDEX_COLUMNS)
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
    train, val = _count(split_cfg, "train"), _count(split_cfg, "val")
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
        class_group = class_group.astype(str)
        groups = np.unique(class_group.to_numpy())
        sizes = class_group.value_counts().reindex(groups).to_numpy(np.int64)
        group_pool = pd.Series(choose_groups(sizes, train, val, rng), index=groups)
        class_pool = class_group.map(group_pool)
    else:
        shuffled = classes[rng.permutation(available)]
        class_pool = pd.Series(2, index=shuffled)
        class_pool.iloc[:train] = 0
        class_pool.iloc[train : train + val] = 1
    return class_pool.reindex(base).to_numpy(np.int64)


def choose_groups(sizes: np.ndarray, train: int, val: int, rng: np.random.Generator) -> np.ndarray:
    """Pool index (0 train, 1 val, 2 test) per group of ``sizes`` base classes.

    Greedy per random order: a group is taken when it brings the count closer to the
    request (size < twice the shortfall), so an overshoot is below half that group and a
    shortfall at most half of every group passed over; one group stays for each later
    pool. Of ``_GROUP_ORDERS`` orders drawn from ``rng`` the first with the smallest total
    miss (train's plus val's; ties: train's) wins. See make_pools for the tolerance.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    need_groups = 3 if val else 2
    if len(sizes) < need_groups:
        raise ConfigError(
            f"split.keep_groups: {len(sizes)} group(s) cannot give train"
            f"{', val' if val else ''} and test a whole group each, none for test; "
            "turn keep_groups off"
        )
    best: tuple[tuple[int, int, int], np.ndarray, str] | None = None
    for _ in range(_GROUP_ORDERS):
        order = rng.permutation(len(sizes))
        pool = np.full(len(sizes), 2, dtype=np.int64)
        gaps, problem = [], ""
        for p, want, keep in ((0, train, need_groups - 1), (1, val, 1)):
            if want == 0:
                gaps.append(0)
                continue
            free = [g for g in order if pool[g] == 2]
            got = taken = 0
            for g in free:
                if len(free) - taken <= keep:
                    break
                if sizes[g] < 2 * (want - got):
                    pool[g], got, taken = p, got + sizes[g], taken + 1
            single = taken == 0  # every group is at least twice the request: the smallest
            if single:
                g = free[int(np.argmin(sizes[free]))]
                pool[g], got = p, int(sizes[g])
            gaps.append(abs(got - want))
            if not (abs(got - want) <= sizes.max() // 2 or single) and not problem:
                later = "val and test" if p == 0 and val else "test"
                problem = (
                    f"split.keep_groups: whole groups give {got} {POOLS[p]} base classes "
                    f"where {want} were asked (group sizes {sorted(sizes.tolist())}), as "
                    f"one group at least must be left for {later}; lower split.train or "
                    "split.val"
                )
        score = (int(bool(problem)), gaps[0] + gaps[1], gaps[0])
        if best is None or score < best[0]:
            best = (score, pool, problem)
        if score == (0, 0, 0):
            break
    assert best is not None
    if best[2]:
        raise ConfigError(best[2])
    return best[1]


def _example_pools(
    table: pd.DataFrame, split_cfg: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    if split_cfg.get("keep_groups"):
        raise ConfigError("split.keep_groups: only used by protocol 'classes'")
    train = _fraction(split_cfg, "train", low_open=True)
    val = _fraction(split_cfg, "val", low_open=False)
    origin = split_cfg.get("test_origin")
    source, base, origins = _sources(table)
    pool = np.full(len(base), 2, dtype=np.int64)  # per source image
    if origin is None:
        if train + val >= 1:
            raise ConfigError(
                f"split.val: train + val = {train + val:g} leaves no test examples; "
                "make split.train + split.val less than 1"
            )
        rest = np.ones(len(base), dtype=bool)
    else:
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
    idx = np.flatnonzero(rest)
    cls = base[idx]
    keys = rng.random(len(idx))
    order = np.lexsort((keys, cls))  # by base class, shuffled within it
    _, inverse, counts = np.unique(cls[order], return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[inverse]
    sizes = example_pool_sizes(counts, train, val, None if origin is None else 0 * counts)
    b_train, b_val = sizes[:, 0][inverse], (sizes[:, 0] + sizes[:, 1])[inverse]
    pool[idx[order]] = np.where(rank < b_train, 0, np.where(rank < b_val, 1, 2))
    return pool[source]


def _sources(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row its source image's position; per source image its base class and origin."""
    sid = source_ids(table)
    keys, first, inverse = np.unique(sid, return_index=True, return_inverse=True)
    base = table["base_class"].to_numpy(np.int64)
    origins = table["origin"].astype(str).to_numpy()
    for name, values in (("base_class", base), ("origin", origins)):
        differs = values != values[first][inverse]
        if differs.any():
            bad = int(sid[np.flatnonzero(differs)[0]])
            raise DataError(f"source image {bad} has rows of more than one {name}")
    return inverse, base[first], origins[first]


def example_pool_sizes(
    sizes: np.ndarray, train: float, val: float, test: np.ndarray | None = None
) -> np.ndarray:
    """Examples per class and pool, ``[classes, 3]`` (train, val, test), under 'examples'.

    ``sizes``: source images per class; with ``test`` (the test origin's count per class)
    ``sizes`` counts the others only. The one place of the rounding: the config check that
    runs before any job uses it too, so both agree to the example.
    """
    n = np.asarray(sizes, dtype=np.int64)
    cut_train, cut_val = (train, train + val) if test is None else (train / (train + val), 1)
    b_train = np.floor(cut_train * n + 0.5).astype(np.int64)
    b_val = np.floor(cut_val * n + 0.5).astype(np.int64)
    last = n - b_val if test is None else np.asarray(test, dtype=np.int64)
    return np.stack([b_train, b_val - b_train, np.broadcast_to(last, n.shape)], axis=-1)


def source_ids(index: pd.DataFrame) -> np.ndarray:
    """Per row, the example id of its unrotated source image (the ``source_id`` column).

    Index files written before that column existed are derived from the layout
    ``prepare_dataset`` has always written (originals, then one block per rotation);
    any other layout fails with a message to prepare the dataset again.
    """
    if "source_id" in index.columns:
        return index["source_id"].to_numpy(np.int64)
    ids = index["example_id"].to_numpy(np.int64)
    rotation = index["rotation"].to_numpy(np.int64)
    if (rotation == 0).all():
        return ids.copy()
    order = np.argsort(ids, kind="stable")
    n = int((rotation == 0).sum())
    base = index["base_class"].to_numpy(np.int64)[order]
    layout = (
        n > 0
        and len(ids) == 4 * n
        and np.array_equal(ids[order], np.arange(4 * n))
        and np.array_equal(rotation[order], np.repeat(_ANGLES, n))
        and bool((base.reshape(4, n) == base[:n]).all())
    )
    if not layout:
        raise DataError(
            "index table lacks column 'source_id' (written by an older mamlscope) and its "
            "rows are not in prepare_dataset's layout, so rotations cannot be traced to "
            "their source images; prepare the dataset again"
        )
    return ids % n
