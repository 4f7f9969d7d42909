"""Episodes a researcher defines as a table of image files, turned into tensors.

The table (Parquet or CSV) has one row per image: `episode`, `role` (support/query),
`image` (a path, relative ones taken from the table's folder) and `label` (0..way-1).
Images are read, resized and normalised as the checkpoint's training data was.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mamlscope.data.images import bomb_warnings_silenced, read_pixels
from mamlscope.data.tasks import normalize_batch
from mamlscope.errors import DataError

COLUMNS = ("episode", "role", "image", "label")
IMAGE_KEYS = ("image_size", "channels", "invert", "normalize.mean", "normalize.std")
"""Config keys (dotted) that `episode_batches` reads to prepare images as in training."""

_REPEAT = "an episode must not repeat an image (a repeated support image is a free hit)"
_LARGEST = 2**31  # beyond any real episode number or label; keeps int64 casts exact


def read_episode_table(path: str | os.PathLike[str], *, head: int | None = None) -> pd.DataFrame:
    """Read the table and check it as strictly as the pipeline checks its episodes.

    Every error is one line naming the file and, where there is one, the episode. ``head``:
    the number of outputs of a head the episodes must fit exactly (MAML adapts its own
    N-way head); None for a method that fits a fresh head per episode (the baseline).
    No image is decoded here (files are only hashed where two in an episode have the same
    size), so a bad table fails before any work is done.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an episode table (.csv or .parquet)")
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
    table = table.reset_index(drop=True)
    blank = table["episode"].isna().to_numpy()
    if blank.any():
        raise DataError(
            f"{path}: {int(blank.sum())} row(s) without an episode number, the first is "
            f"data row {int(np.argmax(blank)) + 1}"
        )
    table = table.assign(episode=_whole_numbers(table, "episode", path, "an integer"))
    for column, what in (("role", "a role"), ("image", "an image path"), ("label", "a label")):
        blank = table[column].isna().to_numpy()
        if blank.any():
            raise DataError(
                f"{_where(path, table, blank)}: {int(blank.sum())} row(s) without {what}"
            )
    roles = table["role"].map(str)
    odd = ~roles.isin(["support", "query"]).to_numpy()
    if odd.any():
        raise DataError(
            f"{_where(path, table, odd)}: role must be 'support' or 'query', "
            f"found {sorted(set(roles[odd]))}"
        )
    labels = _whole_numbers(table, "label", path, "a class index 0..way-1", low=0)
    table = table.assign(role=roles, label=labels)
    check_episodes(table, path, head=head)
    images = table["image"].map(
        lambda p: str(p) if os.path.isabs(str(p)) else str(path.parent / str(p))
    )
    absent = [p for p in images if not os.path.isfile(p)]
    if absent:
        raise DataError(f"{path}: {len(absent)} image(s) not found, e.g. {absent[0]}")
    table = table.assign(image=images)
    check_distinct_images(table, path)
    return table


def check_episodes(
    table: pd.DataFrame, source: str | os.PathLike[str], *, head: int | None = None
) -> tuple[int, int, int]:
    """(way, shot, query) shared by every episode, or a DataError naming the first bad one.

    As in the pipeline (`mamlscope.data.tasks`), an episode has labels 0..N-1, each with the
    same number K of support and Q of query rows, and all episodes share N, K and Q:
    otherwise a label the support never shows would count as a miss, a skipped label
    would silently widen a fresh head, and unequal classes would weight the accuracy.
    ``table`` has typed columns (integer episode and label, role support/query).
    """
    first: tuple[Any, tuple[int, int, int]] | None = None
    for episode, rows in table.groupby("episode", sort=True):
        where = f"{source}: episode {episode}"
        support = (rows["role"] == "support").to_numpy()
        labels = rows["label"].to_numpy(np.int64)
        if not support.any():
            raise DataError(f"{where}: no support rows, so nothing to adapt on")
        if support.all():
            raise DataError(f"{where}: no query rows, so nothing to measure accuracy on")
        present = np.unique(labels)
        way = int(present[-1]) + 1
        if len(present) != way:
            # The first five missing labels lie below len(present) + 5: no range up to a
            # label of a billion.
            gaps = np.setdiff1d(np.arange(min(way, len(present) + 5)), present)
            listed = _labels(gaps) if way - len(present) <= 5 else f"{_labels(gaps)} and more"
            raise DataError(
                f"{where}: labels must be 0..N-1 without gaps; found "
                f"{_labels(present[:20])}{' and more' if len(present) > 20 else ''}, "
                f"missing {listed}"
            )
        if head is not None and way > head:
            raise DataError(
                f"{where}: label {way - 1} is beyond the checkpoint's head, which has "
                f"{head} outputs (labels 0..{head - 1})"
            )
        counts = {
            "support": np.bincount(labels[support], minlength=way),
            "query": np.bincount(labels[~support], minlength=way),
        }
        for role, count in counts.items():
            if not count.all():
                raise DataError(
                    f"{where}: {role} has no example of {_labels(np.flatnonzero(count == 0))}"
                )
        for role, count in counts.items():
            if (count != count[0]).any():
                listed = ", ".join(f"label {i}: {n}" for i, n in enumerate(count.tolist()))
                raise DataError(
                    f"{where}: {role} rows per label differ ({listed}); every label needs "
                    "the same number"
                )
        shape = (way, int(counts["support"][0]), int(counts["query"][0]))
        if first is None:
            first = (episode, shape)
        elif shape != first[1]:
            raise DataError(
                f"{where} is {_shape(shape)}, but episode {first[0]} is {_shape(first[1])}; "
                "every episode needs the same way, shot and query"
            )
    if first is None:
        raise DataError(f"{source}: the episode table has no rows")
    way = first[1][0]
    if head is not None and way != head:
        raise DataError(
            f"{source}: {way}-way episodes, but the checkpoint's head has {head} outputs "
            "(its method adapts an N-way head of its own size)"
        )
    return first[1]


def check_distinct_images(table: pd.DataFrame, source: str | os.PathLike[str]) -> None:
    """No image twice within an episode, by path or by content, or a DataError naming both.

    The pipeline draws an episode's images without replacement; a query that repeats a
    support image would be a free hit (100% from a table of repeats). Paths are compared
    resolved (links and ".."; case on Windows); files by the sha256 of their bytes, so a
    copy, a hard link or another spelling on a case-blind disk counts too. Only files of
    equal size within an episode are hashed, each file at most once, so a table of distinct
    images costs about a stat per file (48,000 rows: 0.5 s, all 2,000 files hashed).
    ``table``: `read_episode_table`'s, with existing image paths and a 0..n-1 index.
    """
    resolved: dict[str, str] = {}
    sizes: dict[str, int] = {}
    digests: dict[str, str] = {}

    def real(image: str) -> str:
        if image not in resolved:
            resolved[image] = os.path.normcase(os.path.realpath(image))
        return resolved[image]

    def row(i: int) -> str:
        return f"data row {i + 1} ({table['role'].iat[i]}, {table['image'].iat[i]})"

    for episode, rows in table.groupby("episode", sort=True):
        where = f"{source}: episode {episode}"
        first: dict[str, int] = {}
        for i, image in zip(rows.index, rows["image"], strict=True):
            seen = first.setdefault(real(image), i)
            if seen != i:
                raise DataError(f"{where}: {row(seen)} and {row(i)} name the same file; {_REPEAT}")
        by_size: dict[int, list[str]] = {}
        for file in first:
            if file not in sizes:
                sizes[file] = _stat_size(file)
            by_size.setdefault(sizes[file], []).append(file)
        for files in by_size.values():
            by_digest: dict[str, str] = {}
            for file in files if len(files) > 1 else ():  # a lone size needs no hash
                if file not in digests:
                    digests[file] = _sha256(file)
                twin = by_digest.setdefault(digests[file], file)
                if twin != file:
                    raise DataError(
                        f"{where}: {row(first[twin])} and {row(first[file])} hold identical "
                        f"bytes (a copy of one image); {_REPEAT}"
                    )


def _stat_size(file: str) -> int:
    try:
        return os.stat(file).st_size
    except OSError as exc:
        raise DataError(f"{file}: cannot read image ({exc})") from exc


def _sha256(file: str) -> str:
    try:
        with open(file, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise DataError(f"{file}: cannot read image ({exc})") from exc


def _whole_numbers(
    table: pd.DataFrame, column: str, path: Path, what: str, *, low: int = -_LARGEST
) -> pd.Series:
    """``table[column]`` (without blanks) as int64, or a DataError naming a bad value."""
    raw = table[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = ~(
        numbers.notna() & (numbers >= low) & (numbers < _LARGEST) & (numbers == numbers.round())
    ).to_numpy()
    if bad.any():
        where = path if column == "episode" else _where(path, table, bad)
        raise DataError(
            f"{where}: {column} must be {what}, found {pd.unique(raw[bad])[:5].tolist()}"
        )
    return numbers.astype(np.int64)


def _where(path: Path, table: pd.DataFrame, rows: np.ndarray) -> str:
    """The file and the episode of the first marked row (episode already checked)."""
    return f"{path}: episode {table['episode'].iloc[int(np.argmax(rows))]}"


def _labels(labels: Any) -> str:
    labels = [int(i) for i in labels]
    return f"label {labels[0]}" if len(labels) == 1 else f"labels {labels}"


def _shape(shape: tuple[int, int, int]) -> str:
    return "{}-way {}-shot {}-query".format(*shape)


def load_image(path: str, *, size: int, channels: int, invert: bool) -> np.ndarray:
    """One image file as uint8 [C, size, size], prepared as the training images were.

    Read as the pipeline's folder readers read theirs (`mamlscope.data.images.read_pixels`:
    16-bit scaled, alpha on white, too large or undecodable a DataError naming the file).
    """
    with bomb_warnings_silenced():
        array = read_pixels(path, name=path, size=size, channels=channels)
    return 255 - array if invert else array


def episode_batches(
    table: pd.DataFrame, ds_cfg: dict[str, Any], *, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (support_x, support_y, query_x, query_y) over up to batch_size episodes.

    Episodes come in ascending episode order, so the i-th episode yielded is the i-th
    episode number of the table. Episodes in one batch must have the same support and
    query sizes (as in N-way K-shot). Arguments are checked here, images read lazily.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    groups = [g for _, g in table.groupby("episode", sort=True)]
    shapes = {
        (int((g["role"] == "support").sum()), int((g["role"] == "query").sum())) for g in groups
    }
    if len(shapes) != 1:
        raise DataError(f"episodes differ in support/query sizes: {sorted(shapes)}")
    return _batches(groups, ds_cfg, batch_size, device)


def _batches(
    groups: list[pd.DataFrame], ds_cfg: dict[str, Any], batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    mean, std = ds_cfg["normalize"]["mean"], ds_cfg["normalize"]["std"]
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
        support_x, support_y, query_x, query_y = out
        yield support_x, support_y, query_x, query_y
