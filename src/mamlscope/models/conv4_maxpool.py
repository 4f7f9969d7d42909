"""``conv4-maxpool``: Finn et al.'s (2017) MiniImagenet network (conv4 with max-pooling)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mamlscope.models.conv4 import conv_blocks
from mamlscope.models.layers import Network
from mamlscope.models.registry import ModelEntry


def build(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    running_stats: bool,
    config: Mapping[str, Any],
) -> Network:
    """4 x ``[3x3 conv, stride 1, padding 1 -> BatchNorm2d -> ReLU -> 2x2 max-pool]`` with
    ``filters`` (default 32), ``flatten``, ``head``. Layers ``conv1, bn1, relu1, pool1, ...,
    pool4, flatten, head``; images of at least 16x16."""
    return conv_blocks(
        in_shape,
        num_classes,
        filters=config.get("filters"),
        default_filters=32,
        running_stats=running_stats,
        maxpool=True,
        arch="conv4-maxpool",
    )


MODEL = ModelEntry(
    name="conv4-maxpool",
    build=build,
    description="Finn et al.'s MiniImagenet net: conv4 with stride 1 and 2x2 max-pooling",
    first_layer="conv1",
    tiny={"filters": 4},
)
