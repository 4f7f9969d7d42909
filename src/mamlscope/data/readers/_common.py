"""Reading code the built-in sources share: folders, downloads, digit arrays, config checks.

Every problem with the data is a `DataError` naming the file and what to do; every problem
with the config is a `ConfigError` naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.data.archives import decode_images, finish_arrays, read_idx
from mamlscope.data.readers.base import RawDataset
from mamlscope.errors import ConfigError, DataError

#: Examples per class of the official MNIST test set (t10k), digits 0..9.
MNIST_TEST = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

#: Grey images [N, H, W], their integer labels, and the origin they get.
Split = tuple[np.ndarray, np.ndarray, str]


def root_folder(cfg: Mapping[str, Any], data_root: Path) -> Path:
    """The source's folder: `root`, else `{data_root}/{source}`; must exist unless downloading."""
    if cfg["root"] is None:
        return data_root / cfg["source"]
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir() and not cfg["download"]:
        raise DataError(f"root: {root} does not exist (download is false); fix `root`")
    return root


def existing_folder(cfg: Mapping[str, Any], key: str) -> Path:
    """The folder config key `key` names; it must be set and exist."""
    path = cfg[key]
    if path is None:
        raise ConfigError(f"{key}: required for source {cfg['source']!r}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{key}: {path} does not exist or is not a folder")
    return path


def chosen_sets(
    cfg: Mapping[str, Any], default: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    """`sets` without repeats (`default` when null), each one of `allowed` where given."""
    sets = list(dict.fromkeys(cfg["sets"] or default))
    bad = [s for s in sets if allowed and s not in allowed]
    if bad:
        raise ConfigError(f"sets: {bad} not available for {cfg['source']}; choose from {allowed}")
    return sets


def missing_files(
    cfg: Mapping[str, Any], folders: list[Path], files: list[str], downloadable: bool = True
) -> DataError:
    """The error for files a source needs that are not on disk (and will not be downloaded).

    The advice fits the case: "set download: true" only where it is false and a download
    would fetch these files; otherwise where to put them (the folders, named, and whether
    they exist at all).
    """
    where = " or ".join(str(f) for f in folders)
    if not any(f.is_dir() for f in folders):
        where += " (no such folder)"
    found = f"{cfg['source']}: did not find {', '.join(files)} in {where}"
    if downloadable and not cfg["download"]:
        return DataError(f"{found}; set download: true, or point `root` at a folder holding them")
    why = "download is true, but" if cfg["download"] else "and"
    return DataError(
        f"{found}; {why} these files are not downloaded automatically: put them in "
        f"{folders[0]}, or point `root` at a folder holding them"
    )


def download(what: str, factory: Callable[[], object], root: Path) -> None:
    """Run a torchvision download (md5-verified by torchvision); failures become DataError."""
    try:
        factory()
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"downloading {what} into {root} failed ({exc}); on an offline node set "
            "download: false and point `root` at a copy of the files"
        ) from exc


def finish(cfg: Mapping[str, Any], images: np.ndarray, show: bool, desc: str) -> np.ndarray:
    """Arrays in the configured size and channels (see `archives.finish_arrays`)."""
    return finish_arrays(images, cfg["image_size"], cfg["channels"], show, desc)


def from_tree(
    cfg: Mapping[str, Any], found: list[tuple[Path, str, str]], origin: str, show: bool, desc: str
) -> RawDataset:
    """The (image, group, class) files `archives.scan_tree` found, decoded, one origin."""
    images = decode_images(
        [p for p, _, _ in found],
        [str(p) for p, _, _ in found],
        cfg["image_size"],
        cfg["channels"],
        show,
        desc,
    )
    return RawDataset(
        images, [c for *_, c in found], [g for _, g, _ in found], [origin] * len(found)
    )


def concat(parts: list[RawDataset]) -> RawDataset:
    """Several datasets as one, in order."""
    return RawDataset(
        np.concatenate([p.images for p in parts]),
        [c for p in parts for c in p.class_names],
        [g for p in parts for g in p.groups],
        [o for p in parts for o in p.origins],
    )


def digit_dataset(cfg: Mapping[str, Any], splits: list[Split], show: bool) -> RawDataset:
    """Digits named "0".."9", in one group per class, resized once after concatenation."""
    images = finish(cfg, np.concatenate([x for x, _, _ in splits]), show, cfg["source"])
    names = [str(int(y)) for _, labels, _ in splits for y in labels]
    origins = [o for _, labels, o in splits for _ in labels]
    return RawDataset(images, names, list(names), origins)


def read_idx_pair(cfg: Mapping[str, Any], pair: tuple[Path, Path], origin: str) -> Split:
    """One MNIST-style split from its images and labels IDX files."""
    images = read_idx(pair[0], 3, cfg["checksums"])
    labels = read_idx(pair[1], 1, cfg["checksums"])
    if len(images) != len(labels):
        raise DataError(f"{pair[0]} has {len(images)} images but {pair[1]} {len(labels)} labels")
    return images, labels, origin


# --- config checks (before any job starts) --------------------------------------------------


def check_path(ds: Mapping[str, Any], key: str, where: str, check_paths: bool) -> None:
    """A local path that config key `key` names exists (where set and paths are checked)."""
    if check_paths and ds.get(key) and not Path(os.path.expanduser(ds[key])).exists():
        raise ConfigError(f"{where}.{key}: path does not exist: {ds[key]}")


def check_root(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """`root` exists when nothing will be downloaded into it."""
    if check_paths and ds.get("root") and not ds["download"]:
        if not Path(os.path.expanduser(ds["root"])).exists():
            raise ConfigError(
                f"{where}.root: path does not exist: {ds['root']} "
                "(download is false, so the files must already be there)"
            )


def check_sets(ds: Mapping[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    """Each of `sets` is one of the source's own sets, `allowed`."""
    bad = [s for s in ds.get("sets") or () if s not in allowed]
    if bad:
        raise ConfigError(
            f"{where}.sets: {bad} not available for source '{ds['source']}'; "
            f"choose from {list(allowed)}"
        )
