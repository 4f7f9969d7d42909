"""imagefolder: any tree of class folders of PNG/JPEG images, the no-code way to add data.

`path/CLASS/image` (levels 1), or `path/GROUP/CLASS/image` (levels 2: a class is named
`GROUP/CLASS` and split.keep_groups keeps a group's classes together, as Omniglot's
alphabets).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlscope.data.archives import scan_tree
from mamlscope.data.readers._common import check_path, existing_folder, from_tree
from mamlscope.data.readers.base import RawDataset, SourceEntry
from mamlscope.errors import ConfigError, DataError


def read(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """Every image of the tree, in sorted order, origin `""`."""
    path = existing_folder(cfg, "path")
    if cfg["levels"] not in (1, 2):
        raise ConfigError(f"levels: must be 1 or 2, got {cfg['levels']!r}")
    found = scan_tree(path, cfg["levels"])
    if not found:
        layout = "CLASS/" if cfg["levels"] == 1 else "GROUP/CLASS/"
        raise DataError(f"path: {path} holds no {layout}*.png|jpg|jpeg images")
    return from_tree(cfg, found, "", show, f"imagefolder {path.name}")


def check(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """`path` is set, and exists."""
    if not ds.get("path"):
        raise ConfigError(
            f"{where}.path: required for source 'imagefolder' (a folder of class folders)"
        )
    check_path(ds, "path", where, check_paths)


SOURCE = SourceEntry(
    name="imagefolder",
    read=read,
    description="a tree of class folders of PNG/JPEG images at `path` "
    "(levels 2: group/class/image)",
    keys=("path", "levels"),
    check=check,
)
