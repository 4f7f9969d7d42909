"""The feature-study figures, in one style, each titled and saved atomically as PNG.

Figures are built on ``matplotlib.figure.Figure`` directly (the Agg canvas), never through
``pyplot``: no global backend switch, no figure registry to leak memory in a long job.
Every function returns the Figure; :func:`save` writes it at :data:`DPI`, so a figure of
``figsize = (w, h)`` inches is ``w * DPI`` by ``h * DPI`` pixels. Title strings follow
``"mnist5k · maml · seed 0"``; comparisons put the methods in their display order
(:func:`mamlscope.methods.ordered`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from torch import nn

from mamlscope.features.embedding import embed as embed  # re-exported
from mamlscope.features.saliency import saliency_maps as saliency_maps  # re-exported
from mamlscope.io import UnreadableFile, atomic_path, write_note
from mamlscope.methods import ordered
from mamlscope.models import first_layer

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # matplotlib >= 3.10: the rc keys' names

DPI = 100
DIVERGING = "RdBu_r"  # weights: red positive, blue negative, white 0
SEQUENTIAL = "magma"  # saliency
STYLE: dict[RcKeyType, Any] = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "figure.titlesize": 12,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.interpolation": "nearest",
}

P = ParamSpec("P")
R = TypeVar("R")


def _styled(fn: Callable[P, R]) -> Callable[P, R]:
    """Build the figure inside the style's rc context (rcParams are read at creation)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def save(fig: Figure, path: str | os.PathLike[str], note: str | None = None) -> None:
    """Write ``fig`` as PNG at :data:`DPI`, atomically (no half-written figure on failure),
    and ``note`` beside it for the report: why it shows no result (None: no note)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    write_note(path, note)


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _show(ax: matplotlib.axes.Axes, image: np.ndarray) -> None:
    """One ``[C, H, W]`` image (uint8, or float in [0, 1]), grey for one channel."""
    if image.shape[0] == 1:
        vmax = 255 if image.dtype == np.uint8 else 1.0
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=vmax)
    else:
        ax.imshow(np.moveaxis(image, 0, -1))  # [H, W, C]
    _bare(ax)


def _bare(ax: matplotlib.axes.Axes) -> None:
    """No ticks or frame: for axes that show images."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _mosaic(tiles: np.ndarray, cols: int, fill: float) -> np.ndarray:
    """Tiles ``[n, h, w, ...]`` in a grid with one-pixel gaps of ``fill``."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, *tiles.shape[3:]), fill)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = tile
    return out


def _first_layer_weights(model: nn.Module, in_shape: tuple[int, int, int]) -> np.ndarray:
    """The first layer's filters as images ``[filters, C, h, w]``: the layer the model's
    registry entry names (:func:`mamlscope.models.first_layer`), a conv's kernels or a
    linear layer's rows reshaped to ``in_shape``."""
    name, layer = first_layer(model)
    weight = _numpy(layer.get_parameter("weight"))
    if weight.ndim == 4:
        return weight  # [F, C, k, k]
    if weight.ndim == 2 and weight.shape[1] == math.prod(in_shape):
        return weight.reshape(len(weight), *in_shape)  # [units, C, H, W]
    raise ValueError(
        f"first layer {name!r} has weights {weight.shape}; expected conv kernels or a linear "
        f"layer over the {math.prod(in_shape)} pixels of in_shape {in_shape}"
    )


@_styled
def plot_first_layer_filters(
    model: nn.Module,
    in_shape: tuple[int, int, int],
    title: str,
    max_filters: int | None = None,
) -> Figure:
    """The first layer's rows as ``in_shape`` images (fc), or its kernels (conv), in one grid.

    One channel: a diverging map centred at 0 with one shared colour bar, so sign and
    size compare across filters. Three channels: RGB with grey at 0 (each filter
    ``0.5 + w / (2 max|w|)``); other channel counts are shown channel by channel side
    by side.
    """
    w = _first_layer_weights(model, in_shape)[:max_filters]  # [n, C, h, w]
    n, channels = w.shape[:2]
    cols = math.ceil(math.sqrt(n))
    fig = Figure(figsize=(7.0, 6.4), layout="constrained")
    ax = fig.add_subplot()
    vmax = float(np.abs(w).max()) or 1.0
    if channels == 3:
        tiles = np.moveaxis(0.5 + w / (2 * vmax), 1, -1)  # [n, h, w, 3]
        ax.imshow(_mosaic(tiles, cols, fill=1.0))
        ax.set_title(f"{n} filters, RGB (grey = 0, max |w| = {vmax:.3g})")
    else:
        gapped = np.pad(w, ((0, 0), (0, 0), (0, 0), (0, 1)), constant_values=np.nan)
        h, wp = gapped.shape[2:]  # wp = w + 1: a gap column after every channel
        tiles = gapped.transpose(0, 2, 1, 3).reshape(n, h, channels * wp)[..., :-1]
        cmap = matplotlib.colormaps[DIVERGING].with_extremes(bad="0.85")  # gaps grey
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
        image = ax.imshow(_mosaic(tiles, cols, fill=np.nan), cmap=cmap, norm=norm)
        fig.colorbar(image, ax=ax, shrink=0.8, label="weight")
        ax.set_title(
            f"{n} first-layer filters" + (f", {channels} channels" if channels > 1 else "")
        )
    _bare(ax)
    fig.suptitle(title)
    return fig


@_styled
def plot_message(message: str, title: str, figsize: tuple[float, float] = (6.4, 5.6)) -> Figure:
    """A panel that says why a study has no picture (e.g. collapsed features), sized as
    the figure it stands in for, so the methods still line up side by side."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    _bare(ax)
    fig.suptitle(title)
    return fig


@_styled
def plot_embedding(
    points2d: np.ndarray, labels: np.ndarray | Sequence[int], title: str, method: str = "t-SNE"
) -> Figure:
    """A 2-D embedding coloured by class; a legend up to 20 classes, else a colour bar."""
    points, labels = _numpy(points2d), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(
            f"points2d must be [N, 2] with N labels; got {points.shape}, {len(labels)}"
        )
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    classes = np.unique(labels)
    if len(classes) <= 20:
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, cls in enumerate(classes):
            at = labels == cls
            x, y = points[at].T
            ax.scatter(x, y, s=12, color=cmap(i), label=str(cls), linewidths=0)
        ax.legend(title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    else:
        x, y = points.T
        dots = ax.scatter(x, y, s=12, c=labels, cmap="viridis", linewidths=0)
        fig.colorbar(dots, ax=ax, label="class")
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title)
    return fig


@_styled
def plot_cka(frame: pd.DataFrame, title: str, label_a: str = "", label_b: str = "") -> Figure:
    """Heat map of :func:`mamlscope.similarity.cka_matrix` rows (undefined CKA in grey).

    ``label_a``/``label_b`` name the two networks on the axes (e.g. ``baseline``, ``maml``).
    """
    grid = frame.pivot(index="layer_a", columns="layer_b", values="cka")
    grid = grid.loc[list(dict.fromkeys(frame["layer_a"])), list(dict.fromkeys(frame["layer_b"]))]
    rows, cols = grid.shape
    fig = Figure(
        figsize=(max(4.0, 0.45 * cols + 2.5), max(3.5, 0.4 * rows + 1.6)), layout="constrained"
    )
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
    image = ax.imshow(grid.to_numpy(np.float64), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), grid.columns, rotation=90)
    ax.set_yticks(range(rows), grid.index)
    ax.set_xlabel(f"{label_b} layer".strip())
    ax.set_ylabel(f"{label_a} layer".strip())
    fig.colorbar(image, ax=ax, label="linear CKA")
    fig.suptitle(title)
    return fig


@_styled
def plot_extreme_examples(
    images: np.ndarray | torch.Tensor,
    activations: np.ndarray | torch.Tensor,
    k: int,
    neuron_name: str,
    title: str,
) -> Figure:
    """The ``k`` probe images that drive a neuron most (top row) and least (bottom row).

    ``images`` uint8 ``[N, C, H, W]``, ``activations`` ``[N]``; each image is captioned
    with its activation.
    """
    images, acts = _numpy(images), _numpy(activations).astype(np.float64)
    if acts.shape != images.shape[:1] or not 1 <= k <= len(acts):
        raise ValueError(f"need activations [N] for images [N, ...] and 1 <= k <= N; got k={k}")
    order = np.argsort(-acts, kind="stable")
    rows = (("highest", order[:k]), ("lowest", order[::-1][:k]))
    fig = Figure(figsize=(max(1.2 * k, 4.0), 3.4), layout="constrained")
    axes = fig.subplots(2, k, squeeze=False)
    for r, (name, idx) in enumerate(rows):
        for c, i in enumerate(idx):
            _show(axes[r, c], images[i])
            axes[r, c].set_title(f"{acts[i]:.2f}", fontsize=8)
        axes[r, 0].set_ylabel(name)
    fig.suptitle(f"{title}\n{neuron_name}: most and least activating probe examples")
    return fig


@_styled
def plot_saliency(
    images: np.ndarray | torch.Tensor,
    maps: np.ndarray | torch.Tensor,
    labels: np.ndarray | Sequence[int],
    title: str,
) -> Figure:
    """Each image above its saliency map (scaled to its own maximum; one colour bar).

    ``images`` uint8 ``[N, C, H, W]``, ``maps`` ``[N, H, W]`` from :func:`saliency_maps`;
    at most 8 per row pair.
    """
    images, maps, labels = _numpy(images), _numpy(maps).astype(np.float64), np.asarray(labels)
    n = len(images)
    if maps.shape != (n, *images.shape[2:]) or len(labels) != n:
        raise ValueError(f"maps must be [N, H, W] matching images {images.shape}")
    cols = min(n, 8)
    pairs = math.ceil(n / cols)
    fig = Figure(figsize=(1.3 * cols + 1.0, 2.7 * pairs + 0.6), layout="constrained")
    axes = fig.subplots(2 * pairs, cols, squeeze=False)
    scaled = maps / np.maximum(maps.reshape(n, -1).max(axis=1), 1e-12)[:, None, None]
    shown = None
    for i in range(pairs * cols):
        r, c = divmod(i, cols)
        top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
        if i >= n:
            top.set_axis_off()
            bottom.set_axis_off()
            continue
        _show(top, images[i])
        top.set_title(f"predicted {labels[i]}", fontsize=8)
        shown = bottom.imshow(scaled[i], cmap=SEQUENTIAL, vmin=0.0, vmax=1.0)
        _bare(bottom)
    assert shown is not None  # n >= 1 images, each drawn its map
    fig.colorbar(shown, ax=axes[1::2, :].ravel().tolist(), label="saliency / image max")
    fig.suptitle(title)
    return fig


@_styled
def plot_training_curves(metrics: pd.DataFrame, title: str) -> Figure:
    """Loss and accuracy against step: training as lines, validation as marked points.

    Takes the training metrics table (``step, phase, loss, accuracy``; ``method`` and
    ``seed`` when present give one colour per run). Non-finite values (MAML's validation
    loss is not recorded) are left out.
    """
    missing = {"step", "phase", "loss", "accuracy"} - set(metrics.columns)
    if missing:
        raise ValueError(f"metrics lacks column(s) {sorted(missing)}")
    keys = [c for c in ("method", "seed") if c in metrics.columns]
    runs: list[tuple[Any, pd.DataFrame]] = (
        list(metrics.groupby(keys, sort=False)) if keys else [((), metrics)]
    )
    if "method" in keys:  # keys[0]: the methods' display order, unknown methods last
        rank = {m: i for i, m in enumerate(ordered(key[0] for key, _ in runs))}
        runs.sort(key=lambda kv: rank[kv[0][0]])
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["tab10"]
    for i, (key, run) in enumerate(runs):
        name = " · ".join(
            f"{k}" if c == "method" else f"{c} {k}" for c, k in zip(keys, key, strict=True)
        )
        for ax, column in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for phase, style in (
                ("train", dict(lw=1.2)),
                ("val", dict(marker="o", ms=4, ls="--", lw=0.8)),
            ):
                part = run[(run["phase"] == phase) & np.isfinite(run[column])].sort_values("step")
                if part.empty:
                    continue
                label = f"{name} {phase}".strip()
                ax.plot(part["step"], part[column], color=cmap(i % 10), label=label, **style)
    for ax, label in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_acc.legend(loc="lower right", frameon=False)
    fig.suptitle(title)
    return fig


@_styled
def plot_images(images: np.ndarray | torch.Tensor, names: Sequence[str], title: str) -> Figure:
    """A row of images (e.g. activation-maximisation results), each captioned.

    ``images`` ``[K, C, H, W]``, uint8 or float in ``[0, 1]``.
    """
    images = _numpy(images)
    if len(images) != len(names) or len(images) == 0:
        raise ValueError(f"need one name per image; got {len(images)} images, {len(names)} names")
    fig = Figure(figsize=(max(1.4 * len(images), 4.0), 2.2), layout="constrained")
    for ax, image, name in zip(
        fig.subplots(1, len(images), squeeze=False)[0], images, names, strict=True
    ):
        _show(ax, image)
        ax.set_title(name, fontsize=8)
    fig.suptitle(title)
    return fig


@_styled
def side_by_side(
    pngs: Sequence[str | os.PathLike[str]],
    titles: Sequence[str],
    out_path: str | os.PathLike[str],
    title: str | None = None,
) -> Figure:
    """Put saved PNGs in one row at their own resolution (e.g. one per method) and save.

    Each panel keeps its pixels (no resampling); panel titles and an optional overall
    title sit in a band above. Returns the Figure, already written to ``out_path``.
    """
    import matplotlib.image as mpimg

    if len(pngs) != len(titles) or not pngs:
        raise ValueError(f"need one title per PNG; got {len(pngs)} PNGs, {len(titles)} titles")
    panels = []
    for p in pngs:
        try:
            panels.append(mpimg.imread(os.fspath(p)))
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow: truncated, not a PNG
            raise UnreadableFile(f"{p} is not a readable PNG ({exc}): rerun its job") from exc
    band = 30 * (1 + (title is not None))  # pixels for the titles
    width = sum(p.shape[1] for p in panels)
    height = max(p.shape[0] for p in panels) + band
    fig = Figure(figsize=(width / DPI, height / DPI))
    left = 0
    for panel, name in zip(panels, titles, strict=True):
        h, w = panel.shape[:2]
        ax = fig.add_axes((left / width, (height - band - h) / height, w / width, h / height))
        ax.imshow(panel, interpolation="none")
        ax.set_axis_off()
        fig.text((left + w / 2) / width, (height - band + 8) / height, name, ha="center")
        left += w
    if title is not None:
        fig.text(
            0.5, 1 - 12 / height, title, ha="center", va="top", fontsize=STYLE["figure.titlesize"]
        )
    save(fig, out_path)
    return fig
