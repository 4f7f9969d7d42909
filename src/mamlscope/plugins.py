"""Registries filled from this package's own modules and from other packages' entry points.

A method (:mod:`mamlscope.methods`) or a network (:mod:`mamlscope.models`) is one module
that defines one entry object under a fixed attribute name (``METHOD``, ``MODEL``). The
built-ins are every module of the registry's package; a user's own package adds more
without editing mamlscope by declaring an entry point in its ``pyproject.toml``::

    [project.entry-points."mamlscope.methods"]
    my-method = "my_package.my_method:METHOD"   # the entry object, or its module

:func:`load_registry` reads both and refuses two entries of one name, naming where each
came from.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, TypeVar

from mamlscope.errors import ConfigError

T = TypeVar("T")


class PluginError(ConfigError):
    """A registry entry that cannot be loaded or clashes with another."""


def _entry_of(obj: Any, attribute: str, kind: type[T], where: str) -> T:
    """``obj`` itself when it is a ``kind``, or its ``attribute`` (a module's entry)."""
    if isinstance(obj, ModuleType):
        obj = getattr(obj, attribute, None)
    if not isinstance(obj, kind):
        raise PluginError(
            f"{where}: expected a {kind.__name__} (or a module defining {attribute} = "
            f"{kind.__name__}(...)), got {type(obj).__name__}"
        )
    return obj


def _builtin(package: str, attribute: str, kind: type[T]) -> list[tuple[T, str]]:
    """The entry of every module of ``package`` that defines ``attribute``."""
    found = []
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        if hasattr(module, attribute):
            found.append((_entry_of(module, attribute, kind, module.__name__), module.__name__))
    return found


def _plugged(group: str, attribute: str, kind: type[T]) -> list[tuple[T, str]]:
    """The entry of every entry point of ``group`` in the installed distributions."""
    found = []
    for point in entry_points(group=group):
        where = _describe(point)
        try:
            obj = point.load()
        except Exception as exc:  # a plug-in's own import error: name the plug-in
            raise PluginError(f"{where} does not load: {type(exc).__name__}: {exc}") from exc
        found.append((_entry_of(obj, attribute, kind, where), where))
    return found


def _describe(point: EntryPoint) -> str:
    dist = f" of {point.dist.name}" if point.dist is not None else ""
    return f"entry point {point.name!r} ({point.value}){dist} in group {point.group!r}"


def load_registry(
    package: str, group: str, attribute: str, kind: type[T], name: Callable[[T], str]
) -> dict[str, T]:
    """Every entry by name: ``package``'s modules first, then ``group``'s entry points."""
    table: dict[str, T] = {}
    origin: dict[str, str] = {}
    for entry, where in [
        *_builtin(package, attribute, kind),
        *_plugged(group, attribute, kind),
    ]:
        key = name(entry)
        if key in table:
            if table[key] is entry:  # an entry point naming a built-in module again
                continue
            raise PluginError(f"two entries are named {key!r}: {origin[key]} and {where}")
        table[key], origin[key] = entry, where
    return table
