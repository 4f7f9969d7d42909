"""Plain torch models as a new user would build them (torch's own layers), for the MAML
tests: Sequentials, a residual module and one with kinks in its own forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WAY = 3


def conv_sequential() -> nn.Module:
    """The bug report's model: torch's own layers only."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, WAY),
    )


def dense_sequential() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.BatchNorm1d(16, track_running_stats=False),
        nn.LeakyReLU(0.1),
        nn.Linear(16, WAY),
    )


class Residual(nn.Module):
    """Not an nn.Sequential: a skip connection, an in-place ReLU, LeakyReLU, max-pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6, track_running_stats=False)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6, track_running_stats=False)
        self.leaky = nn.LeakyReLU(0.2)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(6 * 4 * 4, WAY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.stem(x)))  # [B, 6, 8, 8]
        h = self.leaky(self.bn2(self.conv(h)) + h)  # the skip connection
        return self.head(self.pool(h).flatten(1))  # [B, WAY]


class FunctionalKinks(Residual):
    """Kinks no module holds: ``clamp`` and ``F.relu`` in the forward itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.stem(x)).clamp(min=0)
        h = F.relu(self.bn2(self.conv(h)) + h)
        return self.head(self.pool(h).flatten(1))
