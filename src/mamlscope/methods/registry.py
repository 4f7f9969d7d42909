"""The method table: every registered :class:`~mamlscope.methods.base.Method` by name.

Built from this package's modules and the ``mamlscope.methods`` entry points of installed
packages (:func:`mamlscope.plugins.load_registry`), once per process, in each method's
declared ``position`` (ties by name).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from mamlscope.errors import ConfigError
from mamlscope.methods.base import Method
from mamlscope.plugins import load_registry

GROUP = "mamlscope.methods"  # the entry point group a plug-in method registers under


@functools.cache
def registry() -> dict[str, Method]:
    """Every registered method by name, in display order (loaded once; see :func:`clear`)."""
    table = load_registry("mamlscope.methods", GROUP, "METHOD", Method, lambda m: m.name)
    return dict(sorted(table.items(), key=lambda item: (item[1].position, item[0])))


def clear() -> None:
    """Forget the loaded table, so the next lookup reads the modules and entry points again
    (tests that register a method)."""
    registry.cache_clear()


def method(name: str) -> Method:
    """The registered method ``name``; a ConfigError lists the registered names."""
    table = registry()
    if name not in table:
        raise ConfigError(f"unknown method {name!r}; use one of {list(table)}")
    return table[name]


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in display order."""
    return tuple(registry())


def label(name: str) -> str:
    """The display label of method ``name``; the name itself for one not registered (a
    results folder may hold a method no longer installed)."""
    found = registry().get(name)
    return found.label if found is not None else name


def rank(names: Iterable[str]) -> dict[str, int]:
    """Each of ``names`` by its place in display order (see :func:`ordered`): a sort key for
    tables of runs."""
    return {name: i for i, name in enumerate(ordered(names))}


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in display order: registered methods by position, any others after them
    in the order given (a results folder may hold a method no longer installed)."""
    names = list(dict.fromkeys(names))
    known = [n for n in registry() if n in names]
    return known + [n for n in names if n not in known]
