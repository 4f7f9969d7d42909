"""omniglot: Lake et al.'s handwritten characters, 20 drawings each, grouped by alphabet.

Reads each set in `sets` (an archive name: images_background, images_evaluation, or the
small background sets) as `NAME.zip` or a `NAME/` folder in `root` or `root/omniglot-py`;
the two main sets can be downloaded through torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mamlscope.data.archives import decode_images, read_zip_members, scan_tree
from mamlscope.data.readers._common import (
    check_root,
    chosen_sets,
    download,
    missing_files,
    root_folder,
)
from mamlscope.data.readers.base import ANY_ORIGIN, RawDataset, SourceEntry
from mamlscope.errors import DataError

DOWNLOADS = {"images_background": True, "images_evaluation": False}  # name: background?
DRAWINGS = 20  # of every character (20 drawers), whichever sets are read

#: (alphabet, character, file, path or bytes, name for errors) of one drawing.
Item = tuple[str, str, str, Path | bytes, str]


def items(cfg: Mapping[str, Any], root: Path, name: str) -> list[Item]:
    """Every drawing of one set, sorted by (alphabet, character, file)."""
    zips = [root / f"{name}.zip", root / "omniglot-py" / f"{name}.zip"]
    dirs = [root / name, root / "omniglot-py" / name]
    if not any(p.is_file() for p in zips) and not any(p.is_dir() for p in dirs):
        if not cfg["download"] or name not in DOWNLOADS:
            raise missing_files(cfg, [root, root / "omniglot-py"], [f"{name}.zip", f"{name}/"])
        import torchvision

        omniglot = partial(
            torchvision.datasets.Omniglot, root, background=DOWNLOADS[name], download=True
        )
        download(f"Omniglot {name}", omniglot, root)
    archive = next((p for p in zips if p.is_file()), None)
    found: list[Item]
    if archive is not None:
        members = read_zip_members(archive, cfg["checksums"])
        split = [(m.split("/"), m, data) for m, data in members]
        found = [(p[-3], p[-2], p[-1], d, f"{archive}:{m}") for p, m, d in split if len(p) >= 3]
    else:
        folder = next((p for p in dirs if p.is_dir()), None)
        if folder is None:
            raise DataError(f"Omniglot download into {root} left no {name}/ folder")
        found = []
        for path, alphabet, cls in scan_tree(folder, 2):  # cls: "ALPHABET/CHARACTER"
            found.append((alphabet, cls.rpartition("/")[2], path.name, path, str(path)))
    if not found:
        raise DataError(f"{archive or folder}: holds no ALPHABET/characterNN/*.png images")
    return sorted(found, key=lambda item: item[:3])


def read(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """The sets in order; a drawing already read from an earlier set is skipped.

    The small sets are subsets of images_background (small1 and small2 share Greek and
    Latin), so reading overlapping sets must not duplicate drawings across support and query.
    """
    root = root_folder(cfg, data_root)
    sets = chosen_sets(cfg, ("images_background", "images_evaluation"))
    kept: dict[tuple[str, str, str], tuple[Path | bytes, str, str]] = {}
    for s in sets:
        for alphabet, character, file, item, label in items(cfg, root, s):
            kept.setdefault((alphabet, character, file), (item, label, s))
    values = list(kept.values())
    images = decode_images(
        [v[0] for v in values], [v[1] for v in values], cfg["image_size"], cfg["channels"], show
    )
    classes = [f"{a}/{c}" for a, c, _ in kept]
    return RawDataset(images, classes, [a for a, _, _ in kept], [v[2] for v in values])


def examples(ds: Mapping[str, Any]) -> Mapping[str, Sequence[int]]:
    """20 drawings of every character, whichever sets (the class count is not known)."""
    return {ANY_ORIGIN: (DRAWINGS,)}


def check(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """`root` exists when nothing is downloaded."""
    check_root(ds, where, check_paths)


SOURCE = SourceEntry(
    name="omniglot",
    read=read,
    description="Omniglot's characters by alphabet (torchvision's download, checksums "
    "verified, or the archives in `root`, the small background sets included)",
    keys=("root", "download", "sets", "checksums"),
    examples=examples,
    check=check,
)
