"""The prepared artifact: one uint8 image array, an index of labels and a meta file.

Reading a source (decoding tens of thousands of images) happens once, in `prepare_dataset`;
every later job memory-maps the result with `PreparedDataset.load`, which takes milliseconds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import mamlscope
from mamlscope.config import check_normalize
from mamlscope.data.pools import source_ids
from mamlscope.data.sources import RawDataset, read_source, resolve_config
from mamlscope.errors import DataError
from mamlscope.io import atomic_path, to_json

IMAGES, INDEX, META = "images.npy", "index.parquet", "meta.json"
COLUMNS = [
    "example_id",
    "class_id",
    "class_name",
    "base_class",
    "rotation",
    "group",
    "origin",
    "source_id",
]
ROTATIONS = (90, 180, 270)


def build_index(raw: RawDataset, rotations: bool) -> pd.DataFrame:
    """The index rows: originals first, then one block per rotation in `ROTATIONS` order.

    Base classes get ids 0..B-1 in sorted name order; rotation r (1..3) of base class k gets
    r * B + k, so ids are deterministic and `base_class` ties every rotation to its origin.
    `source_id` is the example id of the unrotated drawing, shared by its rotations, so a
    split can keep them in one pool.
    """
    names = sorted(set(raw.class_names))
    ids = {n: i for i, n in enumerate(names)}
    base = np.array([ids[n] for n in raw.class_names], dtype=np.int64)
    blocks = []
    for r, degrees in enumerate((0, *ROTATIONS) if rotations else (0,)):
        suffix = f"@rot{degrees}" if degrees else ""
        blocks.append(
            pd.DataFrame(
                {
                    "class_id": base + r * len(names),
                    "class_name": [n + suffix for n in raw.class_names],
                    "base_class": base,
                    "rotation": np.full(len(base), degrees, dtype=np.int64),
                    "group": raw.groups,
                    "origin": raw.origins,
                }
            )
        )
    index = pd.concat(blocks, ignore_index=True)
    index.insert(0, "example_id", np.arange(len(index), dtype=np.int64))
    index["source_id"] = np.tile(np.arange(len(base), dtype=np.int64), len(blocks))
    return index[COLUMNS]


def prepare_dataset(
    name: str,
    ds_cfg: dict[str, Any],
    out_dir: str | Path,
    data_root: str | Path = "data",
    show_progress: bool = True,
) -> Path:
    """Read a source once and write `images.npy`, `index.parquet`, `meta.json` into `out_dir`.

    The folder appears only when all three files are complete (written beside it, renamed).
    """
    cfg = resolve_config(ds_cfg)
    check_normalize(cfg["normalize"], cfg["channels"], f"datasets.{name}.")
    out_dir = Path(out_dir)
    raw = read_source(cfg, data_root, show_progress)
    if len(raw) == 0:
        raise DataError(f"datasets.{name}: the source gave no images")
    index = build_index(raw, bool(cfg["rotations"]))
    n = len(raw)
    meta = {
        "name": name,
        "source": cfg["source"],
        "image_size": int(raw.images.shape[-1]),
        "channels": int(raw.images.shape[1]),
        "normalize": cfg["normalize"],
        "num_examples": len(index),
        "num_classes": int(index["class_id"].nunique()),
        "num_base_classes": int(index["base_class"].nunique()),
        "mamlscope_version": mamlscope.__version__,
        "config": cfg,
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        images = np.lib.format.open_memmap(
            tmp / IMAGES, mode="w+", dtype=np.uint8, shape=(len(index), *raw.images.shape[1:])
        )
        images[:n] = raw.images
        if cfg["rotations"]:
            for r in range(1, len(ROTATIONS) + 1):
                images[r * n : (r + 1) * n] = np.rot90(raw.images, r, axes=(2, 3))
        images.flush()
        del images
        index.to_parquet(tmp / INDEX, index=False)
        (tmp / META).write_text(to_json(meta, indent=2, default=str) + "\n")
    return out_dir


@dataclass
class PreparedDataset:
    """A prepared dataset: memory-mapped uint8 images [N, C, H, W], index and meta."""

    images: np.ndarray
    index: pd.DataFrame
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path) -> PreparedDataset:
        """Open a folder written by `prepare_dataset` (its files by their standard names)."""
        folder = Path(folder)
        return cls.from_files(folder / IMAGES, folder / INDEX, folder / META)

    @classmethod
    def from_files(
        cls,
        images: str | os.PathLike[str],
        index: str | os.PathLike[str],
        meta: str | os.PathLike[str],
    ) -> PreparedDataset:
        """Open the three prepared files without reading the images into memory; check
        they fit together. Errors name the folder of the images file."""
        paths = {IMAGES: Path(images), INDEX: Path(index), META: Path(meta)}
        folder = paths[IMAGES].parent
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise DataError(
                f"{folder}: not a prepared dataset, missing {missing}; prepare it again"
            )
        try:
            pixels = np.load(paths[IMAGES], mmap_mode="r", allow_pickle=False)
            table = pd.read_parquet(paths[INDEX])
            described = json.loads(paths[META].read_text())
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(
                f"{folder}: corrupt prepared dataset ({exc}); prepare it again"
            ) from exc
        problems = []
        if pixels.ndim != 4 or pixels.dtype != np.uint8:
            problems.append(f"{IMAGES} is {pixels.dtype} {pixels.shape}, not uint8 [N, C, H, W]")
        if list(table.columns) == COLUMNS[:-1]:  # written before source_id existed
            try:
                table["source_id"] = source_ids(table)
            except DataError as exc:
                problems.append(f"{INDEX}: {exc}")
        if list(table.columns) not in (COLUMNS, COLUMNS[:-1]):
            problems.append(f"{INDEX} has columns {list(table.columns)}, expected {COLUMNS}")
        elif not np.array_equal(table["example_id"].to_numpy(), np.arange(len(table))):
            problems.append(f"{INDEX} example_id is not 0..N-1 in order")
        if (
            not isinstance(described, dict)
            or described.get("num_examples") != len(pixels)
            or len(table) != len(pixels)
        ):
            problems.append(f"{len(pixels)} images, {len(table)} index rows and meta disagree")
        if problems:
            raise DataError(f"{folder}: inconsistent prepared dataset: {'; '.join(problems)}")
        return cls(pixels, table, described)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        """Classes after rotation augmentation (class_id runs 0..num_classes-1)."""
        return int(self.meta["num_classes"])

    @property
    def normalize(self) -> tuple[list[float], list[float]]:
        """(mean, std) per channel, a single configured value repeated for every channel."""
        channels = int(self.images.shape[1])
        norm = self.meta["normalize"]
        mean, std = [float(x) for x in norm["mean"]], [float(x) for x in norm["std"]]
        return (mean * channels if len(mean) == 1 else mean), (
            std * channels if len(std) == 1 else std
        )
