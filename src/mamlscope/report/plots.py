"""The report's own pictures: training curves from the metrics, the workflow's rule graph.

Figures are built on ``matplotlib.figure.Figure`` (the Agg canvas), never through pyplot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure, SubFigure

from mamlscope.methods import label as method_label
from mamlscope.methods import method as lookup_method
from mamlscope.report.results import Results

PHASES: dict[str, dict[str, Any]] = {
    "train": dict(lw=1.2),
    "val": dict(marker="o", ms=3, ls="--", lw=0.8),
}


STYLE: dict[Any, Any] = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


def training_curves(results: Results, dataset: str) -> Figure:
    """Loss (top) and accuracy (bottom) against step, one column per method.

    One colour per seed; training as lines, validation dashed with markers. A step is what
    the method's training steps over (a mini-batch, or a meta-step: `Method.step_unit`),
    so columns have their own x axes. Meta-training's validation loss is not recorded
    (NaN) and is left out.
    """
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(3.0 * max(len(results.methods), 1) + 1.6, 5.0), layout="constrained")
        _draw_curves(fig, results, dataset)
    return fig


def training_curves_all(results: Results) -> Figure:
    """Every dataset's training curves stacked in one figure (for Snakemake's report)."""
    n = len(results.datasets)
    with matplotlib.rc_context(STYLE):
        fig = Figure(
            figsize=(3.0 * max(len(results.methods), 1) + 1.6, 5.0 * n), layout="constrained"
        )
        rows = fig.subfigures(n, 1, squeeze=False)[:, 0]  # [n] SubFigures
        for sub, dataset in zip(rows, results.datasets, strict=True):
            _draw_curves(sub, results, dataset)
    return fig


def _draw_curves(fig: Figure | SubFigure, results: Results, dataset: str) -> None:
    metrics = results.metrics[results.metrics["dataset"] == dataset]
    methods = [m for m in results.methods if (metrics["method"] == m).any()]
    cmap = matplotlib.colormaps["tab10"]
    axes = fig.subplots(2, max(len(methods), 1), squeeze=False, sharey="row")
    for col, method in enumerate(methods):
        run = metrics[metrics["method"] == method]
        for i, (seed, part) in enumerate(run.groupby("seed", sort=True)):
            for row, column in enumerate(("loss", "accuracy")):
                for phase, style in PHASES.items():
                    p = part[(part["phase"] == phase) & np.isfinite(part[column])]
                    if not p.empty:
                        p = p.sort_values("step")
                        label = f"seed {seed} {phase}"
                        axes[row, col].plot(
                            p["step"], p[column], color=cmap(i % 10), label=label, **style
                        )
        axes[0, col].set_title(method_label(method))
        axes[1, col].set_xlabel(lookup_method(method).step_unit)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("loss")
    axes[1, 0].set_ylabel("accuracy")
    # Every seed and phase, from whichever column has them all (MAML has no val loss).
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, h)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside right center", frameon=False)
    fig.suptitle(f"{dataset} · training curves")


def render_rulegraph(dot_file: str | os.PathLike[str]) -> tuple[str | None, str]:
    """The rule graph as SVG text with graphviz's ``dot``, and a note.

    Returns ``(None, note)`` when ``dot`` is not installed or fails, so the report says
    why the picture is missing instead of failing.
    """
    dot_file = Path(dot_file)
    exe = shutil.which("dot")
    if exe is None:
        return None, (
            "The rule graph is not drawn: graphviz's `dot` is not installed here "
            "(Debian: `apt-get install graphviz`). Its DOT source is "
            f"`{dot_file.name}` beside this report."
        )
    run = subprocess.run([exe, "-Tsvg", str(dot_file)], capture_output=True, text=True, timeout=60)
    if run.returncode != 0:
        return None, f"The rule graph is not drawn: `dot` failed ({run.stderr.strip()[:300]})."
    svg = run.stdout
    return svg[
        svg.find("<svg") :
    ], "The workflow's rules and the files that link them (`snakemake --rulegraph`)."
