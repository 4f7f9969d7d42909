"""What validating a config refuses, as one string: shared by the config tests."""

from __future__ import annotations

from typing import Any

import pytest

from mamlscope.config import validate_config
from mamlscope.errors import ConfigError


def refused(cfg: dict[str, Any]) -> str:
    """The message of the `ConfigError` that validating ``cfg`` raises (paths not checked)."""
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, check_paths=False)
    return str(info.value)
