"""Numbers a config cannot hold: NaN and infinity anywhere, counts past what fits in memory,
keys that contradict each other, and Omniglot episode shapes its sets cannot give, all
refused by the config check (what `snakemake -n` runs) with one line naming the key."""

from __future__ import annotations

import copy
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_tools import refused
from workflow_tools import copy_workflow, snakemake

from mamlscope.config import validate_config
from mamlscope.config_checks import MAX_EPISODE_ROWS
from mamlscope.data.readers import omniglot
from mamlscope.data.sources import read_source
from mamlscope.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())
NAN, INF = float("nan"), float("inf")


def tiny(**changes: Any) -> dict[str, Any]:
    """tests/tiny.yaml with the dotted keys set, e.g. ``{"maml.inner_lr": 0.1}``; a key
    under ``ds.`` is one of its dataset's."""
    cfg = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.replace("ds.", "datasets.digits8.").split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


# --- NaN and infinity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        (
            {"ds.normalize": {"mean": [NAN], "std": [1.0]}},
            "datasets.digits8.normalize.mean[0]: must be a finite number, got nan",
        ),
        (
            {"ds.normalize": {"mean": [0.5], "std": [INF]}},
            "datasets.digits8.normalize.std[0]: must be a finite number, got inf",
        ),
        ({"maml.inner_lr": NAN}, "maml.inner_lr: must be a finite number, got nan"),
        ({"maml.meta_lr": -INF}, "maml.meta_lr: must be a finite number, got -inf"),
        ({"baseline.lr": NAN}, "baseline.lr: must be a finite number, got nan"),
        ({"baseline.finetune_lr": INF}, "baseline.finetune_lr: must be a finite number, got inf"),
        ({"baseline.betas": [0.9, NAN]}, "baseline.betas[1]: must be a finite number, got nan"),
        ({"ds.maml": {"inner_lr": NAN}}, "datasets.digits8.maml.inner_lr: must be a finite"),
        ({"ds.split.train": NAN}, "datasets.digits8.split.train: must be a finite number"),
        ({"resume_every_seconds": INF}, "resume_every_seconds: must be a finite number, got inf"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_key(changes, line):
    message = refused(tiny(**changes))
    assert message.startswith(line)
    assert "\n" not in message  # one line, however deep the key


def test_the_schema_alone_lets_nan_through():
    """Why the walk is needed: minimum/maximum compare, and comparisons with NaN are false."""
    import jsonschema

    assert jsonschema.Draft202012Validator({"type": "number", "exclusiveMinimum": 0}).is_valid(NAN)


@pytest.mark.parametrize(
    ("normalize", "key"),
    [
        ({"mean": [0.5], "std": [0.0]}, "normalize.std.0"),
        ({"mean": [0.5], "std": [1e6]}, "normalize.std.0"),  # pixels shrunk to nothing
        ({"mean": [0.5], "std": [1e-6]}, "normalize.std.0"),
        ({"mean": [1.5], "std": [0.5]}, "normalize.mean.0"),  # pixels lie in [0, 1]
    ],
)
def test_normalize_outside_its_range_is_refused(normalize, key):
    assert f"datasets.digits8.{key}" in refused(tiny(**{"ds.normalize": normalize}))


def test_normalize_within_range_passes():
    validate_config(tiny(**{"ds.normalize": {"mean": [0.1307], "std": [0.3081]}}))


# --- upper bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "largest", "shown"),
    [
        ("ds.episodes.test_episodes", 100_000, "datasets.digits8.episodes.test_episodes"),
        ("ds.episodes.val_episodes", 100_000, "datasets.digits8.episodes.val_episodes"),
        ("maml.meta_batch", 1024, "maml.meta_batch"),
        ("maml.inner_steps", 100, "maml.inner_steps"),
        ("maml.test_inner_steps", 1000, "maml.test_inner_steps"),
        ("maml.eval_batch", 1000, "maml.eval_batch"),
        ("maml.meta_steps", 1_000_000, "maml.meta_steps"),
        ("baseline.epochs", 10_000, "baseline.epochs"),
        ("baseline.batch_size", 65_536, "baseline.batch_size"),
        ("features.probe_images", 10_000, "features.probe_images"),
        ("features.adapt_episodes", 1000, "features.adapt_episodes"),
    ],
)
def test_counts_have_an_upper_bound(key, largest, shown):
    validate_config(tiny(**{key: largest}), check_paths=False)
    message = refused(tiny(**{key: largest + 1}))
    assert f"{shown}: {largest + 1} is greater than the maximum of {largest}" in message


def test_seeds_are_bounded_in_number_and_value():
    validate_config(tiny(seeds=[0, 2**31 - 1]), check_paths=False)
    assert "seeds.1: 2147483648 is greater than the maximum" in refused(tiny(seeds=[0, 2**31]))
    message = refused(tiny(seeds=list(range(101))))
    assert "seeds: 101 items, more than the maximum of 100" in message
    assert "99, 100" not in message  # not the whole list back


def test_every_count_in_the_schema_has_a_maximum():
    """A new integer key gets its bound (or a reason here why it needs none)."""
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    unbounded = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            types = node.get("type")
            types = types if isinstance(types, list) else [types]
            if "integer" in types and "maximum" not in node:
                unbounded.append(path)
            for key, value in node.items():
                walk(value, f"{path}.{key}")

    walk(schema, "")
    # A trigger (larger only means never) and a unit (checked against its layer's width).
    assert sorted(unbounded) == [
        ".$defs.maml.properties.val_every",
        ".properties.features.properties.neurons.items.properties.unit",
        ".properties.resume_every_steps",
    ]


def test_episode_tables_must_fit_in_memory():
    # a tree of the user's own (no known counts): episodes of 100 x (100 + 100) images
    def config(test_episodes: int) -> dict[str, Any]:
        episodes = {"way": 100, "shot": 100, "query": 100, "test_episodes": test_episodes}
        split = {"protocol": "classes", "train": 3}
        ds = {"source": "imagefolder", "path": "x", "split": split, "episodes": episodes}
        return {"datasets": {"d": ds}}

    assert (900 + 100) * 100 * 200 == MAX_EPISODE_ROWS
    validate_config(config(900), check_paths=False)
    message = refused(config(901))
    assert message.startswith("datasets.d.episodes: (test_episodes + val_episodes)")
    assert "= 20,020,000 episode rows" in message and "episodes.test_episodes" in message


# --- keys read together -----------------------------------------------------------------------


def test_extremes_larger_than_the_probe_fail_naming_both_keys():
    probe = TINY["features"]["probe_images"]
    validate_config(tiny(**{"features.extremes": probe}), check_paths=False)
    message = refused(tiny(**{"features.extremes": probe + 1}))
    assert message.startswith(f"features.extremes: {probe + 1} most and least activating")
    assert f"features.probe_images is only {probe}" in message


# --- Omniglot: the official sets' character counts --------------------------------------------


def omniglot_ds(sets: list[str] | None, split: dict, way: int, **extra: Any) -> dict[str, Any]:
    ds = {"source": "omniglot", "split": split, "episodes": {"way": way, "shot": 1, "query": 1}}
    return {"datasets": {"o": {**ds, "sets": sets, **extra}}}


SMALL = ["images_background_small1", "images_background_small2"]


def test_official_character_counts_and_their_union():
    assert omniglot.characters(["images_background", "images_evaluation"]) == 1623
    assert omniglot.characters(["images_background_small1"]) == 136
    assert omniglot.characters(SMALL) == 136 + 156 - 50  # Greek and Latin in both
    assert omniglot.characters(["images_background", *SMALL]) == 964  # subsets of it
    assert omniglot.characters(["images_custom"]) is None


def test_small_set_counts_match_the_official_archives(shared_data: Path):
    for name, alphabets in omniglot.SMALL_ALPHABETS.items():
        with zipfile.ZipFile(shared_data / "omniglot" / f"{name}.zip") as archive:
            pngs = [m.split("/") for m in archive.namelist() if m.endswith(".png")]
        drawings = Counter((p[-3], p[-2]) for p in pngs)
        assert Counter(a for a, _ in drawings) == alphabets
        assert set(drawings.values()) == {omniglot.DRAWINGS}


@pytest.mark.parametrize(
    ("sets", "split", "way", "fragments"),
    [
        # the default sets: 10 train classes cannot give a 60-way episode
        (
            None,
            {"protocol": "classes", "train": 10},
            60,
            ["datasets.o.episodes.way: 60", "pool 'train' will have only 10"],
        ),
        (
            ["images_background_small1"],
            {"protocol": "classes", "train": 100, "val": 10},
            30,
            ["pool 'val' will have only 10", "10 characters of omniglot sets"],
        ),
        (
            SMALL,
            {"protocol": "examples"},
            243,
            ["pool 'train' will have only 242 classes", "242 characters"],
        ),
        (
            ["images_background_small1"],
            {"protocol": "classes", "train": 100, "val": 36},
            5,
            ["datasets.o.split.train: 100 train + 36 val classes leave no test", "136"],
        ),
        (  # whole alphabets per pool: only the total is known
            SMALL,
            {"protocol": "classes", "train": 100, "keep_groups": True},
            243,
            ["the sets have only 242 classes"],
        ),
    ],
)
def test_omniglot_way_beyond_a_pool_fails_before_any_job(sets, split, way, fragments):
    message = refused(omniglot_ds(sets, split, way))
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("sets", "split", "way", "extra"),
    [
        (["images_background_small1"], {"protocol": "classes", "train": 100, "val": 10}, 10, {}),
        # 10 val characters x 4 rotations
        (
            ["images_background_small1"],
            {"protocol": "classes", "train": 100, "val": 10},
            40,
            {"rotations": True},
        ),
        (SMALL, {"protocol": "examples"}, 242, {}),
        (SMALL, {"protocol": "examples", "val": 0}, 242, {}),
        # a set of the user's own: the split job counts its pools
        (["images_custom"], {"protocol": "classes", "train": 10}, 60, {}),
    ],
)
def test_omniglot_way_within_the_pools_passes(sets, split, way, extra):
    validate_config(omniglot_ds(sets, split, way, **extra), check_paths=False)


def write_tree(folder: Path, characters: dict[str, int], drawings: int = 20) -> None:
    """ALPHABET/characterNN/*.png whose PNG bytes are not images: reading stops at the
    index, or the decoder would name a file."""
    for alphabet, count in characters.items():
        for c in range(1, count + 1):
            char = folder / alphabet / f"character{c:02d}"
            char.mkdir(parents=True)
            for d in range(drawings):
                (char / f"{c:04d}_{d + 1:02d}.png").write_bytes(b"not a png")


def test_partial_official_folder_fails_at_its_index_before_decoding(tmp_path: Path):
    name = "images_background_small1"
    write_tree(tmp_path / name, {"Greek": 24, "Latin": 26})
    cfg = {"source": "omniglot", "root": str(tmp_path), "sets": [name], "download": False}
    with pytest.raises(DataError) as info:
        read_source(cfg, show_progress=False)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name}: holds 50 characters")
    assert "has 136 characters" in message and "download: true" not in message


def test_official_folder_with_a_drawing_missing_names_the_character(tmp_path: Path):
    name = "images_background_small2"
    write_tree(tmp_path / name, omniglot.SMALL_ALPHABETS[name])
    next((tmp_path / name / "Tagalog" / "character03").iterdir()).unlink()
    cfg = {"source": "omniglot", "root": str(tmp_path), "sets": [name], "download": False}
    with pytest.raises(DataError, match=r"1 without 20 drawings, e\.g\. Tagalog/character03"):
        read_source(cfg, show_progress=False)


@pytest.mark.parametrize("exists", [True, False])
def test_missing_set_with_download_true_says_what_is_missing_and_where(tmp_path, exists):
    root = tmp_path / ("omniglot" if exists else "nowhere")
    if exists:
        root.mkdir()
    cfg = {"source": "omniglot", "root": str(root), "sets": SMALL[:1], "download": True}
    with pytest.raises(DataError) as info:
        read_source(cfg, show_progress=False)
    message = str(info.value)
    assert "set download: true" not in message
    assert f"images_background_small1.zip, images_background_small1/ in {root}" in message
    assert "download is true, but these files are not downloaded automatically" in message
    assert ("no such folder" in message) is not exists


def test_missing_set_that_cannot_be_downloaded_fails_at_the_config_check(tmp_path: Path):
    cfg = omniglot_ds(SMALL, {"protocol": "examples"}, 5, root=str(tmp_path), download=True)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, check_paths=True)
    message = str(info.value)
    assert message.startswith(f"datasets.o.sets: images_background_small1 is not in {tmp_path}")
    assert "download fetches only images_background and images_evaluation" in message
    (tmp_path / "omniglot-py" / SMALL[0]).mkdir(parents=True)
    (tmp_path / f"{SMALL[1]}.zip").touch()
    validate_config(cfg, check_paths=True)


# --- snakemake -n -----------------------------------------------------------------------------


@pytest.mark.workflow
def test_dry_run_stops_on_a_nan_normalize(tmp_path: Path):
    workdir = copy_workflow(tmp_path)
    cfg = tiny(**{"ds.normalize": {"mean": [NAN], "std": [1.0]}})
    (workdir / "nan.yaml").write_text(yaml.safe_dump(cfg))  # written as `.nan`
    assert ".nan" in (workdir / "nan.yaml").read_text()
    result = snakemake("-n", "--cores", "1", "--configfile", "nan.yaml", cwd=workdir)
    assert result.returncode != 0
    line = "datasets.digits8.normalize.mean[0]: must be a finite number, got nan"
    assert line in result.stdout + result.stderr
    assert not (workdir / "results").exists()
