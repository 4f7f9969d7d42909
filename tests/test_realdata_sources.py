"""The readers on the real files in ../shared/data: known counts of the public datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from source_checks import check_declared_counts

from mamlscope.data.prepared import PreparedDataset, prepare_dataset
from mamlscope.data.sources import read_source

pytestmark = pytest.mark.realdata

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def omniglot(shared: Path, name: str, **extra) -> dict:
    root = str(shared / "omniglot")
    return {"source": "omniglot", "root": root, "sets": [name], "download": False, **extra}


def test_omniglot_small1(shared_data: Path) -> None:
    raw = read_source(omniglot(shared_data, "images_background_small1"), show_progress=False)
    per_class = Counter(raw.class_names)
    assert len(per_class) == 136 and set(per_class.values()) == {20}
    assert len(set(raw.groups)) == 5
    assert raw.images.shape == (136 * 20, 1, 28, 28)
    assert set(raw.origins) == {"images_background_small1"}
    # Strokes are black on white: the background dominates until `invert` is set.
    assert raw.images.mean() > 200
    check_declared_counts(omniglot(shared_data, "images_background_small1"), raw)


def test_omniglot_small2_and_prepare_with_rotations(shared_data: Path, tmp_path: Path) -> None:
    cfg = omniglot(shared_data, "images_background_small2", invert=True, rotations=True)
    out = prepare_dataset("small2", cfg, tmp_path / "small2", show_progress=False)
    data = PreparedDataset.load(out)
    assert data.meta["num_base_classes"] == 156 and data.num_classes == 4 * 156
    originals = data.index[data.index["rotation"] == 0]
    assert set(originals["class_name"].value_counts()) == {20}
    assert originals["group"].nunique() == 5
    assert np.asarray(data.images).mean() < 55  # inverted: mostly dark background


def test_omniglot_small1_and_small2_share_greek_and_latin(shared_data: Path) -> None:
    cfg = omniglot(shared_data, "images_background_small1")
    cfg["sets"] = ["images_background_small1", "images_background_small2"]
    raw = read_source(cfg, show_progress=False)
    per_class = Counter(raw.class_names)
    assert len(per_class) == 136 + 156 - 50 and set(per_class.values()) == {20}
    assert Counter(raw.origins) == {
        "images_background_small1": 136 * 20,
        "images_background_small2": (156 - 50) * 20,
    }


def test_mnist_official_test_set(shared_data: Path) -> None:
    cfg = {"source": "mnist", "root": str(shared_data / "mnist"), "sets": ["test"]}
    raw = read_source({**cfg, "download": False}, show_progress=False)
    assert raw.images.shape == (10_000, 1, 28, 28)
    counts = Counter(raw.class_names)
    assert [counts[str(d)] for d in range(10)] == MNIST_TEST_COUNTS
    assert set(raw.origins) == {"test"}
    check_declared_counts(cfg, raw)


def test_mnist5k_with_official_test_images(shared_data: Path) -> None:
    cfg = {"source": "mnist5k", "test_images": str(shared_data / "mnist")}
    raw = read_source(cfg, show_progress=False)
    assert Counter(raw.origins) == {"train": 5_000, "test": 10_000}
    test = Counter(c for c, o in zip(raw.class_names, raw.origins, strict=True) if o == "test")
    assert [test[str(d)] for d in range(10)] == MNIST_TEST_COUNTS
    check_declared_counts(cfg, raw)


def test_cifar10_jpeg_tarball(shared_data: Path) -> None:
    # Read in place: shared/ is read-only and the reader writes nothing beside the tarball.
    cfg = {"source": "cifar10", "root": str(shared_data / "cifar10"), "download": False}
    raw = read_source({**cfg, "image_size": 32, "channels": 3}, show_progress=False)
    assert raw.images.shape == (60_000, 3, 32, 32)
    assert sorted(set(raw.class_names)) == CIFAR_CLASSES
    assert Counter(raw.class_names) == {c: 6_000 for c in CIFAR_CLASSES}
    assert Counter(raw.origins) == {"train": 50_000, "test": 10_000}
    assert 100 < raw.images.mean() < 140  # real photos, not blank decodes
    check_declared_counts(cfg, raw)
