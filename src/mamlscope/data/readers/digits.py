"""digits: scikit-learn's 1,797 8x8 digits, shipped with scikit-learn (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mamlscope.data.readers._common import digit_dataset
from mamlscope.data.readers.base import RawDataset, SourceEntry, fixed_examples


def read(cfg: dict[str, Any], data_root: Path, show: bool) -> RawDataset:
    """The 8x8 digits, their 0..16 grey levels scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return digit_dataset(cfg, [(images, digits.target, "train")], show)


SOURCE = SourceEntry(
    name="digits",
    read=read,
    description="scikit-learn's 1,797 8x8 digits (offline)",
    classes=10,
    examples=fixed_examples({"train": (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)}),
)
