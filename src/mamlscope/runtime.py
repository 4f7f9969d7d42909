"""What every job sets up before it computes: the torch device, seeds and CPU threads."""

from __future__ import annotations

import numpy as np
import torch

from mamlscope.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is taken as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' asked for, but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch and numpy and ask for deterministic kernels, so CPU runs repeat bit for bit."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for torch (a job's `threads:`); None or 0 leaves torch's own."""
    if threads:
        torch.set_num_threads(threads)
