"""The source table: every registered :class:`~mamlscope.data.readers.base.SourceEntry`.

Built once per process from this package's modules (one per built-in source) and the
``mamlscope.sources`` entry points of installed packages
(:func:`mamlscope.plugins.load_registry`), so a user's own package adds a source without
editing mamlscope::

    [project.entry-points."mamlscope.sources"]
    my-source = "my_package.my_source:SOURCE"
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from mamlscope.data.readers.base import SOURCE_KEYS, SourceEntry
from mamlscope.errors import ConfigError
from mamlscope.plugins import load_registry

GROUP = "mamlscope.sources"  # the entry point group a plug-in source registers under


@functools.cache
def registry() -> dict[str, SourceEntry]:
    """Every registered source by name: the built-ins, then the plug-ins (loaded once)."""
    return load_registry("mamlscope.data.readers", GROUP, "SOURCE", SourceEntry, lambda e: e.name)


def clear() -> None:
    """Forget the loaded table, so the next lookup reads the modules and entry points again
    (tests that install or remove a plug-in source)."""
    registry.cache_clear()


def source_names() -> tuple[str, ...]:
    """Every registered source's name (the schema's ``source`` enum)."""
    return tuple(registry())


def source_entry(name: str) -> SourceEntry:
    """The source registered as ``name``; an unknown name is a ConfigError listing them."""
    table = registry()
    if not isinstance(name, str) or name not in table:
        raise ConfigError(
            f"source: unknown source {name!r}; use one of {list(table)} (a source of your "
            f"own: register it by an entry point in group {GROUP!r}, see docs/extending.md)"
        )
    return table[name]


def check_source_config(ds: Mapping[str, Any], where: str, check_paths: bool = True) -> None:
    """The source-specific checks of one dataset config ``ds`` (at ``where``, e.g.
    ``datasets.NAME``), its defaults filled in.

    A key of :data:`~mamlscope.data.readers.base.SOURCE_KEYS` that the source does not
    read must keep its schema default: a value there would be silently ignored. Then the
    source's own :attr:`~SourceEntry.check` runs.
    """
    from mamlscope.data.sources import data_defaults  # imports the config: not at load

    defaults = data_defaults()
    entry = source_entry(ds["source"])
    for key in SOURCE_KEYS:
        if key in entry.keys or ds.get(key, defaults.get(key)) == defaults.get(key):
            continue
        readers = [e.name for e in registry().values() if key in e.keys]
        raise ConfigError(
            f"{where}.{key}: not read by source '{entry.name}' (only by "
            f"{', '.join(readers) or 'no source'}); remove it"
        )
    entry.check(ds, where, check_paths)
