"""mnist: the 70,000 MNIST digits as IDX files, from `root` or torchvision's download."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlscope.data.archives import find_idx
from mamlscope.data.readers._common import (
    MNIST_TEST,
    check_root,
    check_sets,
    chosen_sets,
    digit_dataset,
    download,
    missing_files,
    read_idx_pair,
    root_folder,
)
from mamlscope.data.readers.base import RawDataset, SourceEntry, fixed_examples
from mamlscope.errors import DataError

SETS = ("train", "test")
IDX_PREFIX = {"train": "train", "test": "t10k"}


def read(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """The IDX files in `root` or `root/MNIST/raw` (where torchvision puts them)."""
    root = root_folder(cfg, data_root)
    sets = chosen_sets(cfg, SETS, SETS)
    folders = [root, root / "MNIST" / "raw"]
    found = {s: find_idx(folders, IDX_PREFIX[s]) for s in sets}
    if not all(found.values()):
        if not cfg["download"]:
            files = [
                f"{IDX_PREFIX[s]}-{k}-ubyte[.gz]"
                for s in sets
                for k in ("images-idx3", "labels-idx1")
            ]
            raise missing_files(cfg, folders, files)
        import torchvision

        download("MNIST", lambda: torchvision.datasets.MNIST(root, download=True), root)
        found = {s: find_idx(folders, IDX_PREFIX[s]) for s in sets}
    pairs = {s: pair for s, pair in found.items() if pair is not None}
    if len(pairs) != len(sets):
        raise DataError(f"MNIST download into {root} left no IDX files in {folders[1]}")
    return digit_dataset(cfg, [read_idx_pair(cfg, pairs[s], s) for s in sets], show)


def check(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """`sets` are MNIST's own; `root` exists when nothing is downloaded."""
    check_sets(ds, where, SETS)
    check_root(ds, where, check_paths)


SOURCE = SourceEntry(
    name="mnist",
    read=read,
    description="the 70,000 MNIST digits (torchvision's download, checksums verified, "
    "or IDX files in `root`)",
    keys=("root", "download", "sets", "checksums"),
    classes=10,
    examples=fixed_examples(
        {"train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949), "test": MNIST_TEST}
    ),
    check=check,
)
