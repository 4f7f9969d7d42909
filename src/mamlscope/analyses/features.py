"""Penultimate features of an episode's images under one BatchNorm mode, without adaptation.

The analyses that read frozen features (nearest centroid, the baseline's fresh head) must
normalise exactly as the model's evaluation would, or a difference in accuracy could be a
difference in normalisation. The modes (:data:`FEATURE_MODES`):

* ``"transductive"``: the support set with its own batch statistics and the queries with
  theirs, per episode (Finn et al.'s evaluation);
* ``"support"``: support and queries in one batch whose statistics come from the support
  rows, so every query is normalised with its episode's support-set statistics;
* ``"running"``: eval mode, the running statistics from training (only networks that keep
  them: standard training's); episodes are then independent by construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import register_module_forward_hook

from mamlscope.errors import ConfigError
from mamlscope.finetune import features_of
from mamlscope.models import batch_norm, batch_statistics, reference_rows, statistics_from_first

FEATURE_MODES = ("transductive", "support", "running")


def has_running_statistics(model: nn.Module) -> bool:
    """Whether any normalisation layer of ``model`` keeps running statistics (eval mode
    then reads them): what decides if the ``"running"`` mode exists for it."""
    return any(isinstance(getattr(m, "running_mean", None), torch.Tensor) for m in model.modules())


def feature_modes(model: nn.Module, batchnorm: list[str] | tuple[str, ...]) -> list[str]:
    """The configured batch-statistics modes, plus ``"running"`` where ``model`` has
    running statistics (once, after the others)."""
    modes = [m for m in batchnorm if m != "running"]
    return [*modes, "running"] if has_running_statistics(model) else modes


@torch.no_grad()
def episode_features(
    model: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor, batchnorm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query features ``[E, N*K, F]``, ``[E, N*Q, F]`` of a batch of episodes
    (``[E, N*K, C, H, W]``, ``[E, N*Q, C, H, W]``) under ``batchnorm``; the model is not
    changed (batch-statistics modes write no buffer)."""
    if batchnorm not in FEATURE_MODES:
        raise ConfigError(f"batchnorm must be one of {list(FEATURE_MODES)}, got {batchnorm!r}")
    episodes, n_support = support_x.shape[:2]
    if batchnorm == "running":
        if not has_running_statistics(model):
            raise ConfigError(
                f"batchnorm 'running' needs running statistics, which this "
                f"{type(model).__name__} does not keep (a meta-learned network); use "
                "'transductive' or 'support'"
            )
        model.eval()
        fs = features_of(model, support_x.flatten(0, 1)).unflatten(0, (episodes, n_support))
        fq = features_of(model, query_x.flatten(0, 1)).unflatten(0, (episodes, -1))
        return fs, fq
    model.eval()  # a torch BatchNorm that tracks statistics must not update them here
    per_episode = vmap(lambda x: features_of(model, x))  # batch statistics of each episode
    with batch_statistics(), _torch_norms_on_batch():
        if batchnorm == "transductive":
            return per_episode(support_x), per_episode(query_x)
        with statistics_from_first(n_support):
            both = per_episode(torch.cat([support_x, query_x], dim=1))
    return both[:, :n_support], both[:, n_support:]


def _on_batch(module: nn.Module, args: tuple[object, ...], output: object) -> object:
    """A torch BatchNorm's output normalised with batch statistics (of the first
    ``reference_rows()`` rows when set), whatever its mode and running statistics."""
    if not isinstance(module, _BatchNorm) or not args:
        return None
    x = args[0]
    assert isinstance(x, torch.Tensor)
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)  # per channel, broadcast over [B, C, ...]
    weight = x.new_ones(shape) if module.weight is None else module.weight.view(shape)
    bias = x.new_zeros(shape) if module.bias is None else module.bias.view(shape)
    rows = reference_rows()
    reference = None if rows is None else x[:rows]
    return batch_norm(x, weight, bias, (0, *range(2, x.dim())), module.eps, reference)


@contextlib.contextmanager
def _torch_norms_on_batch() -> Iterator[None]:
    """Torch's own BatchNorm layers normalise with batch statistics inside this block, as
    mamlscope's do inside :func:`~mamlscope.models.batch_statistics` (a baseline built from
    torch layers would otherwise read its running statistics in eval mode)."""
    handle = register_module_forward_hook(_on_batch)  # type: ignore[arg-type]
    try:
        yield
    finally:
        handle.remove()
