"""Reading a dataset's source into memory, through the source registry.

Each source is one module of :mod:`mamlscope.data.readers` (or a plug-in package's) that
defines ``SOURCE = SourceEntry(...)``; :func:`read_source` fills the schema's defaults in,
dispatches to the source's reader and applies what every source shares (``invert``).
Readers prefer files already on disk (so offline nodes work) and fall back to
torchvision's checksum-verified downloads only when ``download`` is true.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.data.readers import RawDataset, source_entry, source_names
from mamlscope.errors import ConfigError, DataError

__all__ = ["RawDataset", "data_defaults", "read_source", "resolve_config"]


@functools.cache
def _defaults() -> dict[str, Any]:
    from mamlscope.config import DATA_KEYS, load_schema  # the schema needs the registries

    properties = load_schema()["$defs"]["dataset"]["properties"]
    return {
        key: spec["default"]
        for key, spec in properties.items()
        if key in DATA_KEYS and "default" in spec
    }


def data_defaults() -> dict[str, Any]:
    """Schema defaults of a dataset's data keys, used when a key is absent: read from the
    schema (config/schema.yaml), the one place where defaults are written."""
    return copy.deepcopy(_defaults())


def resolve_config(ds_cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of one dataset's config with every schema default filled in."""
    return {**data_defaults(), **copy.deepcopy(dict(ds_cfg))}


def read_source(
    ds_cfg: dict[str, Any], data_root: str | Path = "data", show_progress: bool = True
) -> RawDataset:
    """Read the dataset `ds_cfg` describes, resized and in the configured channels."""
    cfg = resolve_config(ds_cfg)
    if "source" not in cfg:
        raise ConfigError(f"source: required; use one of {list(source_names())}")
    entry = source_entry(cfg["source"])
    raw = entry.read(cfg, Path(data_root), show_progress)
    if not isinstance(raw, RawDataset):
        raise DataError(
            f"source {entry.name!r}: its reader returned a {type(raw).__name__}, not a "
            "RawDataset; return mamlscope.data.readers.RawDataset(images, ...)"
        )
    if cfg["invert"]:
        np.subtract(255, raw.images, out=raw.images)
    return raw
