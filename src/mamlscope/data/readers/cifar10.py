"""cifar10: CIFAR-10's 60,000 32x32 colour images, from `root` or torchvision's download.

`root` may hold the official python batches (`cifar-10-batches-py/`, or its tarball, which
is extracted once), a `train/ test/` tree of class folders, or one tarball of that tree
(read in place, never extracted).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.data.archives import (
    decode_images,
    extract_tar,
    read_pickle,
    read_tar_images,
    scan_tree,
    tree_root,
)
from mamlscope.data.readers._common import (
    check_root,
    check_sets,
    chosen_sets,
    concat,
    download,
    finish,
    from_tree,
    missing_files,
    root_folder,
)
from mamlscope.data.readers.base import RawDataset, SourceEntry, fixed_examples
from mamlscope.errors import DataError

SETS = ("train", "test")
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_batches(cfg: dict[str, Any], folder: Path, sets: list[str], show: bool) -> RawDataset:
    """The official python batches (pickles) of `sets`, md5-checked."""
    meta = read_pickle(folder / "batches.meta", cfg["checksums"])
    label_names = [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]
    images, names, origins = [], [], []
    for s in sets:
        for batch in BATCHES[s]:
            data = read_pickle(folder / batch, cfg["checksums"])
            try:
                images.append(np.asarray(data[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                labels = data[b"labels"]
            except (KeyError, ValueError) as exc:
                raise DataError(f"{folder / batch}: not a CIFAR-10 batch ({exc})") from exc
            names += [label_names[y] for y in labels]
            origins += [s] * len(labels)
    rgb = np.concatenate(images).transpose(0, 2, 3, 1)
    return RawDataset(finish(cfg, rgb, show, "cifar10"), names, list(names), origins)


def read_tarball(cfg: dict[str, Any], tarball: Path, sets: list[str], show: bool) -> RawDataset:
    """A tarball of `[TOP/]SET/CLASS/image` read in place, in the same order as the tree."""
    members = []
    for name, data in read_tar_images(tarball, cfg["checksums"]):
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in sets:
            members.append((sets.index(parts[-3]), parts[-2], parts[-1], name, data))
    members.sort(key=lambda m: m[:3])
    missing = set(sets) - {sets[m[0]] for m in members}
    if missing:
        raise DataError(f"{tarball}: holds no {sorted(missing)} SET/CLASS/image files")
    images = decode_images(
        [m[4] for m in members],
        [f"{tarball}:{m[3]}" for m in members],
        cfg["image_size"],
        cfg["channels"],
        show,
        f"cifar10 {tarball.name}",
    )
    names = [m[1] for m in members]
    return RawDataset(images, names, list(names), [sets[m[0]] for m in members])


def read(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """The first layout `root` holds (see the module's docstring), else a download."""
    root = root_folder(cfg, data_root)
    sets = chosen_sets(cfg, SETS, SETS)
    batches = root / "cifar-10-batches-py"
    official = root / "cifar-10-python.tar.gz"
    if not batches.is_dir() and official.is_file():
        extract_tar(official, batches, cfg["checksums"], inner="cifar-10-batches-py")
    if batches.is_dir():
        return read_batches(cfg, batches, sets, show)
    tree = tree_root(root, sets)
    if tree is not None:
        return concat(
            [from_tree(cfg, scan_tree(tree / s, 1), s, show, f"cifar10 {s}") for s in sets]
        )
    tarballs = sorted(
        p
        for p in (root.iterdir() if root.is_dir() else [])
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")) and p != official
    )
    if len(tarballs) > 1:
        raise DataError(f"cifar10: several tarballs in {root} ({[p.name for p in tarballs]})")
    if tarballs:
        return read_tarball(cfg, tarballs[0], sets, show)
    if not cfg["download"]:
        raise missing_files(
            cfg, [root], ["cifar-10-batches-py/", official.name, "train/ test/", "*.tar.gz"]
        )
    import torchvision

    download("CIFAR-10", lambda: torchvision.datasets.CIFAR10(root, download=True), root)
    return read_batches(cfg, batches, sets, show)


def check(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """`sets` are CIFAR-10's own; `root` exists when nothing is downloaded."""
    check_sets(ds, where, SETS)
    check_root(ds, where, check_paths)


SOURCE = SourceEntry(
    name="cifar10",
    read=read,
    description="CIFAR-10's 60,000 32x32 colour images (torchvision's download, checksums "
    "verified, or batches, a class-folder tree or its tarball in `root`)",
    keys=("root", "download", "sets", "checksums"),
    classes=10,
    examples=fixed_examples({"train": (5000,) * 10, "test": (1000,) * 10}),
    check=check,
)
