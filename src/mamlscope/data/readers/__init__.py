"""Data sources as plug-ins: one module per source, each defining ``SOURCE = SourceEntry(...)``.

The built-ins: :mod:`~.mnist5k`, :mod:`~.digits`, :mod:`~.mnist`, :mod:`~.cifar10`,
:mod:`~.omniglot`, :mod:`~.imagefolder`; reading code they share is in :mod:`~._common`
and :mod:`mamlscope.data.archives`. A user's own package adds one through an entry point
in group ``mamlscope.sources`` (:mod:`~.registry`; docs/extending.md, "Add a dataset").
"""

from mamlscope.data.readers.base import (
    ANY_ORIGIN,
    SOURCE_KEYS,
    RawDataset,
    SourceEntry,
    fixed_examples,
    no_check,
)
from mamlscope.data.readers.registry import (
    GROUP,
    check_source_config,
    clear,
    source_entry,
    source_names,
)

__all__ = [
    "ANY_ORIGIN",
    "GROUP",
    "SOURCE_KEYS",
    "RawDataset",
    "SourceEntry",
    "check_source_config",
    "clear",
    "fixed_examples",
    "no_check",
    "source_entry",
    "source_names",
]
