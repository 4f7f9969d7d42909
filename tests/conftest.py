"""Shared fixtures: where the real data lives, and skipping cleanly when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`MAMLSCOPE_SHARED_DATA` if set, else `../shared/data` beside the checkout."""
    return Path(os.environ.get("MAMLSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; the test is skipped when it is absent (CI sets it, so CI runs it)."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("MAMLSCOPE_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"MAMLSCOPE_REQUIRE_SHARED_DATA=1 but {path} does not exist")
        pytest.skip(f"real data not found at {path}")
    return path
