"""What a data source is: a reader, the config keys it reads, and what is known before reading.

Each source is one module of :mod:`mamlscope.data.readers` (or of a user's own package,
registered by an entry point) that defines ``SOURCE = SourceEntry(...)``. Keeping the
source's reader, its known counts and its config checks in one object is what lets
:mod:`mamlscope.config` validate any source without naming one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.plugins import PluginError

#: The dataset keys that only some sources read; every other data key (``image_size``,
#: ``channels``, ``invert``, ``rotations``, ``normalize``) applies to all of them. A source
#: declares which of these it reads (:attr:`SourceEntry.keys`); a config setting one that
#: its source does not read is refused rather than silently ignored.
SOURCE_KEYS = ("root", "download", "sets", "path", "levels", "test_images", "checksums")

#: The origin of :attr:`SourceEntry.examples` counts that hold for every class whichever
#: sets are read (Omniglot's 20 drawings a character), when the per-origin split is unknown.
ANY_ORIGIN = "*"


@dataclass
class RawDataset:
    """A source read into memory: uint8 images [N, C, H, W] and per-example labels.

    ``class_names``: the class of each image; ``groups``: its group (an Omniglot alphabet,
    else the class name); ``origins``: the source's own set it came from (``train``,
    ``test``, an archive name, or ``""``), which ``split.test_origin`` selects.
    """

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


#: ``read(cfg, data_root, show_progress) -> RawDataset``: ``cfg`` is the dataset's config
#: with every schema default filled in; images come resized to ``cfg["image_size"]`` in
#: ``cfg["channels"]`` channels (``invert`` is applied afterwards, for every source).
Reader = Callable[[dict[str, Any], Path, bool], RawDataset]
#: ``check(ds, where, check_paths)``: the source's own config checks, raising a
#: ConfigError whose key starts with ``where`` (``datasets.NAME``); file-system checks
#: only when ``check_paths``.
Check = Callable[[Mapping[str, Any], str, bool], None]
#: ``examples(ds)``: examples per class (in class order) of each origin the config reads,
#: or None where they are not known before reading.
Examples = Callable[[Mapping[str, Any]], Mapping[str, Sequence[int]] | None]


def no_check(ds: Mapping[str, Any], where: str, check_paths: bool) -> None:
    """The default :attr:`SourceEntry.check`: nothing beyond the generic checks."""


def fixed_examples(table: Mapping[str, Sequence[int]]) -> Examples:
    """``examples`` for a source whose own sets have fixed counts: the sets the config
    names (``sets``; every set of ``table`` when it is null or not read), or None when one
    of them is not in ``table`` (the reader then names the sets there are)."""

    def examples(ds: Mapping[str, Any]) -> Mapping[str, Sequence[int]] | None:
        origins = list(dict.fromkeys(ds.get("sets") or table))
        if any(o not in table for o in origins):
            return None
        return {o: table[o] for o in origins}

    return examples


@dataclass(frozen=True)
class SourceEntry:
    """One data source: its name (the config's ``source``), reader and what checks read.

    ``keys``: which of :data:`SOURCE_KEYS` the reader reads. ``classes``: base classes
    known before reading (None: only the data tells). ``examples``: examples per class by
    origin (see :data:`Examples`; None: unknown). Both let the config check refuse an
    episode shape the pools cannot give before any job starts; where they are None, the
    split job checks the real pools. ``check``: the source's own config checks (a
    required key, a path that must exist).
    """

    name: str
    read: Reader
    description: str
    keys: tuple[str, ...] = ()
    classes: int | None = None
    examples: Examples | None = None
    check: Check = no_check

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))  # a list is fine too
        if not isinstance(self.name, str) or not self.name:
            raise PluginError(f"a SourceEntry needs a non-empty name, got {self.name!r}")
        unknown = [k for k in self.keys if k not in SOURCE_KEYS]
        if unknown:
            raise PluginError(
                f"source {self.name!r}: keys {unknown} are not dataset keys a source may "
                f"read; choose from {list(SOURCE_KEYS)}"
            )
        if self.classes is not None and self.classes < 1:
            raise PluginError(f"source {self.name!r}: classes must be positive or None")
