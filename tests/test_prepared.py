"""The prepared artifact: exact columns, rotation classes, atomic writes and fast, checked loads."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mamlscope
import mamlscope.data.prepared as prepared
from mamlscope.data.prepared import COLUMNS, PreparedDataset, prepare_dataset
from mamlscope.data.sources import RawDataset, read_source
from mamlscope.errors import ConfigError, DataError

GROUPS, CLASSES, PER_CLASS = ("g2", "g1"), ("c2", "c1"), 3


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """GROUP/CLASS/i.png, 8x8 grey, asymmetric noise so every rotation differs."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for group in GROUPS:
        for cls in CLASSES:
            (root / group / cls).mkdir(parents=True)
            for i in range(PER_CLASS):
                arr = rng.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(arr).save(root / group / cls / f"{i}.png")
    return root


def cfg(tree: Path, **extra) -> dict:
    return {"source": "imagefolder", "path": str(tree), "levels": 2, "image_size": 8, **extra}


def test_prepare_writes_the_documented_artifact(tree: Path, tmp_path: Path) -> None:
    out = prepare_dataset("toy", cfg(tree), tmp_path / "out", show_progress=False)
    assert out == tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["images.npy", "index.parquet", "meta.json"]
    index = pd.read_parquet(out / "index.parquet")
    assert (
        list(index.columns)
        == COLUMNS
        == [
            "example_id",
            "class_id",
            "class_name",
            "base_class",
            "rotation",
            "group",
            "origin",
            "source_id",
        ]
    )
    for column in ("example_id", "class_id", "base_class", "rotation", "source_id"):
        assert index[column].dtype == np.int64, column
    assert index["source_id"].tolist() == index["example_id"].tolist()  # no rotations
    names = sorted(f"{g}/{c}" for g in GROUPS for c in CLASSES)
    assert index["class_id"].tolist() == [names.index(n) for n in index["class_name"]]
    assert index["base_class"].tolist() == index["class_id"].tolist()
    assert set(index["rotation"]) == {0} and set(index["origin"]) == {""}
    assert index["group"].tolist() == [n.split("/")[0] for n in index["class_name"]]
    images = np.load(out / "images.npy")
    raw = read_source(cfg(tree), show_progress=False)
    np.testing.assert_array_equal(images, raw.images)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "toy" and meta["source"] == "imagefolder"
    assert (meta["image_size"], meta["channels"]) == (8, 1)
    assert (meta["num_examples"], meta["num_classes"], meta["num_base_classes"]) == (12, 4, 4)
    assert meta["mamlscope_version"] == mamlscope.__version__
    assert meta["normalize"] == {"mean": [0.0], "std": [1.0]}
    assert meta["config"]["download"] is True and meta["config"]["path"] == str(tree)


def test_rotations_make_three_more_classes_per_class(tree: Path, tmp_path: Path) -> None:
    out = prepare_dataset("rot", cfg(tree, rotations=True), tmp_path / "out", show_progress=False)
    data = PreparedDataset.load(out)
    index, n, classes = data.index, 12, 4
    assert len(data) == 4 * n and data.num_classes == 4 * classes
    assert data.meta["num_base_classes"] == classes
    assert index["rotation"].tolist() == [d for d in (0, 90, 180, 270) for _ in range(n)]
    assert sorted(index["class_id"].unique()) == list(range(4 * classes))
    base = index[index["rotation"] == 0]
    for r, degrees in enumerate((90, 180, 270), start=1):
        block = index[index["rotation"] == degrees]
        assert block["base_class"].tolist() == base["class_id"].tolist()
        assert block["class_id"].tolist() == (base["class_id"] + r * classes).tolist()
        assert block["class_name"].tolist() == [f"{c}@rot{degrees}" for c in base["class_name"]]
        assert block["group"].tolist() == base["group"].tolist()
        assert block["source_id"].tolist() == base["example_id"].tolist()  # the drawing
        rotated = np.asarray(data.images[block["example_id"].to_numpy()])
        expected = np.rot90(np.asarray(data.images[:n]), r, axes=(-2, -1))
        np.testing.assert_array_equal(rotated, expected)
        assert not np.array_equal(rotated, data.images[:n])


def test_load_round_trip_is_memory_mapped(tree: Path, tmp_path: Path) -> None:
    normalize = {"mean": [0.5], "std": [0.25]}
    out = prepare_dataset(
        "rgb", cfg(tree, channels=3, normalize=normalize), tmp_path / "o", show_progress=False
    )
    data = PreparedDataset.load(out)
    assert isinstance(data.images, np.memmap) and data.images.shape == (12, 3, 8, 8)
    np.testing.assert_array_equal(data.index, pd.read_parquet(out / "index.parquet"))
    assert data.meta == json.loads((out / "meta.json").read_text())
    assert data.normalize == ([0.5] * 3, [0.25] * 3)


def test_normalize_must_fit_channels(tree: Path, tmp_path: Path) -> None:
    bad = {"mean": [0.1, 0.2], "std": [1.0]}
    with pytest.raises(ConfigError, match=r"datasets\.toy\.normalize\.mean"):
        prepare_dataset("toy", cfg(tree, channels=3, normalize=bad), tmp_path / "o", ".", False)
    assert not (tmp_path / "o").exists()


def test_failed_write_leaves_no_artifact(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", explode)
    parent = tmp_path / "results"
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset("toy", cfg(tree), parent / "out", show_progress=False)
    assert list(parent.iterdir()) == []


def test_failure_keeps_a_previous_artifact_intact(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = prepare_dataset("toy", cfg(tree), tmp_path / "out", show_progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Fail at the very last write, after images and index are already in the temporary folder.
    monkeypatch.setattr(prepared, "to_json", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        prepare_dataset("toy", cfg(tree, rotations=True), out, show_progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tree"]


def test_source_error_leaves_no_artifact(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="path"):
        prepare_dataset(
            "x", {"source": "imagefolder", "path": str(tmp_path / "no")}, tmp_path / "o"
        )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("victim", ["images.npy", "index.parquet", "meta.json"])
def test_load_names_the_folder_when_files_are_missing_or_corrupt(
    tree: Path, tmp_path: Path, victim: str
) -> None:
    out = prepare_dataset("toy", cfg(tree), tmp_path / "out", show_progress=False)
    data = (out / victim).read_bytes()
    (out / victim).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=re.escape(str(out))):
        PreparedDataset.load(out)
    (out / victim).unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(out))}.*{re.escape(victim)}"):
        PreparedDataset.load(out)


@pytest.mark.parametrize("rotations", [False, True])
def test_index_written_before_source_id_still_loads(
    tree: Path, tmp_path: Path, rotations: bool
) -> None:
    out = prepare_dataset("toy", cfg(tree, rotations=rotations), tmp_path / "o", ".", False)
    new = pd.read_parquet(out / "index.parquet")
    new.drop(columns="source_id").to_parquet(out / "index.parquet", index=False)
    pd.testing.assert_frame_equal(PreparedDataset.load(out).index, new)


def test_old_index_in_an_unknown_layout_fails_clearly(tree: Path, tmp_path: Path) -> None:
    out = prepare_dataset("toy", cfg(tree, rotations=True), tmp_path / "o", ".", False)
    old = pd.read_parquet(out / "index.parquet").drop(columns="source_id")
    old["rotation"] = old["rotation"].to_numpy()[::-1]  # not prepare_dataset's block layout
    old.to_parquet(out / "index.parquet", index=False)
    with pytest.raises(DataError, match=r"index\.parquet: .*source_id.*prepare the dataset"):
        PreparedDataset.load(out)


def test_load_rejects_disagreeing_files(tree: Path, tmp_path: Path) -> None:
    out = prepare_dataset("toy", cfg(tree), tmp_path / "out", show_progress=False)
    index = pd.read_parquet(out / "index.parquet")
    index.iloc[:-1].to_parquet(out / "index.parquet", index=False)
    with pytest.raises(DataError, match="disagree"):
        PreparedDataset.load(out)


def test_load_is_fast_at_mnist_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 70_000
    labels = [str(i % 10) for i in range(n)]
    images = np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    raw = RawDataset(images, labels, list(labels), ["train"] * 60_000 + ["test"] * 10_000)
    monkeypatch.setattr(prepared, "read_source", lambda *a, **k: raw)
    out = prepare_dataset("mnist", {"source": "mnist"}, tmp_path / "mnist", show_progress=False)
    start = time.perf_counter()
    data = PreparedDataset.load(out)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert len(data) == n and data.num_classes == 10
    np.testing.assert_array_equal(data.images[-1], images[-1])
    assert data.index["origin"].value_counts().to_dict() == {"train": 60_000, "test": 10_000}
