"""Layer activations under the model's BatchNorm policy, and their Parquet layout.

:func:`layer_activations` records the layers the model's registry entry names
(:func:`mamlscope.models.layer_names`; a module not built by the registry: its direct
children) by forward hooks that are removed whatever happens, so any registered network
works, residual ones included, and it stops after the last layer asked for. BatchNorm follows the
project policy (docs/architecture.md): ``batch_statistics=True`` for MAML models (every
BatchNorm normalises with the batch's own statistics, as during MAML's adaptation and
evaluation, so the result depends on the whole batch); ``False`` for the baseline (eval
mode, running statistics, examples independent).

Parquet layout (:func:`write_activations`), one row per (layer, stage, episode, example):

========== =================== ==========================================================
column     type                meaning
========== =================== ==========================================================
example_id int64               row of ``images.npy`` / ``index.parquet``
label      int64               the dataset's ``class_id`` (probe) or the episode label
stage      string              ``meta`` (the trained weights) or ``adapted`` (after the
                               inner loop on one episode's support set)
episode    int64               the test episode whose images these are (``-1``: the probe
                               set, stage ``meta`` only)
layer      string              child name in the network, e.g. ``fc2``, ``relu3``
values     list<float32>       the activation vector; every row of one (layer, stage) has
                               the same length (conv layers: channel means, see
                               :func:`summarise`; the baseline's ``head`` after adaptation
                               is its fresh N-way head)
========== =================== ==========================================================

Rows are grouped by layer, one Parquet row group per layer, so reading one layer
(``read_activations(path, layer)``) skips the others. Plain pandas reads it too:
``pd.read_parquet(path)``; :func:`layer_matrix` turns one layer into ``[N, F]``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.func import functional_call

from mamlscope import models
from mamlscope.errors import ConfigError, DataError
from mamlscope.io import atomic_path, read_parquet

STAGES = ("meta", "adapted")
COLUMNS = ("example_id", "label", "stage", "episode", "layer", "values")
SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("label", pa.int64()),
        ("stage", pa.string()),
        ("episode", pa.int64()),
        ("layer", pa.string()),
        ("values", pa.list_(pa.field("element", pa.float32()))),  # Parquet's own child name
    ],
    metadata={"mamlscope.format": "activations/1"},
)


def has_running_stats(model: nn.Module) -> bool:
    """Whether every BatchNorm in ``model`` tracks running statistics (the baseline)."""
    norms = [m for m in model.modules() if isinstance(m, models.BatchNorm)]
    return all(m.running_mean is not None for m in norms)


@contextlib.contextmanager
def bn_policy(model: nn.Module, *, batch_statistics: bool) -> Iterator[None]:
    """Run the block in eval mode with the BatchNorm policy; the mode is restored after.

    ``batch_statistics=False`` on a model without running statistics (a MAML model) would
    silently fall back to batch statistics, so it is refused.
    """
    if not batch_statistics and not has_running_stats(model):
        raise ConfigError(
            "this model has no BatchNorm running statistics (a MAML model); "
            "pass batch_statistics=True"
        )
    was_training = model.training
    model.eval()
    try:
        with models.batch_statistics() if batch_statistics else contextlib.nullcontext():
            yield
    finally:
        model.train(was_training)


def _check_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    names = models.layer_names(model)
    if layers is None:
        return names
    if isinstance(layers, str):
        layers = [layers]
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise ConfigError(f"unknown layer(s) {unknown}; this network has {names}")
    return list(dict.fromkeys(layers))


def _check_params(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Every name of ``params`` is a parameter or buffer of ``model``."""
    known = {name for name, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"params names {unknown} that the model lacks; it has {sorted(known)}")


def layer_activations(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    batch_statistics: bool,
    params: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Output of every recorded layer of ``model`` (or of ``layers``, in the order given).

    ``x`` is a normalised float batch ``[N, C, H, W]``. ``params`` (e.g. adapted weights
    from :func:`mamlscope.maml.adapt`, keyed like ``named_parameters``) replace the
    model's own via ``functional_call``; the model is not modified. Runs under the
    caller's grad mode (wrap in ``torch.no_grad()`` for analysis; saliency and
    activation maximisation differentiate through it). Unknown layer names raise
    :class:`~mamlscope.errors.ConfigError` listing the layers that exist.
    """
    wanted = _check_layers(model, layers)
    if params:
        _check_params(model, params)
        swapped = dict(params)
        forward = functools.partial(functional_call, model, swapped, (x,))
    else:
        forward = functools.partial(model, x)
    with bn_policy(model, batch_statistics=batch_statistics):
        return models.layer_outputs(model, wanted, forward)


def summarise(act: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean ``[N, C, H, W] -> [N, C]``; ``[N, F]`` passes through.

    The mean, not a flattening, keeps conv layers comparable across image sizes and small
    enough to store for every probe example and episode.
    """
    if act.dim() == 4:
        return act.mean(dim=(2, 3))  # [N, C]
    if act.dim() == 2:
        return act
    raise ValueError(f"expected activations [N, F] or [N, C, H, W]; got {tuple(act.shape)}")


def _as_matrix(act: torch.Tensor | np.ndarray, layer: str) -> np.ndarray:
    if isinstance(act, torch.Tensor):
        act = act.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(act, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(
            f"layer {layer!r} has activations of shape {arr.shape}; store [N, F] "
            "(apply summarise() to conv layers)"
        )
    return arr


def activations_frame(
    acts: Mapping[str, torch.Tensor | np.ndarray],
    example_ids: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    stage: str = "meta",
    episode: int = -1,
) -> pd.DataFrame:
    """Activations ``{layer: [N, F]}`` of the examples ``example_ids`` as rows of the layout."""
    ids = np.asarray(example_ids, dtype=np.int64)
    labs = np.asarray(labels, dtype=np.int64)
    if ids.shape != labs.shape or ids.ndim != 1:
        raise ValueError(f"example_ids {ids.shape} and labels {labs.shape} must be equal 1-D")
    parts = []
    for layer, act in acts.items():
        matrix = _as_matrix(act, layer)  # [N, F]
        if len(matrix) != len(ids):
            raise ValueError(f"layer {layer!r} has {len(matrix)} rows for {len(ids)} example ids")
        part = pd.DataFrame({"example_id": ids, "label": labs})
        part["stage"], part["episode"], part["layer"] = stage, np.int64(episode), layer
        part["values"] = list(matrix)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    _validate(frame)
    return frame


def _validate(frame: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"activation frame lacks column(s) {missing}; expected {list(COLUMNS)}")
    stages = set(frame["stage"].unique())
    if not stages <= set(STAGES):
        raise DataError(f"stage must be one of {list(STAGES)}; got {sorted(stages - set(STAGES))}")
    episode = frame["episode"].to_numpy(np.int64)
    is_meta = frame["stage"].to_numpy() == "meta"
    if (episode[is_meta] < -1).any() or (episode[~is_meta] < 0).any():
        raise DataError("episode must be >= -1 for stage 'meta' and >= 0 for stage 'adapted'")
    keys = ["layer", "stage", "episode", "example_id"]
    if frame.duplicated(keys).any():
        raise DataError(f"activation frame repeats a ({', '.join(keys)}) combination")


def _layer_table(rows: pd.DataFrame, layer: str) -> pa.Table:
    vectors = [np.asarray(v, dtype=np.float32).reshape(-1) for v in rows["values"]]
    lengths = np.array([len(v) for v in vectors], dtype=np.int64)
    stage = rows["stage"].to_numpy()
    for s in np.unique(stage):  # one array test per stage, not a .loc per row (4x faster)
        if np.unique(lengths[stage == s]).size > 1:
            raise DataError(f"layer {layer!r}: rows of one stage hold values of different lengths")
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = np.concatenate(vectors) if vectors else np.zeros(0, np.float32)
    values = pa.ListArray.from_arrays(offsets, pa.array(flat))
    columns = [
        pa.array(rows["example_id"].to_numpy(np.int64)),
        pa.array(rows["label"].to_numpy(np.int64)),
        pa.array(rows["stage"].astype(str).to_numpy(), pa.string()),
        pa.array(rows["episode"].to_numpy(np.int64)),
        pa.array(np.full(len(rows), layer, dtype=object), pa.string()),
        values,
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def write_activations(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write ``frame`` (the module's layout) atomically, one row group per layer."""
    _validate(frame)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
        for layer in dict.fromkeys(frame["layer"]):  # first-appearance order
            rows = frame[frame["layer"] == layer]
            writer.write_table(_layer_table(rows, layer), row_group_size=max(len(rows), 1))


def read_activations(path: str | os.PathLike[str], layer: str | None = None) -> pd.DataFrame:
    """The stored rows (of one ``layer``); an absent layer is an error naming those stored."""
    if layer is not None:
        stored = list(dict.fromkeys(pq.read_table(path, columns=["layer"])["layer"].to_pylist()))
        if layer not in stored:
            raise ConfigError(f"layer {layer!r} is not in {os.fspath(path)}; it holds {stored}")
        return read_parquet(path, filters=[("layer", "==", layer)])
    return read_parquet(path)


class LayerMatrix(NamedTuple):
    """One layer's activations as a matrix, rows sorted by example id."""

    example_ids: np.ndarray  # [N] int64
    labels: np.ndarray  # [N] int64
    values: np.ndarray  # [N, F] float32


def layer_matrix(
    frame: pd.DataFrame, layer: str, *, stage: str = "meta", episode: int = -1
) -> LayerMatrix:
    """One (layer, stage, episode) of a frame as ``[N, F]``, sorted by example id.

    Sorting makes two models' matrices for the same probe line up row by row (for CKA).
    """
    rows = frame[
        (frame["layer"] == layer) & (frame["stage"] == stage) & (frame["episode"] == episode)
    ]
    if rows.empty:
        held = frame[["layer", "stage", "episode"]].drop_duplicates().head(12)
        combos = list(held.itertuples(index=False, name=None))
        raise ConfigError(
            f"no rows for layer={layer!r}, stage={stage!r}, episode={episode}; "
            f"the frame holds (layer, stage, episode) such as {combos}"
        )
    rows = rows.sort_values("example_id", kind="stable")
    values = np.stack(list(rows["values"])).astype(np.float32, copy=False)  # [N, F]
    return LayerMatrix(
        rows["example_id"].to_numpy(np.int64), rows["label"].to_numpy(np.int64), values
    )
