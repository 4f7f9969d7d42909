"""Checkpoints that carry everything needed to rebuild and reuse a trained model.

The resolved config, the library version and the model's description travel with the
weights, so a checkpoint alone says how it was made and how to feed it images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mamlscope import __version__
from mamlscope.errors import CheckpointError
from mamlscope.io import atomic_path
from mamlscope.models import build_model

FORMAT = "mamlscope-checkpoint/1"
_ENTRIES = ("version", "spec", "method", "seed", "config", "state_dict")


@dataclass
class ModelSpec:
    """What `build_model` needs to rebuild a network (any registered ``arch``).

    ``options`` is the config's ``model.options``; checkpoints written before it existed
    have none in their spec and load with the default, empty.
    """

    arch: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    hidden: list[int] | None = None
    filters: int | None = None
    running_stats: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        model_cfg: dict[str, Any],
        in_shape: tuple[int, int, int],
        classes: int,
        running_stats: bool,
    ) -> ModelSpec:
        """The description of a run's network from its dataset's resolved ``model``
        section, its images' shape and its number of output classes."""
        return cls(
            arch=model_cfg["arch"],
            in_shape=in_shape,
            num_classes=classes,
            hidden=list(model_cfg["hidden"]),
            filters=model_cfg["filters"],
            running_stats=running_stats,
            options=dict(model_cfg.get("options") or {}),
        )

    def build(self) -> torch.nn.Module:
        """The network through the model registry (PyTorch's default init: seed first)."""
        return build_model(
            self.arch,
            self.in_shape,
            self.num_classes,
            hidden=self.hidden,
            filters=self.filters,
            running_stats=self.running_stats,
            options=self.options,
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and what was saved beside it."""

    model: torch.nn.Module
    spec: ModelSpec
    method: str
    seed: int
    config: dict[str, Any]
    version: str
    path: Path | None = None

    def require(self, *keys: str) -> None:
        """Fail with a CheckpointError naming the first dotted key its config lacks.

        Configs of other versions may lack a key a reader needs; checked up front, the
        user reads which one instead of a KeyError traceback.
        """
        for key in keys:
            node: Any = self.config
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise CheckpointError(
                        f"{self.path or 'checkpoint'}: its saved config lacks '{key}', which "
                        "evaluation needs (written by another version of mamlscope?)"
                    )
                node = node[part]


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    spec: ModelSpec,
    *,
    method: str,
    seed: int,
    config: dict[str, Any],
) -> None:
    """Write weights, model spec, method, seed, resolved dataset config and version."""
    payload = {
        "format": FORMAT,
        "version": __version__,
        "spec": vars(spec) | {"in_shape": list(spec.in_shape)},
        "method": method,
        "seed": seed,
        "config": config,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    """Load and rebuild; every way a file can be wrong gets a CheckpointError naming it."""
    path = Path(path)
    if path.is_dir():
        inside = " (give the model.pt inside it)" if (path / "model.pt").is_file() else ""
        raise CheckpointError(f"{path} is a directory, not a checkpoint file{inside}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or not written by mamlscope): {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mamlscope checkpoint (expected format {FORMAT})")
    missing = [key for key in _ENTRIES if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {missing}")
    try:
        raw = dict(payload["spec"])
        raw["in_shape"] = tuple(raw["in_shape"])
        spec = ModelSpec(**raw)
        model = spec.build()
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise CheckpointError(
            f"{path}: its model description cannot be rebuilt "
            f"(another architecture or version?): {exc}"
        ) from exc
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not fit a {spec.arch} model {spec.in_shape} -> "
            f"{spec.num_classes} classes (another architecture?): {exc}"
        ) from exc
    model.to(device).eval()
    return Checkpoint(
        model=model,
        spec=spec,
        method=payload["method"],
        seed=int(payload["seed"]),
        config=payload["config"],
        version=payload["version"],
        path=path,
    )
