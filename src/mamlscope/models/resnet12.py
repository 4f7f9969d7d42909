"""``resnet12``: the ResNet-12 of the mini-ImageNet literature (Oreshkin et al. 2018, TADAM;
Lee et al. 2019, MetaOptNet).

Four residual blocks, each three ``3x3 conv (no bias) -> BatchNorm2d -> LeakyReLU(0.1)``
(the third without its LeakyReLU), plus a ``1x1 conv -> BatchNorm2d`` shortcut; the sum,
a LeakyReLU(0.1) and a 2x2 max-pool. Widths ``options.channels`` (default
``[64, 160, 320, 640]``), then the mean over space (``pool``) and ``head``. PyTorch's
default initialisation (as every mamlscope network; MetaOptNet draws He-normal conv
weights), no DropBlock: MAML's inner loop adapts every weight and would adapt the noise.

BatchNorm is mamlscope's (exact under ``vmap`` of ``grad``; running statistics as asked);
the gates are torch's own ``nn.LeakyReLU`` and ``nn.MaxPool2d``. Not an ``nn.Sequential``,
so MAML runs it with the ``vmap`` strategy. The feature studies record each block's
output (``block1`` ... ``block4``), ``pool`` and ``head``; the filters figure shows
``block1.conv1``. Images of at least 16x16 (four 2x2 max-pools).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mamlscope.errors import ConfigError
from mamlscope.models.batchnorm import BatchNorm2d
from mamlscope.models.layers import SpatialMean
from mamlscope.models.registry import ModelEntry

CHANNELS_DEFAULT = [64, 160, 320, 640]
SLOPE = 0.1  # LeakyReLU's negative slope (MetaOptNet, TADAM)


class ResidualBlock(nn.Module):
    """Three 3x3 convs with BatchNorm, a 1x1 conv + BatchNorm shortcut, sum, LeakyReLU,
    2x2 max-pool: ``[B, C, H, W] -> [B, width, H // 2, W // 2]``."""

    # Registered by name in __init__'s loop (that order fixes the state-dict keys).
    conv1: nn.Conv2d
    conv2: nn.Conv2d
    conv3: nn.Conv2d
    bn1: BatchNorm2d
    bn2: BatchNorm2d
    bn3: BatchNorm2d
    relu1: nn.LeakyReLU
    relu2: nn.LeakyReLU

    def __init__(self, channels: int, width: int, *, running_stats: bool) -> None:
        super().__init__()
        for i, c_in in enumerate((channels, width, width), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(c_in, width, 3, padding=1, bias=False))
            self.add_module(f"bn{i}", BatchNorm2d(width, track_running_stats=running_stats))
            if i < 3:
                self.add_module(f"relu{i}", nn.LeakyReLU(SLOPE))
        self.shortcut = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(channels, width, 1, bias=False),
                bn=BatchNorm2d(width, track_running_stats=running_stats),
            )
        )
        self.relu = nn.LeakyReLU(SLOPE)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu1(self.bn1(self.conv1(x)))  # [B, width, H, W]
        h = self.relu2(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.pool(self.relu(h + self.shortcut(x)))  # [B, width, H // 2, W // 2]


class ResNet12(nn.Module):
    """``block1`` ... ``block4``, ``pool`` (mean over space), ``head``."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        channels: list[int],
        *,
        running_stats: bool,
    ) -> None:
        super().__init__()
        c = in_shape[0]
        for i, width in enumerate(channels, start=1):
            self.add_module(f"block{i}", ResidualBlock(c, width, running_stats=running_stats))
            c = width
        self.pool = SpatialMean()
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 5):
            x = self.get_submodule(f"block{i}")(x)  # [B, C_i, H / 2^i, W / 2^i]
        return self.head(self.pool(x))  # [B, classes]


def build(
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    running_stats: bool,
    config: Mapping[str, Any],
) -> ResNet12:
    """ResNet-12 with ``config["options"]["channels"]`` (default ``[64, 160, 320, 640]``)."""
    if min(in_shape[1:]) < 16:
        raise ConfigError(
            f"resnet12 needs images of at least 16x16 (four 2x2 max-pools); got "
            f"{in_shape[1]}x{in_shape[2]}. Use a larger image_size or arch 'conv4'."
        )
    channels = list(config.get("options", {}).get("channels", CHANNELS_DEFAULT))
    return ResNet12(in_shape, num_classes, channels, running_stats=running_stats)


MODEL = ModelEntry(
    name="resnet12",
    build=build,
    description="ResNet-12 (Lee et al. 2019): 4 residual blocks, LeakyReLU, max-pool",
    layers=lambda model: ["block1", "block2", "block3", "block4", "pool", "head"],
    first_layer="block1.conv1",
    options_schema={
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "channels": {
                "type": "array",
                "items": {"type": "integer", "minimum": 1, "maximum": 4096},
                "minItems": 4,
                "maxItems": 4,
                "default": CHANNELS_DEFAULT,
                "description": "the widths of the four residual blocks",
            }
        },
    },
    tiny={"options": {"channels": [4, 4, 8, 8]}},
)
