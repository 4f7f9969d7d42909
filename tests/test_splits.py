"""Pools and fixed episodes: the properties every method's numbers rest on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamlscope.config import validate_config
from mamlscope.data.pools import choose_groups
from mamlscope.data.prepared import build_index
from mamlscope.data.sources import RawDataset
from mamlscope.data.splits import (
    check_episode_budget,
    make_episodes,
    make_pools,
    write_split,
)
from mamlscope.errors import ConfigError, DataError

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validated(split: dict, episodes: dict | None = None) -> tuple[dict, dict]:
    """``split`` and ``episodes`` with the schema's defaults, as the workflow passes them."""
    ds = {"source": "imagefolder", "path": "x", "split": split}
    ds["episodes"] = episodes or {"way": 2, "shot": 1}
    out = validate_config({"datasets": {"d": ds}}, check_paths=False)["datasets"]["d"]
    return out["split"], out["episodes"]


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
                            "drawing": (base, i),
                        }
                    )
            base += 1
    index = pd.DataFrame(rows)
    index.insert(0, "example_id", np.arange(len(index), dtype=np.int64))
    # rows interleave rotations (unlike prepare_dataset): source_id must not rely on layout
    first = index.groupby("drawing", sort=False)["example_id"].transform("min")
    return index.drop(columns="drawing").assign(source_id=first.to_numpy(np.int64))


def grouped_index(sizes: list[int], per_class: int = 2) -> pd.DataFrame:
    """One group per entry of ``sizes`` with that many base classes."""
    parts, base = [], 0
    for g, n in enumerate(sizes):
        part = fake_index(1, n, per_class=per_class)
        part["base_class"] += base
        part["class_id"] += base
        part["group"] = f"g{g:02d}"
        parts.append(part)
        base += n
    index = pd.concat(parts, ignore_index=True)
    index["example_id"] = np.arange(len(index), dtype=np.int64)
    index["source_id"] = index["example_id"]
    return index


def leaked_drawings(index: pd.DataFrame, pools: pd.DataFrame) -> float:
    """Fraction of source images with copies (rotations) in more than one pool."""
    joined = pool_of(index, pools)
    return float((joined.groupby("source_id")["pool"].nunique() > 1).mean())


EXAMPLES = {"protocol": "examples", "train": 0.6, "val": 0.2}


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
    if keep_groups:  # groups of per_group classes: within half a group, or one group
        for pool, want in (("train", train), ("val", val)):
            got = bases.get(pool, 0)
            assert abs(got - want) <= max(per_group // 2, per_group - want), (pool, got, want)
    else:
        assert bases.get("train", 0) == train
        assert bases.get("val", 0) == val
    assert bases.get("test", 0) >= 1


VARIED = [40, 40, 40, 40, 3, 5, 2, 6, 4, 7, 1, 9]  # base classes per group


def base_counts(index: pd.DataFrame, pools: pd.DataFrame) -> dict[str, int]:
    counts = pool_of(index, pools).drop_duplicates("base_class")["pool"].value_counts()
    return {p: int(counts.get(p, 0)) for p in ("train", "val", "test")}


@pytest.mark.parametrize(("train", "val"), [(60, 10), (100, 20), (45, 5), (30, 12), (150, 20)])
def test_keep_groups_lands_within_the_documented_tolerance(train, val):
    index = grouped_index(VARIED)
    cfg = {"protocol": "classes", "train": train, "val": val, "keep_groups": True}
    tolerance = max(VARIED) // 2  # make_pools: within half the largest group
    for seed in range(12):
        pools = make_pools(index, cfg, seed)
        got = base_counts(index, pools)
        assert abs(got["train"] - train) <= tolerance, (seed, got)
        assert abs(got["val"] - val) <= tolerance, (seed, got)
        assert got["test"] >= 1
        assert (pool_of(index, pools).groupby("group")["pool"].nunique() == 1).all()
    # here small groups allow landing (almost) exactly: no whole 40-class group overshoot
    got = base_counts(index, make_pools(index, {**cfg, "train": 60, "val": 10}, 0))
    assert (got["train"], got["val"]) == (60, 10)


def test_keep_groups_is_deterministic_per_seed_and_varies_across_seeds():
    sizes = np.array(VARIED)
    a = choose_groups(sizes, 45, 5, np.random.default_rng(3))
    b = choose_groups(sizes, 45, 5, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    draws = {tuple(choose_groups(sizes, 45, 5, np.random.default_rng(s))) for s in range(8)}
    assert len(draws) > 1


def test_keep_groups_takes_the_smallest_group_when_all_are_too_big():
    index = grouped_index([6, 9, 7, 8])
    cfg = {"protocol": "classes", "train": 2, "val": 1, "keep_groups": True}
    got = base_counts(index, make_pools(index, cfg, 0))
    assert (got["train"], got["val"]) == (6, 7)  # documented: the smallest group left


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
    split, _ = validated({"protocol": "examples"})  # the defaults come from the schema
    pools = make_pools(index, split, 3)
    sizes = pool_of(index, pools).groupby(["class_id", "pool"]).size().unstack()
    assert sizes.loc[0].to_dict() == {"test": 2, "train": 6, "val": 2}


def prepared_index(classes: int = 6, per_class: int = 10, rotations: bool = True) -> pd.DataFrame:
    """An index exactly as prepare_dataset builds it (originals, then rotation blocks)."""
    n = classes * per_class
    names = [f"c{i % classes}" for i in range(n)]
    origins = ["train" if i % 5 else "test" for i in range(n)]
    raw = RawDataset(np.zeros((n, 1, 2, 2), np.uint8), names, list(names), origins)
    return build_index(raw, rotations)


@pytest.mark.parametrize("kind", ["prepared", "interleaved"])
@pytest.mark.parametrize("split", [EXAMPLES, {**EXAMPLES, "test_origin": "test"}])
def test_examples_protocol_keeps_every_rotation_of_a_drawing_in_one_pool(kind, split):
    index = prepared_index() if kind == "prepared" else fake_index(2, 3, 10, rotations=True)
    if kind == "interleaved":
        index["origin"] = np.where(index["source_id"] % 5 == 0, "test", "train")
    for seed in range(5):
        pools = make_pools(index, split, seed)
        assert leaked_drawings(index, pools) == 0.0
        joined = pool_of(index, pools)
        # a rotated class has exactly the pool membership (by source image) of its base
        members = joined.groupby(["class_id", "pool"])["source_id"].apply(frozenset)
        base = joined.drop_duplicates("class_id").set_index("class_id")["base_class"]
        upright = joined[joined["rotation"] == 0].groupby("base_class")["class_id"].first()
        for (cls, pool), sources in members.items():
            assert sources == members[(upright[base[cls]], pool)]
        # per-class counts as before: round(train * n) of each class's 10 examples
        sizes = joined.groupby(["class_id", "pool"]).size().unstack()
        if split.get("test_origin") is None:
            assert sizes["train"].eq(6).all() and sizes["val"].eq(2).all()
        else:  # 2 test drawings a class; 8 others cut at round(0.75 * 8) = 6
            assert sizes["test"].eq(2).all() and sizes["train"].eq(6).all()


def test_index_without_source_id_derives_it_from_the_prepared_layout():
    for rotations in (True, False):
        index = prepared_index(rotations=rotations)
        old = index.drop(columns="source_id")  # an index file from before source_id
        for seed in range(3):
            pools = make_pools(old, EXAMPLES, seed)
            pd.testing.assert_frame_equal(pools, make_pools(index, EXAMPLES, seed))
            assert leaked_drawings(index, pools) == 0.0


def test_index_without_source_id_in_another_layout_fails_clearly():
    old = fake_index(2, 2, 4, rotations=True).drop(columns="source_id")
    with pytest.raises(DataError, match=r"lacks column 'source_id'.*prepare the dataset again"):
        make_pools(old, EXAMPLES, 0)
    make_pools(old, {"protocol": "classes", "train": 2, "val": 1}, 0)  # not needed there


def test_source_image_spanning_base_classes_is_rejected():
    index = fake_index(1, 2, 4)
    index.loc[index["base_class"] == 1, "source_id"] = 0
    with pytest.raises(DataError, match="source image 0 has rows of more than one base_class"):
        make_pools(index, EXAMPLES, 0)


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
    for cfg in ({"protocol": "classes", "train": 10, "val": 4}, validated(EXAMPLES)[0]):
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
        ({"protocol": "classes", "train": 13, "val": 0}, ["split.train", "13", "only 12"]),
        ({"protocol": "classes", "train": 12, "val": 0}, ["split.train", "left for test"]),
        ({"protocol": "classes", "train": 3}, ["split.val", "required"]),
        ({"protocol": "classes", "train": 8, "val": 6}, ["split.val", "6", "4 remain", "12"]),
        ({"protocol": "classes", "train": 8, "val": 4}, ["split.val", "test"]),
        (
            {"protocol": "classes", "train": 11, "val": 0, "keep_groups": True},
            ["split.keep_groups", "give 8 train", "11 were asked", "left for test"],
        ),
        (
            {"protocol": "classes", "train": 9, "val": 2, "keep_groups": True},
            ["split.keep_groups", "4 train", "left for val and test"],
        ),
        ({"protocol": "classes", "train": 3, "test_origin": "test"}, ["split.test_origin"]),
        ({"protocol": "examples", "train": 0}, ["split.train", "(0, 1)"]),
        ({"protocol": "examples", "train": 1.2}, ["split.train", "1.2"]),
        ({"protocol": "examples", "train": 0.6, "val": -0.1}, ["split.val", "-0.1"]),
        ({"protocol": "examples", "val": 0.2}, ["split.train", "required"]),
        ({"protocol": "examples", "train": 0.7, "val": 0.3}, ["split.val", "leaves no test"]),
        ({"protocol": "examples", "keep_groups": True}, ["split.keep_groups"]),
        ({**EXAMPLES, "test_origin": "nope"}, ["split.test_origin", "'train'"]),
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
        make_pools(index, {**EXAMPLES, "test_origin": "val"}, 0)


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
    check_episode_budget(index, pools, {"way": 3, "shot": 1, "query": 15})
    with pytest.raises(ConfigError, match=r"episodes\.way.*'train'.*only 3"):
        check_episode_budget(index, pools, {"way": 4, "shot": 1, "query": 15})
    with pytest.raises(ConfigError, match=r"episodes\.shot"):
        check_episode_budget(index, pools, {"way": 2, "shot": 10, "query": 11})
    with pytest.raises(ConfigError, match=r"episodes\.way: required"):
        check_episode_budget(index, pools, {"shot": 1, "query": 15})
    with pytest.raises(ConfigError, match=r"episodes\.query: required"):
        check_episode_budget(index, pools, {"way": 2, "shot": 1})


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
    split, episodes = validated({"protocol": "classes", "train": 6}, {"way": 3, "shot": 1})
    write_split(index, split, episodes, 0, tmp_path / "s")
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
        write_split(index, *validated(split, episodes), 0, out)
    assert not out.exists()
    assert not (tmp_path / "split").exists() or not any((tmp_path / "split").iterdir())


# ---------------------------------------------------------------- real Omniglot


@pytest.fixture(scope="module")
def omniglot_small(shared_data) -> pd.DataFrame:
    """The index of config/omniglot-small.yaml's data: small1 + small2, with rotations."""
    from mamlscope.data.sources import read_source

    cfg = {
        "source": "omniglot",
        "root": str(shared_data / "omniglot"),
        "download": False,
        "sets": ["images_background_small1", "images_background_small2"],
        "image_size": 8,
    }
    return build_index(read_source(cfg, show_progress=False), rotations=True)


@pytest.mark.realdata
def test_real_omniglot_examples_split_leaks_no_drawing(omniglot_small):
    pools = make_pools(omniglot_small, EXAMPLES, 0)
    assert leaked_drawings(omniglot_small, pools) == 0.0  # was 86.5% before source_id
    sizes = pool_of(omniglot_small, pools).groupby(["class_id", "pool"]).size().unstack()
    assert sizes["train"].eq(12).all() and sizes["val"].eq(4).all()  # of 20 drawings


@pytest.mark.realdata
def test_real_omniglot_keep_groups_lands_close(omniglot_small):
    groups = omniglot_small.drop_duplicates("base_class")["group"].value_counts()
    tolerance = int(groups.max()) // 2
    cfg = {"protocol": "classes", "train": 160, "val": 20, "keep_groups": True}
    for seed in range(5):
        got = base_counts(omniglot_small, make_pools(omniglot_small, cfg, seed))
        assert abs(got["train"] - 160) <= tolerance and abs(got["val"] - 20) <= tolerance
        assert abs(got["train"] - 160) + abs(got["val"] - 20) <= 4, got  # 47 val before
