"""Episodes a researcher defines as a table of image files, turned into tensors.

The table (Parquet or CSV) has one row per image: `episode`, `role` (support/query),
`image` (a path, relative ones taken from the table's folder) and `label` (0..way-1).
Images are read, resized and normalised as the checkpoint's training data was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from mamlscope.errors import DataError
from mamlscope.tasks import normalize_batch

COLUMNS = ("episode", "role", "image", "label")


def read_episode_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check the table; errors name the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"episode table not found: {path}")
    try:
        table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the episode table: {exc}") from exc
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; expected {list(COLUMNS)}")
    if table.empty:
        raise DataError(f"{path}: the episode table has no rows")
    roles = set(table["role"].unique()) - {"support", "query"}
    if roles:
        raise DataError(f"{path}: role must be 'support' or 'query', found {sorted(roles)}")
    labels = pd.to_numeric(table["label"], errors="coerce")
    bad = table.loc[~(labels.notna() & (labels >= 0) & (labels == labels.round())), "label"]
    if len(bad):
        raise DataError(
            f"{path}: label must be a class index 0..way-1, found {bad.unique()[:5].tolist()}"
        )
    if table["image"].isna().any():
        raise DataError(f"{path}: {int(table['image'].isna().sum())} row(s) without an image path")
    images = table["image"].map(
        lambda p: str(p) if os.path.isabs(str(p)) else str(path.parent / str(p))
    )
    absent = [p for p in images if not os.path.isfile(p)]
    if absent:
        raise DataError(f"{path}: {len(absent)} image(s) not found, e.g. {absent[0]}")
    return table.assign(image=images, label=labels.astype(np.int64))


def load_image(path: str, *, size: int, channels: int, invert: bool) -> np.ndarray:
    """One image file as uint8 [C, size, size], prepared as the training images were."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.LANCZOS)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return 255 - array if invert else array


def episode_batches(
    table: pd.DataFrame, ds_cfg: dict[str, Any], *, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield (support_x, support_y, query_x, query_y) over up to batch_size episodes.

    Episodes in one batch must have the same support and query sizes (as in N-way K-shot).
    """
    mean, std = ds_cfg["normalize"]["mean"], ds_cfg["normalize"]["std"]
    groups = [g for _, g in table.groupby("episode", sort=True)]
    shapes = {
        (int((g["role"] == "support").sum()), int((g["role"] == "query").sum())) for g in groups
    }
    if len(shapes) != 1:
        raise DataError(f"episodes differ in support/query sizes: {sorted(shapes)}")
    for start in range(0, len(groups), batch_size):
        chunk = groups[start : start + batch_size]
        out = []
        for role in ("support", "query"):
            parts = [g[g["role"] == role] for g in chunk]
            pixels = np.stack(
                [
                    np.stack(
                        [
                            load_image(
                                p,
                                size=ds_cfg["image_size"],
                                channels=ds_cfg["channels"],
                                invert=ds_cfg["invert"],
                            )
                            for p in part["image"]
                        ]
                    )
                    for part in parts
                ]
            )
            x = normalize_batch(torch.from_numpy(pixels).to(device), mean, std)
            y = torch.as_tensor(
                np.stack([part["label"].to_numpy() for part in parts]),
                dtype=torch.long,
                device=device,
            )
            out += [x, y]
        yield tuple(out)
