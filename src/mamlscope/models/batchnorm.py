"""A BatchNorm safe for MAML, and the contexts that choose its statistics.

BatchNorm policy
----------------
:class:`BatchNorm` is written from elementary tensor ops instead of using ``nn.BatchNorm2d``:
``nn.BatchNorm2d`` in batch-statistics mode under ``torch.func.vmap`` of ``grad`` of ``grad``
was measured in this project to give a silently wrong second-order gradient, and MAML's
meta-gradient is exactly such a gradient. (A re-check of a small conv net, vmap vs a
per-task loop, float32 and float64, did not reproduce it with torch 2.11 on CUDA and CPU or
2.14.1 on CPU, so it may depend on the version or kernel path.) Mean, subtract, square,
mean, rsqrt differentiate exactly to any order under every transform, independent of a
fused kernel's double backward; ``tests/test_maml.py`` checks that on every strategy.

* It uses batch statistics when the module is in training mode, when it tracks no running
  statistics, or inside :func:`batch_statistics` (always used by :mod:`mamlscope.maml`).
  MAML uses batch statistics during adaptation *and* evaluation, as Finn et al. (2017) did
  (transductive: the queries of an episode are normalised together); inside
  :func:`statistics_from_first` the statistics come from the first rows only, which lets
  evaluation normalise each query with the support set's statistics instead;
  the standard-training baseline builds with ``running_stats=True``, trains in training
  mode and evaluates in eval mode with the running statistics.
* Running statistics are updated only in training mode, outside :func:`batch_statistics`.
  An in-place buffer update inside ``vmap``/``grad``/``functional_call`` would either fail or
  leak a traced value, so MAML models are built with ``running_stats=False`` and
  :mod:`mamlscope.maml` runs every forward inside :func:`batch_statistics`, which never
  writes buffers, whatever the model.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call

_FORCE_BATCH_STATS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "mamlscope_force_batch_stats", default=False
)
# Inside `statistics_from_first(n)`: BatchNorm's batch statistics come from the first n rows.
_REFERENCE_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "mamlscope_reference_rows", default=None
)


@contextlib.contextmanager
def batch_statistics() -> Iterator[None]:
    """Inside this block every :class:`BatchNorm` uses batch statistics and writes no buffer.

    Safe under ``torch.func`` transforms: the flag is read eagerly in Python while tracing.
    """
    token = _FORCE_BATCH_STATS.set(True)
    try:
        yield
    finally:
        _FORCE_BATCH_STATS.reset(token)


@contextlib.contextmanager
def statistics_from_first(rows: int) -> Iterator[None]:
    """Inside this block BatchNorm's batch statistics come from the first ``rows`` examples.

    Evaluation without transduction: run ``[support; queries]`` as one batch and every
    query is normalised with the support set's statistics, so no query's prediction
    depends on the other queries (Bronskill et al. 2020 discuss why transductive batch
    statistics flatter few-shot accuracy). Read eagerly in Python, so safe under ``vmap``.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    token = _REFERENCE_ROWS.set(rows)
    try:
        yield
    finally:
        _REFERENCE_ROWS.reset(token)


def reference_rows() -> int | None:
    """The row count set by :func:`statistics_from_first`, or ``None`` (all rows)."""
    return _REFERENCE_ROWS.get()


def batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dims: tuple[int, ...],
    eps: float,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalise ``x`` over ``dims`` with batch statistics, then scale and shift.

    The statistics are those of ``reference`` (a slice of ``x`` along the batch dim) when
    given, else of ``x`` itself. ``weight``/``bias`` must broadcast against ``x``. The
    biased variance is used, as ``nn.BatchNorm`` does for normalisation. Shared by
    :class:`BatchNorm` and the task-batched forward of :mod:`mamlscope.maml.batched_forward`,
    so both compute the same function.
    """
    if reference is None:
        mean = x.mean(dim=dims, keepdim=True)  # x with dims reduced to 1
        centred = x - mean
        var = (centred * centred).mean(dim=dims, keepdim=True)
        return centred * torch.rsqrt(var + eps) * weight + bias
    mean = reference.mean(dim=dims, keepdim=True)
    ref_centred = reference - mean
    var = (ref_centred * ref_centred).mean(dim=dims, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


class BatchNorm(nn.Module):
    """BatchNorm over dim 0 and every dim after the channel dim, from elementary ops.

    Same parameters, buffers and numerics as ``nn.BatchNorm1d``/``2d`` (affine, biased variance
    for normalising, unbiased for the running variance) but exact under higher-order
    ``torch.func`` transforms; see the module docstring for the policy.
    """

    running_mean: torch.Tensor | None  # buffers, None without running statistics
    running_var: torch.Tensor | None

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)

    def _shape(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Reduction dims and the broadcast shape of a per-channel vector for input ``x``."""
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm({self.num_features}) got input of shape {tuple(x.shape)}; "
                f"expected [batch, {self.num_features}, ...]"
            )
        dims = (0, *range(2, x.dim()))
        return dims, (1, self.num_features) + (1,) * (x.dim() - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims, shape = self._shape(x)
        weight, bias = self.weight.view(shape), self.bias.view(shape)  # [1, C, 1, ...]
        forced = _FORCE_BATCH_STATS.get()
        stats = self._running_stats()
        if forced or self.training or stats is None:
            rows = _REFERENCE_ROWS.get() if forced else None
            reference = None if rows is None else x[:rows]  # [rows, C, ...]
            out = batch_norm(x, weight, bias, dims, self.eps, reference)
            if self.training and not forced and stats is not None:
                self._update_running_stats(x, dims, *stats)
            return out
        mean, var = stats[0].view(shape), stats[1].view(shape)  # [1, C, 1, ...]
        return (x - mean) * torch.rsqrt(var + self.eps) * weight + bias

    def _running_stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The running mean and variance buffers; None when this layer tracks none."""
        if self.running_mean is None or self.running_var is None:
            return None
        return self.running_mean, self.running_var

    @torch.no_grad()
    def _update_running_stats(
        self,
        x: torch.Tensor,
        dims: tuple[int, ...],
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
    ) -> None:
        count = x.numel() // self.num_features
        mean = x.mean(dim=dims)  # [C]
        var = x.var(dim=dims, unbiased=count > 1)  # [C]
        running_mean.lerp_(mean, self.momentum)
        running_var.lerp_(var, self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(BatchNorm):
    """:class:`BatchNorm` for ``[batch, features]`` inputs."""


class BatchNorm2d(BatchNorm):
    """:class:`BatchNorm` for ``[batch, channels, height, width]`` inputs."""


def functional_forward(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """``model(x)`` with ``params``/``buffers`` swapped in and batch statistics in every BN.

    The forward of every MAML computation: pure, so safe under ``torch.func`` transforms.
    """
    with batch_statistics():
        return functional_call(model, (params, buffers), (x,))
