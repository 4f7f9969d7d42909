"""What a source declares before reading against what it reads (shared by the source tests)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mamlscope.data.facts import known_classes, known_sizes
from mamlscope.data.readers import ANY_ORIGIN, RawDataset
from mamlscope.data.sources import resolve_config


def check_declared_counts(ds_cfg: dict[str, Any], raw: RawDataset) -> None:
    """The source's `classes` and `examples` (per origin, in class order) are what `raw` has."""
    ds = resolve_config(ds_cfg)
    classes = sorted(set(raw.class_names))
    declared = known_classes(ds["source"])
    assert declared is None or declared == len(classes)
    sizes = known_sizes(ds)
    assert sizes is not None, f"{ds['source']} declares no counts for {ds_cfg}"
    if ANY_ORIGIN in sizes:  # every class, whichever origin
        assert set(Counter(raw.class_names).values()) == set(sizes[ANY_ORIGIN].tolist())
        return
    assert set(sizes) == set(raw.origins)
    for origin, counts in sizes.items():
        read = Counter(c for c, o in zip(raw.class_names, raw.origins, strict=True) if o == origin)
        assert [read[c] for c in classes] == counts.tolist(), origin
