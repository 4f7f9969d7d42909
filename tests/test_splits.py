"""Pools and fixed episodes: the properties every method's numbers rest on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamlscope.errors import ConfigError
from mamlscope.splits import (
    check_episode_budget,
    make_episodes,
    make_pools,
    write_split,
)

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fake_index(
    groups: int = 3,
    classes_per_group: int = 4,
    per_class: int = 12,
    rotations: bool = False,
    origins: tuple[str, ...] = ("train",),
) -> pd.DataFrame:
    """A prepared-style index: base classes in groups, optional rotation classes, origins."""
    rows = []
    angles = (0, 90, 180, 270) if rotations else (0,)
    base = 0
    for g in range(groups):
        for _ in range(classes_per_group):
            for r, angle in enumerate(angles):
                for i in range(per_class):
                    rows.append(
                        {
                            "class_id": base * len(angles) + r,
                            "class_name": f"c{base}_r{angle}",
                            "base_class": base,
                            "rotation": angle,
                            "group": f"alphabet{g}",
                            "origin": origins[i % len(origins)],
                        }
                    )
            base += 1
    index = pd.DataFrame(rows)
    index.insert(0, "example_id", np.arange(len(index), dtype=np.int64))
    return index


def pool_of(index: pd.DataFrame, pools: pd.DataFrame) -> pd.DataFrame:
    return index.merge(pools, on="example_id", validate="one_to_one")


# ---------------------------------------------------------------- pools


@FAST
@given(
    groups=st.integers(2, 5),
    per_group=st.integers(1, 4),
    train=st.integers(1, 8),
    val=st.integers(0, 4),
    rotations=st.booleans(),
    keep_groups=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_class_pools_disjoint_and_whole(
    groups, per_group, train, val, rotations, keep_groups, seed
):
    index = fake_index(groups, per_group, per_class=2, rotations=rotations)
    n_base = groups * per_group
    cfg = {"protocol": "classes", "train": train, "val": val, "keep_groups": keep_groups}
    try:
        pools = make_pools(index, cfg, seed)
    except ConfigError as err:
        assert train + val >= n_base or keep_groups, err
        return
    assert pools["example_id"].tolist() == sorted(index["example_id"])
    assert set(pools["pool"]) <= {"train", "val", "test"}
    joined = pool_of(index, pools)
    # rotations of a base class, and with keep_groups whole groups, share one pool
    assert (joined.groupby("base_class")["pool"].nunique() == 1).all()
    assert (joined.groupby("class_id")["pool"].nunique() == 1).all()
    if keep_groups:
        assert (joined.groupby("group")["pool"].nunique() == 1).all()
    bases = joined.drop_duplicates("base_class")["pool"].value_counts()
    if keep_groups:
        assert bases.get("train", 0) >= train
        assert bases.get("val", 0) >= val
    else:
        assert bases.get("train", 0) == train
        assert bases.get("val", 0) == val
    assert bases.get("test", 0) >= 1


def test_keep_groups_fills_by_whole_groups_until_reached():
    index = fake_index(groups=6, classes_per_group=3)
    pools = make_pools(index, {"protocol": "classes", "train": 4, "val": 2, "keep_groups": True}, 0)
    counts = pool_of(index, pools).drop_duplicates("base_class")["pool"].value_counts()
    # 3 classes per group: train needs 2 groups (6 >= 4), val 1 group (3 >= 2), test the rest
    assert counts.to_dict() == {"train": 6, "val": 3, "test": 9}


@FAST
@given(
    per_class=st.integers(10, 30),
    train=st.floats(0.2, 0.6),
    val=st.floats(0.1, 0.3),
    seed=st.integers(0, 2**31),
)
def test_example_pools_every_class_everywhere(per_class, train, val, seed):
    index = fake_index(2, 3, per_class=per_class, rotations=True)
    pools = make_pools(index, {"protocol": "examples", "train": train, "val": val}, seed)
    assert pools["example_id"].tolist() == index["example_id"].tolist()
    joined = pool_of(index, pools)
    per_pool = joined.groupby("pool")["class_id"].nunique()
    assert per_pool.to_dict() == {p: index["class_id"].nunique() for p in ("train", "val", "test")}
    sizes = joined.groupby(["class_id", "pool"]).size().unstack()
    expected_train = np.floor(train * per_class + 0.5)
    assert (sizes["train"] == expected_train).all()


def test_example_pools_defaults_and_rounding():
    index = fake_index(1, 2, per_class=10)
    pools = make_pools(index, {"protocol": "examples"}, 3)
    sizes = pool_of(index, pools).groupby(["class_id", "pool"]).size().unstack()
    assert sizes.loc[0].to_dict() == {"test": 2, "train": 6, "val": 2}


def test_test_origin_makes_the_test_pool():
    index = fake_index(2, 2, per_class=20, origins=("train", "train", "train", "test"))
    cfg = {"protocol": "examples", "train": 0.6, "val": 0.2, "test_origin": "test"}
    joined = pool_of(index, make_pools(index, cfg, 0))
    assert (joined["pool"] == "test").eq(joined["origin"] == "test").all()
    rest = joined[joined["origin"] != "test"].groupby(["class_id", "pool"]).size().unstack()
    # 15 non-test examples per class, train share 0.6 / 0.8 = 0.75 -> round(11.25) = 11
    assert rest["train"].eq(11).all() and rest["val"].eq(4).all()


def test_pools_deterministic_and_seed_dependent():
    index = fake_index(4, 5, per_class=6, rotations=True)
    for cfg in ({"protocol": "classes", "train": 10, "val": 4}, {"protocol": "examples"}):
        a, b = make_pools(index, cfg, 7), make_pools(index, cfg, 7)
        pd.testing.assert_frame_equal(a, b)
        assert not a.equals(make_pools(index, cfg, 8))
        shuffled = index.sample(frac=1.0, random_state=1)
        pd.testing.assert_frame_equal(a, make_pools(shuffled, cfg, 7))


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({"protocol": "classes"}, ["split.train", "required"]),
        ({"protocol": "classes", "train": 2.5}, ["split.train", "2.5"]),
        ({"protocol": "classes", "train": 3, "val": 1.5}, ["split.val", "1.5"]),
        ({"protocol": "classes", "train": 13}, ["split.train", "13", "only 12"]),
        ({"protocol": "classes", "train": 12}, ["split.train", "left for test"]),
        ({"protocol": "classes", "train": 8, "val": 6}, ["split.val", "6", "4 remain", "12"]),
        ({"protocol": "classes", "train": 8, "val": 4}, ["split.val", "test"]),
        (
            {"protocol": "classes", "train": 5, "val": 4, "keep_groups": True},
            ["split.keep_groups", "none for test"],
        ),
        ({"protocol": "classes", "train": 3, "test_origin": "test"}, ["split.test_origin"]),
        ({"protocol": "examples", "train": 0}, ["split.train", "(0, 1)"]),
        ({"protocol": "examples", "train": 1.2}, ["split.train", "1.2"]),
        ({"protocol": "examples", "val": -0.1}, ["split.val", "-0.1"]),
        ({"protocol": "examples", "train": 0.7, "val": 0.3}, ["split.val", "leaves no test"]),
        ({"protocol": "examples", "keep_groups": True}, ["split.keep_groups"]),
        ({"protocol": "examples", "test_origin": "nope"}, ["split.test_origin", "'train'"]),
        ({"protocol": "bogus"}, ["split.protocol", "bogus"]),
    ],
)
def test_split_config_errors_name_the_key(cfg, words):
    index = fake_index(3, 4, per_class=4)  # 12 base classes in 3 groups of 4
    with pytest.raises(ConfigError) as err:
        make_pools(index, cfg, 0)
    for word in words:
        assert word in str(err.value)


def test_test_origin_lists_available_origins():
    index = fake_index(1, 2, per_class=4, origins=("train", "test"))
    with pytest.raises(ConfigError, match=r"split\.test_origin.*\['test', 'train'\]"):
        make_pools(index, {"protocol": "examples", "test_origin": "val"}, 0)


# ---------------------------------------------------------------- episodes


@FAST
@given(
    way=st.integers(2, 5),
    shot=st.integers(1, 3),
    query=st.integers(1, 4),
    count=st.integers(1, 12),
    seed=st.integers(0, 2**31),
    pool=st.sampled_from(["train", "val", "test"]),
)
def test_episode_properties(way, shot, query, count, seed, pool):
    index = fake_index(2, 4, per_class=24, rotations=True)  # 10 / 7 / 7 per class and pool
    pools = make_pools(index, {"protocol": "examples", "train": 0.4, "val": 0.3}, 1)
    kw = dict(way=way, shot=shot, query=query, count=count, seed=seed)
    ep = make_episodes(index, pools, pool, **kw)
    assert list(ep.columns) == ["episode", "role", "example_id", "label"]
    assert ep["episode"].dtype == np.int64 and ep["example_id"].dtype == np.int64
    assert ep["label"].dtype == np.int64
    assert len(ep) == count * way * (shot + query)
    assert ep["episode"].is_monotonic_increasing
    in_pool = set(pools.loc[pools["pool"] == pool, "example_id"])
    assert set(ep["example_id"]) <= in_pool
    cls = index.set_index("example_id")["class_id"]
    for _, e in ep.groupby("episode"):
        roles = e["role"].tolist()
        assert roles == ["support"] * (way * shot) + ["query"] * (way * query)
        assert e["example_id"].is_unique  # support and query disjoint, examples distinct
        sup, qry = e[e["role"] == "support"], e[e["role"] == "query"]
        assert sup["label"].tolist() == np.repeat(np.arange(way), shot).tolist()
        assert qry["label"].tolist() == np.repeat(np.arange(way), query).tolist()
        label_class = e.assign(c=cls.loc[e["example_id"]].to_numpy()).groupby("label")["c"]
        assert (label_class.nunique() == 1).all()  # one class per label
        assert label_class.first().is_unique  # classes of an episode distinct
    again = make_episodes(index, pools, pool, **kw)
    pd.testing.assert_frame_equal(ep, again)
    other = make_episodes(index, pools, pool, **{**kw, "seed": seed + 1})
    assert not ep.equals(other)


def test_episodes_differ_between_pools_with_one_seed():
    index = fake_index(2, 4, per_class=20)
    pools = make_pools(index, {"protocol": "examples", "train": 0.4, "val": 0.3}, 1)
    kw = dict(way=3, shot=1, query=2, count=20, seed=5)
    val = make_episodes(index, pools, "val", **kw)
    test = make_episodes(index, pools, "test", **kw)
    cls = index.set_index("example_id")["class_id"]
    assert not np.array_equal(cls.loc[val["example_id"]], cls.loc[test["example_id"]])


def test_episode_way_error_names_pool_and_count():
    index = fake_index(3, 4, per_class=20)
    pools = make_pools(index, {"protocol": "classes", "train": 8, "val": 2}, 0)
    with pytest.raises(ConfigError, match=r"episodes\.way.*5.*'val'.*only 2 classes"):
        make_episodes(index, pools, "val", way=5, shot=1, query=1, count=3, seed=0)


def test_episode_shot_error_names_need_available_and_class():
    index = fake_index(1, 4, per_class=10)
    index = index[~((index["class_id"] == 2) & (index["example_id"] % 10 >= 7))]  # class 2: 7
    pools = pd.DataFrame({"example_id": index["example_id"], "pool": "test"})
    with pytest.raises(ConfigError) as err:
        make_episodes(index, pools, "test", way=2, shot=3, query=5, count=3, seed=0)
    msg = str(err.value)
    for word in ("episodes.shot", "episodes.query", "8", "class 2", "'test'", "only 7"):
        assert word in msg


def test_check_episode_budget_checks_train_and_skips_empty_val():
    index = fake_index(3, 4, per_class=20)
    pools = make_pools(index, {"protocol": "classes", "train": 3, "val": 0}, 0)
    check_episode_budget(index, pools, {"way": 3, "shot": 1})
    with pytest.raises(ConfigError, match=r"episodes\.way.*'train'.*only 3"):
        check_episode_budget(index, pools, {"way": 4, "shot": 1})
    with pytest.raises(ConfigError, match=r"episodes\.shot"):
        check_episode_budget(index, pools, {"way": 2, "shot": 10, "query": 11})
    with pytest.raises(ConfigError, match=r"episodes\.way: required"):
        check_episode_budget(index, pools, {"shot": 1})


# ---------------------------------------------------------------- write_split


def test_write_split_writes_the_three_tables(tmp_path):
    index = fake_index(3, 4, per_class=20, rotations=True)
    split = {"protocol": "classes", "train": 6, "val": 3, "keep_groups": False}
    episodes = {"way": 5, "shot": 1, "query": 5, "val_episodes": 7, "test_episodes": 9}
    out = tmp_path / "split" / "seed3"
    write_split(index, split, episodes, 3, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "episodes_test.parquet",
        "episodes_val.parquet",
        "pools.parquet",
    ]
    pools = pd.read_parquet(out / "pools.parquet")
    pd.testing.assert_frame_equal(pools, make_pools(index, split, 3), check_dtype=False)
    assert pools["example_id"].dtype == np.int64
    val = pd.read_parquet(out / "episodes_val.parquet")
    test = pd.read_parquet(out / "episodes_test.parquet")
    assert val["episode"].nunique() == 7 and test["episode"].nunique() == 9
    for table in (val, test):
        assert list(table.columns) == ["episode", "role", "example_id", "label"]
        assert all(table[c].dtype == np.int64 for c in ("episode", "example_id", "label"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["seed3"]  # no temp leftovers


def test_write_split_empty_val_pool_gives_empty_table(tmp_path):
    index = fake_index(3, 4, per_class=20)
    write_split(
        index, {"protocol": "classes", "train": 6}, {"way": 3, "shot": 1}, 0, tmp_path / "s"
    )
    val = pd.read_parquet(tmp_path / "s" / "episodes_val.parquet")
    assert len(val) == 0 and list(val.columns) == ["episode", "role", "example_id", "label"]
    assert len(pd.read_parquet(tmp_path / "s" / "episodes_test.parquet")) == 600 * 3 * 16


@pytest.mark.parametrize(
    ("split", "episodes"),
    [
        ({"protocol": "classes", "train": 20}, {"way": 2, "shot": 1}),
        ({"protocol": "classes", "train": 6, "val": 2}, {"way": 3, "shot": 1}),
        ({"protocol": "examples"}, {"way": 2, "shot": 10}),
    ],
)
def test_write_split_leaves_no_folder_when_checks_fail(tmp_path, split, episodes):
    index = fake_index(3, 4, per_class=20)
    out = tmp_path / "split" / "seed0"
    with pytest.raises(ConfigError):
        write_split(index, split, episodes, 0, out)
    assert not out.exists()
    assert not (tmp_path / "split").exists() or not any((tmp_path / "split").iterdir())
