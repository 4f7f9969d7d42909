"""The `cka` job: how much each layer's representation moves in adaptation, and how the
models' layers relate. A description (linear CKA, :func:`mamlscope.similarity.linear_cka`),
not a verdict: which of feature reuse or rapid learning holds is read from accuracy.

One table, one file, one row per compared pair of layers (:data:`COLUMNS`):

* stage ``meta``: every layer of the reference model (the method declared
  ``cka_reference``, standard training) against every layer of each other model, on the
  probe set (the same images for every model); ``cka`` is that one number.
* stage ``adaptation``: each layer of each model before against after adaptation, computed
  per recorded test episode, on that episode's support and query images (adapted on its
  own support labels), then summarised over the episodes: ``cka`` is the mean,
  ``low``/``high`` a 95% BCa bootstrap interval over episodes (scipy.stats.bootstrap, fixed
  seed, so the file is deterministic), ``episodes`` how many episodes had a defined CKA,
  and ``episode_ids``/``episode_cka`` the per-episode values (:func:`episode_values` lists
  them one row each).

Why per episode: the labels of a test episode are a fresh permutation of its classes, so
an adapted head's unit ``k`` means a different class in each episode. Pooling the images
of several episodes into one CKA mixes those meanings: for the baseline's fresh head,
pooled CKA before against after is near 0 where each episode's own is near 1.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.figure import Figure
from scipy import stats

from mamlscope.errors import DataError
from mamlscope.features import figures
from mamlscope.features.activations import read_activations
from mamlscope.io import atomic_path
from mamlscope.methods import label as method_label
from mamlscope.methods import method as lookup_method
from mamlscope.methods import ordered
from mamlscope.similarity import cka_matrix, linear_cka

COLUMNS = (
    "dataset",
    "seed",
    "model_a",
    "model_b",
    "layer_a",
    "layer_b",
    "stage",
    "cka",
    "low",
    "high",
    "episodes",
    "episode_ids",
    "episode_cka",
)
SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("seed", pa.int64()),
        ("model_a", pa.string()),
        ("model_b", pa.string()),
        ("layer_a", pa.string()),
        ("layer_b", pa.string()),
        ("stage", pa.string()),
        ("cka", pa.float64()),
        ("low", pa.float64()),
        ("high", pa.float64()),
        ("episodes", pa.int64()),
        ("episode_ids", pa.list_(pa.int64())),
        ("episode_cka", pa.list_(pa.float64())),
    ]
)
CONFIDENCE = 0.95
RESAMPLES = 9999
BOOTSTRAP_SEED = 0


def _probe_layers(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each layer's probe rows (episode -1) as ``[N, F]``, rows sorted by example id."""
    probe = frame[frame["episode"] == -1].sort_values("example_id", kind="stable")
    return {
        str(layer): np.stack(list(rows["values"])).astype(np.float32, copy=False)
        for layer, rows in probe.groupby("layer", sort=False)
    }


def _by_episode(rows: pd.DataFrame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One (layer, stage)'s rows as ``{episode: (example ids [N], values [N, F])}``, rows
    sorted by example id; stacked once for every episode (the cost is the stacking)."""
    if rows.empty:
        return {}
    rows = rows.sort_values(["episode", "example_id"], kind="stable")
    values = np.stack(rows["values"].to_list()).astype(np.float32, copy=False)  # [R, F]
    ids = rows["example_id"].to_numpy(np.int64)
    episodes, starts = np.unique(rows["episode"].to_numpy(np.int64), return_index=True)
    ends = [*starts[1:], len(rows)]
    return {int(e): (ids[a:b], values[a:b]) for e, a, b in zip(episodes, starts, ends, strict=True)}


def episode_cka(frame: pd.DataFrame) -> pd.DataFrame:
    """``layer, episode, cka``: each layer before against after adaptation, one row per
    recorded test episode, on that episode's support and query images.

    ``frame`` is one model's activations (:mod:`mamlscope.features.activations` layout).
    NaN where either side is constant over the episode's images (see
    :mod:`mamlscope.similarity`). A (layer, episode) recorded after adaptation but not
    before, or on other images, is a :class:`~mamlscope.errors.DataError`.
    """
    recorded = frame[frame["episode"] >= 0]
    rows = []
    for layer, part in recorded.groupby("layer", sort=False):
        is_adapted = (part["stage"] == "adapted").to_numpy()
        if not is_adapted.any():
            continue
        after = _by_episode(part[is_adapted])
        before = _by_episode(part[~is_adapted])
        for episode, (ids_after, values_after) in after.items():
            if episode not in before:
                raise DataError(
                    f"layer {layer!r}, episode {episode}: recorded after adaptation but not before"
                )
            ids_before, values_before = before[episode]
            if not np.array_equal(ids_before, ids_after):
                raise DataError(
                    f"layer {layer!r}, episode {episode}: the images before and after "
                    "adaptation differ; CKA compares the same images"
                )
            rows.append((layer, episode, linear_cka(values_before, values_after)))
    out = pd.DataFrame(rows, columns=["layer", "episode", "cka"])
    return out.astype({"layer": str, "episode": np.int64, "cka": np.float64})


def mean_interval(values: Iterable[float]) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the finite ``values``: their mean and its
    :data:`CONFIDENCE` BCa bootstrap interval (:data:`RESAMPLES` resamples, seed
    :data:`BOOTSTRAP_SEED`: the same values give the same interval; the percentile
    interval where BCa is undefined).

    NaN values (undefined CKA) are left out and not counted. No finite value: all NaN and
    ``n = 0``; one: the interval is NaN (nothing to resample); all equal: every resample
    has that mean, so the interval is that point.
    """
    finite = np.asarray(list(values), dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    n = len(finite)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(finite.mean())
    if n == 1:
        return mean, float("nan"), float("nan"), 1
    if np.ptp(finite) == 0:
        return mean, mean, mean, n
    low, high = _bootstrap(finite, "BCa")
    if not (np.isfinite(low) and np.isfinite(high)):
        # BCa's acceleration is 0/0 when the values differ only by rounding (a layer that
        # adaptation leaves unchanged): the percentile interval is defined there.
        low, high = _bootstrap(finite, "percentile")
    return mean, float(low), float(high), n


def _bootstrap(values: np.ndarray, method: str) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in BCa, reported as NaN
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (values,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method=method,
            random_state=np.random.default_rng(BOOTSTRAP_SEED),
        )
    low, high = result.confidence_interval
    return float(low), float(high)


def adaptation_cka(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per layer: ``layer, cka`` (mean over episodes), ``low, high, episodes,
    episode_ids, episode_cka`` (module docstring), from :func:`episode_cka`."""
    rows = []
    for layer, part in episode_cka(frame).groupby("layer", sort=False):
        mean, low, high, n = mean_interval(part["cka"])
        rows.append(
            dict(
                layer=layer,
                cka=mean,
                low=low,
                high=high,
                episodes=n,
                episode_ids=part["episode"].tolist(),
                episode_cka=part["cka"].tolist(),
            )
        )
    names = ["layer", "cka", "low", "high", "episodes", "episode_ids", "episode_cka"]
    return pd.DataFrame(rows, columns=names)


def episode_values(table: pd.DataFrame) -> pd.DataFrame:
    """The per-episode values of a CKA table's ``adaptation`` rows, one row each:
    ``dataset, seed, model, layer, episode, cka``."""
    part = table[table["stage"] == "adaptation"]
    long = part.explode(["episode_ids", "episode_cka"], ignore_index=True).dropna(
        subset=["episode_ids"]
    )
    out = long.rename(
        columns={"model_a": "model", "layer_a": "layer", "episode_ids": "episode"}
    ).assign(cka=long["episode_cka"])
    out = out[["dataset", "seed", "model", "layer", "episode", "cka"]]
    return out.astype({"episode": np.int64, "cka": np.float64}).reset_index(drop=True)


def reference_model(methods: Iterable[str]) -> str | None:
    """The first of ``methods`` (in display order) that CKA compares the others against."""
    return next((m for m in ordered(methods) if lookup_method(m).cka_reference), None)


def cka_table(
    activations: Mapping[str, str | os.PathLike[str]], *, dataset: str, seed: int
) -> pd.DataFrame:
    """Both stages (module docstring) for the models given as ``{method: activations file}``."""
    frames = {method: read_activations(path) for method, path in activations.items()}
    parts = []
    reference = reference_model(frames)
    if reference is not None:
        base = _probe_layers(frames[reference])
        for method in ordered(frames):
            if method == reference:
                continue
            part = cka_matrix(base, _probe_layers(frames[method]))
            parts.append(
                part.assign(
                    model_a=reference,
                    model_b=method,
                    stage="meta",
                    low=np.nan,
                    high=np.nan,
                    episodes=0,
                    episode_ids=[[] for _ in range(len(part))],
                    episode_cka=[[] for _ in range(len(part))],
                )
            )
    for method in ordered(frames):
        part = adaptation_cka(frames[method]).rename(columns={"layer": "layer_a"})
        part["layer_b"] = part["layer_a"]
        parts.append(part.assign(model_a=method, model_b=method, stage="adaptation"))
    table = pd.concat(parts, ignore_index=True).assign(dataset=dataset, seed=seed)
    return table[list(COLUMNS)].astype({"episodes": np.int64, "seed": np.int64})


def plot_adaptation(table: pd.DataFrame, title: str) -> Figure:
    """Per layer, each model's mean CKA before against after adaptation over the recorded
    test episodes, with its bootstrap interval as error bars."""
    part = table[table["stage"] == "adaptation"]
    fig = Figure(figsize=(8.0, 4.6), layout="constrained")
    ax = fig.subplots()
    layers = list(dict.fromkeys(part["layer_a"]))
    methods = ordered(part["model_a"])
    width = 0.6 / max(len(methods), 1)  # methods side by side within a layer's slot
    for i, method in enumerate(methods):
        rows = part[part["model_a"] == method].set_index("layer_a").reindex(layers)
        x = np.arange(len(layers)) + (i - (len(methods) - 1) / 2) * width
        mean = rows["cka"].to_numpy(np.float64)
        # An interval that is NaN (one episode) draws no bar.
        below = np.nan_to_num(mean - rows["low"].to_numpy(np.float64), nan=0.0).clip(0)
        above = np.nan_to_num(rows["high"].to_numpy(np.float64) - mean, nan=0.0).clip(0)
        ax.errorbar(
            x,
            mean,
            yerr=np.vstack([below, above]),
            marker="o",
            markersize=4,
            capsize=2,
            linewidth=1,
            label=method_label(method),
        )
    ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("linear CKA, before vs after adaptation")
    counts = sorted({int(n) for n in part["episodes"]}) or [0]
    count = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    ax.set_title(
        f"{title}\nper test episode (support and query images of one episode, its own "
        f"labels)\nmean over {count} episodes, {CONFIDENCE:.0%} bootstrap interval",
        fontsize="medium",
    )
    ax.legend(fontsize="small")
    return fig


def run_cka(
    activations: Mapping[str, str | os.PathLike[str]],
    *,
    dataset: str,
    seed: int,
    table_out: str | os.PathLike[str],
    methods_png: str | os.PathLike[str],
    adaptation_png: str | os.PathLike[str],
) -> pd.DataFrame:
    """Write the CKA table, the reference-against-each-model heatmaps and the adaptation
    plot."""
    table = cka_table(activations, dataset=dataset, seed=seed)
    with atomic_path(table_out) as tmp:
        table.to_parquet(tmp, index=False, schema=SCHEMA)
    title = f"{dataset} · seed {seed}"
    meta = table[table["stage"] == "meta"]
    others = list(dict.fromkeys(meta["model_b"]))
    if others:
        reference = str(meta["model_a"].iloc[0])
        panels = []
        for method in others:
            part = meta[meta["model_b"] == method]
            panel = f"{os.fspath(methods_png)}.{method}.png"
            figures.save(figures.plot_cka(part, f"{title} · CKA", reference, method), panel)
            panels.append(panel)
        figures.side_by_side(panels, [f"{reference} vs {m}" for m in others], methods_png)
        for panel in panels:
            os.remove(panel)
    else:
        figures.save(_note(f"{title}: no reference model and other model to compare"), methods_png)
    figures.save(
        plot_adaptation(table, f"{title} · CKA before vs after adaptation"), adaptation_png
    )
    return table


def _note(text: str) -> Figure:
    fig = Figure(figsize=(6, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center")
    return fig
