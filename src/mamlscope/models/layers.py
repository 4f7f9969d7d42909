"""Small layers the built-in networks share, and :class:`Network`, their container."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from mamlscope.errors import ConfigError


class SpatialMean(nn.Module):
    """Mean over height and width: ``[B, C, H, W] -> [B, C]`` (Finn et al.'s conv4 pooling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # [B, C]


class FlattenLinear(nn.Linear):
    """``nn.Linear`` that first flattens ``[B, C, H, W]`` to ``[B, C*H*W]`` (the fc net's ``fc1``).

    Flattening inside the first layer, not in a separate child, keeps the fc layer names
    exactly ``fc1, bn1, relu1, ..., head`` while running the children in order still equals
    ``forward`` (code that walks ``named_children()`` to get features relies on that).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))  # [B, out]


class Network(nn.Sequential):
    """An ``nn.Sequential`` with stable layer names; ``forward`` runs the children in order.

    Sequential, so the task-batched MAML forward (:mod:`mamlscope.maml.batched_forward`)
    can run it layer by layer.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], *, arch: str) -> None:
        super().__init__(layers)
        self.arch = arch

    def layer_names(self) -> list[str]:
        """The layers the feature studies record, e.g. ``['conv1', 'bn1', ..., 'head']``."""
        from mamlscope.models.registry import layer_names

        return layer_names(self)


def positive_int(value: object, key: str) -> int:
    """``value`` if it is an integer >= 1 (not a bool), else a ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value
