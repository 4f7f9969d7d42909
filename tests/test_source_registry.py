"""Sources as plug-ins: the registry, each source's declared keys and counts, config checks,
and a source of a user's own package registered by an entry point, prepared and validated
without editing mamlscope."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
from plugin_tools import forget_package, install_distribution
from source_checks import check_declared_counts

from mamlscope.config import load_schema, validate_config
from mamlscope.data.prepared import PreparedDataset, prepare_dataset
from mamlscope.data.readers import (
    GROUP,
    SOURCE_KEYS,
    RawDataset,
    SourceEntry,
    clear,
    source_entry,
    source_names,
)
from mamlscope.data.sources import read_source
from mamlscope.errors import ConfigError, DataError
from mamlscope.plugins import PluginError

BUILT_IN = ("cifar10", "digits", "imagefolder", "mnist", "mnist5k", "omniglot")


def dataset(**keys) -> dict:
    episodes = {"way": 5, "shot": 1, "query": 3}  # fits every built-in's known counts
    base = {"source": "digits", "split": {"protocol": "examples"}, "episodes": episodes}
    return {"datasets": {"d": {**base, **keys}}}


def test_every_built_in_source_is_one_registered_module() -> None:
    assert source_names()[: len(BUILT_IN)] == BUILT_IN
    for name in BUILT_IN:
        entry = source_entry(name)
        assert entry.name == name and entry.description
        assert type(entry).__module__ == "mamlscope.data.readers.base"
        assert entry.read.__module__ == f"mamlscope.data.readers.{name}"
        assert set(entry.keys) <= set(SOURCE_KEYS)


def test_the_schema_accepts_exactly_the_registered_sources() -> None:
    assert load_schema()["$defs"]["dataset"]["properties"]["source"]["enum"] == list(source_names())


def test_an_unknown_source_lists_the_registered_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown source 'imagenet'.*'mnist5k'.*mamlscope\.sources"
    ):
        source_entry("imagenet")
    with pytest.raises(ConfigError, match="source: required"):
        read_source({"image_size": 8}, show_progress=False)


def test_an_entry_names_only_keys_a_source_may_read() -> None:
    with pytest.raises(PluginError, match=r"keys \['colour'\].*choose from"):
        SourceEntry(name="x", read=read_source, description="", keys=("path", "colour"))
    with pytest.raises(PluginError, match="non-empty name"):
        SourceEntry(name="", read=read_source, description="")
    assert SourceEntry(name="x", read=read_source, description="", keys=["path"]).keys == ("path",)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"sets": ["train"]},
            r"datasets\.d\.sets: not read by source 'digits' \(only by cifar10, mnist, omniglot\)",
        ),
        ({"path": "x"}, r"datasets\.d\.path: not read by source 'digits' \(only by imagefolder\)"),
        (
            {"source": "mnist5k", "download": False},
            r"datasets\.d\.download: not read by source 'mnist5k'",
        ),
        (
            {"source": "imagefolder", "path": "x", "test_images": "t"},
            r"test_images: not read .*only by mnist5k",
        ),
        ({"source": "omniglot", "levels": 2}, r"levels: not read by source 'omniglot'"),
        (
            {"source": "mnist", "sets": ["train", "val"]},
            r"datasets\.d\.sets: \['val'\] not available",
        ),
        ({"source": "cifar10", "sets": ["extra"]}, r"datasets\.d\.sets: \['extra'\]"),
        ({"source": "imagefolder"}, r"datasets\.d\.path: required for source 'imagefolder'"),
    ],
)
def test_a_key_the_source_does_not_read_is_refused(keys, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(dataset(**keys), check_paths=False)


def test_keys_a_source_reads_pass_and_defaults_anywhere() -> None:
    validate_config(dataset(source="mnist", sets=["test"], download=False), check_paths=False)
    validate_config(dataset(download=True, levels=1, checksums={}), check_paths=False)


def test_each_sources_own_paths_are_checked(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    for source in ("mnist", "cifar10", "omniglot"):
        with pytest.raises(ConfigError, match=r"datasets\.d\.root: path does not exist"):
            validate_config(dataset(source=source, root=missing, download=False))
        validate_config(dataset(source=source, root=missing))  # it will be downloaded there
    with pytest.raises(ConfigError, match=r"datasets\.d\.path: path does not exist"):
        validate_config(dataset(source="imagefolder", path=missing))
    with pytest.raises(ConfigError, match=r"datasets\.d\.test_images: path does not exist"):
        validate_config(dataset(source="mnist5k", test_images=missing))


@pytest.mark.parametrize(
    "cfg",
    [{"source": "digits"}, {"source": "mnist5k"}],
    ids=["digits", "mnist5k"],
)
@pytest.mark.slow
def test_declared_counts_are_what_the_offline_sources_hold(cfg) -> None:
    check_declared_counts(cfg, read_source({**cfg, "image_size": 8}, show_progress=False))


# --- a plug-in source ------------------------------------------------------------------------

PLUGIN = '''
"""stripes: 3 classes of striped images, 4 `train` and 2 `test` images a class."""

import numpy as np

from mamlscope.data.readers import RawDataset, SourceEntry, fixed_examples
from mamlscope.errors import ConfigError

SETS = ("train", "test")


def read(cfg, data_root, show):
    size, channels = cfg["image_size"], cfg["channels"]
    images, names, origins = [], [], []
    for origin, per_class in (("train", 4), ("test", 2)):
        if origin not in (cfg["sets"] or SETS):
            continue
        for k in range(3):
            for i in range(per_class):
                rows = (np.arange(size) + i) % (k + 2) == 0
                image = np.zeros((channels, size, size), np.uint8)
                image[:, rows, :] = 255
                images.append(image)
                names.append(f"period{k + 2}")
                origins.append(origin)
    return RawDataset(np.stack(images), names, list(names), origins)


def check(ds, where, check_paths):
    bad = [s for s in ds["sets"] or () if s not in SETS]
    if bad:
        raise ConfigError(f"{where}.sets: {bad} not in stripes; choose from {list(SETS)}")


SOURCE = SourceEntry(
    name="stripes",
    read=read,
    description="3 classes of striped images",
    keys=("sets",),
    classes=3,
    examples=fixed_examples({"train": (4, 4, 4), "test": (2, 2, 2)}),
    check=check,
)
'''


@pytest.fixture
def stripes(tmp_path, monkeypatch):
    """``my_sources.stripes`` installed with an entry point in group ``mamlscope.sources``."""
    package = tmp_path / "plugin" / "my_sources"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stripes.py").write_text(PLUGIN)
    install_distribution(
        package.parent, "my-sources", f"[{GROUP}]\nstripes = my_sources.stripes:SOURCE\n"
    )
    monkeypatch.syspath_prepend(str(package.parent))
    clear()
    yield "stripes"
    forget_package("my_sources")
    monkeypatch.undo()
    clear()


def test_a_plugged_source_is_prepared_and_validated(stripes, tmp_path) -> None:
    assert source_names() == (*BUILT_IN, stripes)  # the built-ins first
    cfg = {"source": stripes, "image_size": 6, "rotations": True}
    out = prepare_dataset("s", cfg, tmp_path / "out", show_progress=False)
    data = PreparedDataset.load(out)
    assert data.meta["source"] == stripes and data.meta["num_base_classes"] == 3
    assert data.num_classes == 12 and len(data) == 4 * 18
    originals = data.index[data.index["rotation"] == 0]
    assert originals["origin"].value_counts().to_dict() == {"train": 12, "test": 6}
    raw = read_source(cfg, show_progress=False)
    np.testing.assert_array_equal(np.asarray(data.images[:18]), raw.images)
    check_declared_counts(cfg, raw)

    split = {"protocol": "examples", "train": 0.5, "val": 0, "test_origin": "test"}
    ok = dataset(source=stripes, split=split, episodes={"way": 3, "shot": 1, "query": 1})
    assert validate_config(ok)["datasets"]["d"]["source"] == stripes


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"sets": ["val"]}, r"datasets\.d\.sets: \['val'\] not in stripes"),  # its own check
        ({"path": "x"}, r"datasets\.d\.path: not read by source 'stripes'"),
        # its declared classes: 2 train classes leave 1 for the test pool
        ({"split": {"protocol": "classes", "train": 2}}, r"pool 'test' will have only 1"),
        # its declared examples: 6 a class (4 train + 2 test)
        (
            {"rotations": True, "split": {"protocol": "classes", "train": 1}},
            r"1 \+ 6 = 7 examples per class .* 'stripes' has only 6 in its smallest class",
        ),
        # ... of which 2 a class are `test`
        (
            {
                "split": {"protocol": "examples", "train": 0.99, "val": 0, "test_origin": "test"},
                "episodes": {"way": 3, "shot": 1, "query": 2},
            },
            r"origin 'test' \(split.test_origin\) gives some class only 2 in pool 'test'",
        ),
    ],
)
def test_a_plugged_sources_declarations_check_the_config(stripes, keys, message) -> None:
    cfg = dataset(source=stripes, **{"episodes": {"way": 2, "shot": 1, "query": 6}, **keys})
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_a_source_gone_is_an_unknown_source(stripes, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "plugin")])
    clear()
    with pytest.raises(ConfigError, match="datasets.d.source"):
        validate_config(dataset(source=stripes), check_paths=False)


def test_a_plugged_source_with_a_built_in_name_is_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "clash_sources.py").write_text(
        "from mamlscope.data.readers import SourceEntry\n"
        "from mamlscope.data.readers.digits import read\n"
        "SOURCE = SourceEntry(name='digits', read=read, description='again')\n"
    )
    install_distribution(tmp_path, "clash", f"[{GROUP}]\nmine = clash_sources\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clear()
    try:
        with pytest.raises(ConfigError, match=r"two entries are named 'digits'.*'mine'"):
            source_names()
    finally:
        forget_package("clash_sources")
        monkeypatch.undo()
        clear()


def test_a_reader_that_returns_something_else_is_named(tmp_path, monkeypatch) -> None:
    (tmp_path / "bad_sources.py").write_text(
        "from mamlscope.data.readers import SourceEntry\n"
        "SOURCE = SourceEntry(name='bad', read=lambda cfg, root, show: [], description='')\n"
    )
    install_distribution(tmp_path, "bad", f"[{GROUP}]\nbad = bad_sources:SOURCE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clear()
    try:
        with pytest.raises(DataError, match="source 'bad': its reader returned a list"):
            read_source({"source": "bad"}, show_progress=False)
    finally:
        forget_package("bad_sources")
        monkeypatch.undo()
        clear()


def test_raw_dataset_is_the_one_sources_module_exports() -> None:
    import mamlscope.data.sources as sources

    assert sources.RawDataset is RawDataset
    assert copy.deepcopy(sources.data_defaults()) == sources.data_defaults()


@pytest.mark.parametrize(
    ("classes", "table"),
    [
        (3, {"train": (4, 4)}),  # 2 counts for 3 declared classes
        (None, {"train": (4, 4), "test": (2, 2, 2)}),  # origins disagree on the classes
        (None, {"train": 4}),  # not one count per class
        (None, {}),
    ],
)
def test_inconsistent_declared_counts_name_the_source(monkeypatch, classes, table) -> None:
    import mamlscope.data.facts as facts

    entry = SourceEntry(
        name="odd", read=read_source, description="", classes=classes, examples=lambda ds: table
    )
    monkeypatch.setattr(facts, "source_entry", lambda name: entry)
    with pytest.raises(PluginError, match=r"source 'odd': its examples\(\) gave"):
        facts.known_sizes({"source": "odd"})
    consistent = SourceEntry(
        name="ok", read=read_source, description="", classes=2, examples=lambda ds: {"a": (1, 2)}
    )
    monkeypatch.setattr(facts, "source_entry", lambda name: consistent)
    assert facts.known_sizes({"source": "ok"})["a"].tolist() == [1, 2]
