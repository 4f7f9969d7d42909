"""``fc``: the original project's fully connected net (hidden layers with BatchNorm and ReLU)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import nn

from mamlscope.errors import ConfigError
from mamlscope.gates import ReLU
from mamlscope.models.batchnorm import BatchNorm1d
from mamlscope.models.layers import FlattenLinear, Network, positive_int
from mamlscope.models.registry import ModelEntry

HIDDEN_DEFAULT = [256, 128, 64, 64]


def build(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    running_stats: bool,
    config: Mapping[str, Any],
) -> Network:
    """Flatten, then per width of ``hidden`` (default ``[256, 128, 64, 64]``) ``Linear ->
    BatchNorm1d -> ReLU``, then ``head``. Layers ``fc1, bn1, relu1, ..., head``."""
    hidden = config.get("hidden")
    widths = HIDDEN_DEFAULT if hidden is None else list(hidden)
    if not widths:
        raise ConfigError("hidden must list at least one width for arch 'fc'")
    for w in widths:
        positive_int(w, "hidden width")
    channels, height, width = in_shape
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    size = channels * height * width
    for i, h in enumerate(widths, start=1):
        layers[f"fc{i}"] = (FlattenLinear if i == 1 else nn.Linear)(size, h)
        layers[f"bn{i}"] = BatchNorm1d(h, track_running_stats=running_stats)
        layers[f"relu{i}"] = ReLU()
        size = h
    layers["head"] = nn.Linear(size, num_classes)
    return Network(layers, arch="fc")


MODEL = ModelEntry(
    name="fc",
    build=build,
    description=(
        "the original project's fully connected net: hidden layers, each with BatchNorm and ReLU"
    ),
    first_layer="fc1",
    tiny={"hidden": [16, 8]},
)
