"""omniglot: Lake et al.'s handwritten characters, 20 drawings each, grouped by alphabet.

Reads each set in `sets` (an archive name: images_background, images_evaluation, or the
small background sets) as `NAME.zip` or a `NAME/` folder in `root` or `root/omniglot-py`;
the two main sets can be downloaded through torchvision. The official sets' character
counts are known here, so ``way`` is checked against them with the config, and each set's
index is checked against them before its images are decoded.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.data.archives import decode_images, read_zip_members, scan_tree
from mamlscope.data.pools import POOLS, example_pool_sizes
from mamlscope.data.readers._common import (
    check_root,
    chosen_sets,
    download,
    missing_files,
    root_folder,
)
from mamlscope.data.readers.base import ANY_ORIGIN, RawDataset, SourceEntry
from mamlscope.errors import ConfigError, DataError

DOWNLOADS = {"images_background": True, "images_evaluation": False}  # name: background?
DEFAULT_SETS = ("images_background", "images_evaluation")
DRAWINGS = 20  # of every character (20 drawers), whichever sets are read

#: Characters of the two main sets (Lake et al. 2015: 1623 in all, 30 alphabets in the
#: background set, 20 in the evaluation set; the character numbers of the file names run
#: 0001-0964 and 0965-1623).
MAIN_CHARACTERS = {"images_background": 964, "images_evaluation": 659}
#: Characters per alphabet of the small background sets, counted in the official archives
#: (../shared/data/omniglot: 136 and 156 characters, 20 drawings each). Both are subsets
#: of images_background and share Greek and Latin.
SMALL_ALPHABETS = {
    "images_background_small1": {
        "Balinese": 24,
        "Early_Aramaic": 22,
        "Greek": 24,
        "Korean": 40,
        "Latin": 26,
    },
    "images_background_small2": {
        "Greek": 24,
        "Japanese_(katakana)": 47,
        "Latin": 26,
        "Sanskrit": 42,
        "Tagalog": 17,
    },
}

#: (alphabet, character, file, path or bytes, name for errors) of one drawing.
Item = tuple[str, str, str, Path | bytes, str]


def set_characters(name: str) -> int | None:
    """Characters of one official set, or None for a set of the user's own."""
    if name in MAIN_CHARACTERS:
        return MAIN_CHARACTERS[name]
    return sum(SMALL_ALPHABETS[name].values()) if name in SMALL_ALPHABETS else None


def characters(sets: Sequence[str]) -> int | None:
    """Distinct characters that reading ``sets`` gives (a drawing in two sets is read
    once), or None when one of them is not an official set."""
    if any(set_characters(s) is None for s in sets):
        return None
    total = sum(MAIN_CHARACTERS.get(s, 0) for s in sets)
    if "images_background" in sets:
        return total  # the small sets add nothing to it
    alphabets = {a: n for s in sets for a, n in SMALL_ALPHABETS.get(s, {}).items()}
    return total + sum(alphabets.values())


def locate(cfg: Mapping[str, Any], root: Path, name: str) -> Path:
    """The set's `NAME.zip` or `NAME/` folder in `root` or `root/omniglot-py`, downloaded
    first where it is missing, `download` is true and torchvision can fetch it."""
    zips = [root / f"{name}.zip", root / "omniglot-py" / f"{name}.zip"]
    dirs = [root / name, root / "omniglot-py" / name]
    if not any(p.is_file() for p in zips) and not any(p.is_dir() for p in dirs):
        if not cfg["download"] or name not in DOWNLOADS:
            raise missing_files(
                cfg,
                [root, root / "omniglot-py"],
                [f"{name}.zip", f"{name}/"],
                downloadable=name in DOWNLOADS,
            )
        import torchvision

        omniglot = partial(
            torchvision.datasets.Omniglot, root, background=DOWNLOADS[name], download=True
        )
        download(f"Omniglot {name}", omniglot, root)
    place = next((p for p in zips if p.is_file()), None) or next(
        (p for p in dirs if p.is_dir()), None
    )
    if place is None:
        raise DataError(f"Omniglot download into {root} left no {name}/ folder")
    return place


def items(cfg: Mapping[str, Any], place: Path) -> list[Item]:
    """Every drawing of one set's archive or folder, sorted by (alphabet, character, file)."""
    found: list[Item]
    if place.is_file():
        members = read_zip_members(place, cfg["checksums"])
        split = [(m.split("/"), m, data) for m, data in members]
        found = [(p[-3], p[-2], p[-1], d, f"{place}:{m}") for p, m, d in split if len(p) >= 3]
    else:
        found = []
        for path, alphabet, cls in scan_tree(place, 2):  # cls: "ALPHABET/CHARACTER"
            found.append((alphabet, cls.rpartition("/")[2], path.name, path, str(path)))
    if not found:
        raise DataError(f"{place}: holds no ALPHABET/characterNN/*.png images")
    return sorted(found, key=lambda item: item[:3])


def check_index(name: str, place: Path, found: Sequence[Item]) -> None:
    """An official set holds its known characters, 20 drawings each, before any image is
    decoded: the config check counted on them, so a partly extracted folder fails here,
    naming it, instead of at the split job."""
    expected = set_characters(name)
    if expected is None:
        return
    drawings = Counter((a, c) for a, c, *_ in found)
    short = sorted(f"{a}/{c}" for (a, c), n in drawings.items() if n != DRAWINGS)
    if len(drawings) == expected and not short:
        return
    held = f"{len(drawings)} characters" + (
        f" ({len(short)} without {DRAWINGS} drawings, e.g. {short[0]})" if short else ""
    )
    again = f"extract the official {name}.zip there again" + (
        ", or delete it and set download: true to download it" if name in DOWNLOADS else ""
    )
    raise DataError(
        f"{place}: holds {held}, but Omniglot's {name} has {expected} characters of "
        f"{DRAWINGS} drawings (the config check counted on them); it is incomplete or not "
        f"the official set: {again}"
    )


def read(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """The sets in order; a drawing already read from an earlier set is skipped.

    The small sets are subsets of images_background (small1 and small2 share Greek and
    Latin), so reading overlapping sets must not duplicate drawings across support and query.
    Every set is located and its index checked before any image is decoded.
    """
    root = root_folder(cfg, data_root)
    sets = chosen_sets(cfg, DEFAULT_SETS)
    kept: dict[tuple[str, str, str], tuple[Path | bytes, str, str]] = {}
    for s in sets:
        place = locate(cfg, root, s)
        found = items(cfg, place)
        check_index(s, place, found)
        for alphabet, character, file, item, label in found:
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


def _check_files(ds: Mapping[str, Any], where: str, sets: Sequence[str]) -> None:
    """With `root` set, each set that will not be downloaded is there already."""
    root = Path(os.path.expanduser(ds["root"]))
    for name in sets:
        if ds["download"] and name in DOWNLOADS:
            continue
        folders = (root, root / "omniglot-py")
        if any((f / n).exists() for f in folders for n in (f"{name}.zip", name)):
            continue
        why = (
            "download is false"
            if not ds["download"]
            else f"download fetches only {' and '.join(DOWNLOADS)}"
        )
        raise ConfigError(
            f"{where}.sets: {name} is not in {root} ({name}.zip or {name}/, also under "
            f"omniglot-py/), and {why}; put it there, or point {where}.root at a folder "
            "holding it"
        )


def _check_way(ds: Mapping[str, Any], where: str, sets: Sequence[str]) -> None:
    """``way`` against the characters of each pool, where the official sets fix them."""
    total = characters(sets)
    split, way = ds["split"], ds["episodes"]["way"]
    if total is None or "train" not in split:
        return  # a set of the user's own: the split job counts its pools
    rot = 4 if ds["rotations"] else 1
    whole = all(split[k] == int(split[k]) for k in ("train", "val"))
    pools: list[tuple[str, int]] = [("all", total)]
    if split["protocol"] == "classes" and whole and not split["keep_groups"]:
        train, val = int(split["train"]), int(split["val"])
        if train + val >= total:
            raise ConfigError(
                f"{where}.split.train: {train} train + {val} val classes leave no test "
                f"classes; omniglot sets {list(sets)} have {total} characters"
            )
        pools = [("train", train), ("val", val), ("test", total - train - val)]
    elif split["protocol"] == "examples" and not split["test_origin"]:
        shares = example_pool_sizes(np.array([DRAWINGS]), split["train"], split["val"], None)
        pools = [(p, total if shares[0, k] else 0) for k, p in enumerate(POOLS)]
    for pool, n in pools:
        if n and way > n * rot:  # an empty val pool has no episodes
            what = "the sets have" if pool == "all" else f"pool '{pool}' will have"
            raise ConfigError(
                f"{where}.episodes.way: {way} classes per episode, but {what} only "
                f"{n * rot} classes ({n} characters{' x 4 rotations' if rot > 1 else ''} of "
                f"omniglot sets {list(sets)}); lower {where}.episodes.way or change "
                f"{where}.split or {where}.sets"
            )


def check(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """`root` exists when nothing is downloaded, and holds the sets that will not be;
    ``way`` fits each pool of the official sets (known character counts)."""
    check_root(ds, where, check_paths)
    sets = list(dict.fromkeys(ds.get("sets") or DEFAULT_SETS))
    if check_paths and ds.get("root"):
        _check_files(ds, where, sets)
    _check_way(ds, where, sets)


SOURCE = SourceEntry(
    name="omniglot",
    read=read,
    description="Omniglot's characters by alphabet (torchvision's download, checksums "
    "verified, or the archives in `root`, the small background sets included)",
    keys=("root", "download", "sets", "checksums"),
    examples=examples,
    check=check,
)
