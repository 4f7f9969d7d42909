"""What each source is known to hold before it is read: classes and examples per class.

The config check (:func:`mamlscope.config.validate_config`) uses these to refuse an
episode shape the pools cannot give before any job starts. Each source declares them in
its :class:`~mamlscope.data.readers.SourceEntry` (``classes``, ``examples``); where one is
None, its checks wait for the split job, which sees the real pools.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mamlscope.data.readers import ANY_ORIGIN, source_entry
from mamlscope.plugins import PluginError


def known_classes(source: str) -> int | None:
    """Base classes (before rotation augmentation) of ``source``, or None if not known."""
    return source_entry(source).classes


def known_sizes(ds: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """Examples per base class by origin that the dataset config ``ds`` reads, where its
    source fixes them (origin ``"*"``: every class, whichever origin), else None."""
    entry = source_entry(ds["source"])
    table = entry.examples(ds) if entry.examples is not None else None
    if table is None:
        return None
    sizes = {origin: np.asarray(counts, dtype=np.int64) for origin, counts in table.items()}
    shapes = {counts.shape for counts in sizes.values()}
    classes = 1 if ANY_ORIGIN in sizes else entry.classes
    one_length = len(shapes) == 1 and len(next(iter(shapes))) == 1  # 1-D, alike per origin
    if not one_length or (classes is not None and shapes != {(classes,)}):
        raise PluginError(
            f"source {entry.name!r}: its examples() gave {table!r}; give each origin one "
            f"count per class ({classes or 'as many in each origin'}), or "
            f"{{{ANY_ORIGIN!r}: (n,)}} when every class has n images whichever origin"
        )
    return sizes
