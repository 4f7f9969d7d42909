"""``conv4``: Finn et al.'s (2017) Omniglot network, and the blocks it shares with
``conv4-maxpool`` (:mod:`mamlscope.models.conv4_maxpool`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn

from mamlscope.errors import ConfigError
from mamlscope.gates import MaxPool2d, ReLU
from mamlscope.models.batchnorm import BatchNorm2d
from mamlscope.models.layers import Network, SpatialMean, positive_int
from mamlscope.models.registry import ModelEntry


def conv_blocks(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    filters: int | None,
    default_filters: int,
    running_stats: bool,
    maxpool: bool,
    arch: str,
) -> Network:
    """Four ``3x3 conv -> BatchNorm2d -> ReLU`` blocks, then ``head``.

    ``maxpool=False``: stride 2, mean over space (``pool``); ``True``: stride 1 and a 2x2
    max-pool per block, ``flatten``. ``filters`` channels per block (``None``: the default).
    """
    filters = default_filters if filters is None else positive_int(filters, "filters")
    channels, height, width = in_shape
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(1, 5):
        stride = 1 if maxpool else 2
        layers[f"conv{i}"] = nn.Conv2d(channels, filters, 3, stride=stride, padding=1)
        layers[f"bn{i}"] = BatchNorm2d(filters, track_running_stats=running_stats)
        layers[f"relu{i}"] = ReLU()
        channels = filters
        if maxpool:
            layers[f"pool{i}"] = MaxPool2d(2)
            height, width = height // 2, width // 2
        else:
            height, width = (height + 1) // 2, (width + 1) // 2
    if maxpool:
        if height < 1 or width < 1:
            raise ConfigError(
                f"conv4-maxpool needs images of at least 16x16 (four 2x2 max-pools); got "
                f"{in_shape[1]}x{in_shape[2]}. Use arch 'conv4' or a larger image_size."
            )
        layers["flatten"] = nn.Flatten()
        features = filters * height * width
    else:
        layers["pool"] = SpatialMean()
        features = filters
    layers["head"] = nn.Linear(features, num_classes)
    return Network(layers, arch=arch)


def build(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    running_stats: bool,
    config: Mapping[str, Any],
) -> Network:
    """4 x ``[3x3 conv, stride 2, padding 1 -> BatchNorm2d -> ReLU]`` with ``filters``
    (default 64) channels, mean over space (``pool``), ``head``. Layers ``conv1, bn1,
    relu1, ..., conv4, bn4, relu4, pool, head``."""
    return conv_blocks(
        in_shape,
        num_classes,
        filters=config.get("filters"),
        default_filters=64,
        running_stats=running_stats,
        maxpool=False,
        arch="conv4",
    )


MODEL = ModelEntry(
    name="conv4",
    build=build,
    description=(
        "Finn et al.'s Omniglot net: 4 x [3x3 conv stride 2, BatchNorm, ReLU], mean over space"
    ),
    first_layer="conv1",
    tiny={"filters": 4},
)
