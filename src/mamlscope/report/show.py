"""Notebook output: each section of the report as displayed HTML and Markdown.

Images are embedded as ``data:`` URIs inside ``<figure>`` elements with an ``alt`` text,
so the HTML is one self-contained file and a browser can tell whether each one loaded.
The notebook template calls one function per section; nothing here computes a result.
"""

from __future__ import annotations

import base64
import html
import io
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from IPython.display import HTML, Markdown, display
from matplotlib.figure import Figure

from mamlscope import __version__
from mamlscope.report import plots, studies
from mamlscope.report.findings import findings as all_findings
from mamlscope.report.results import Results, accuracy_table, experiment_tables, reference_note

NOT_PRODUCED = "not produced by this run"


def markdown(text: str) -> None:
    display(Markdown(text))


def table(frame: pd.DataFrame, caption: str = "") -> None:
    """A table, with a caption above it."""
    body = frame.to_html(index=False, escape=True, border=0, classes="mamlscope-table", na_rep="")
    cap = f"<p class='mamlscope-caption'>{html.escape(caption)}</p>" if caption else ""
    display(HTML(cap + body))


def figure_html(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f"<figure class='mamlscope-figure'><img src='data:image/png;base64,{data}' "
        f"alt='{html.escape(alt, quote=True)}'/>{cap}</figure>"
    )


def figure(fig: Figure, alt: str, caption: str = "") -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    display(HTML(figure_html(buffer.getvalue(), alt, caption)))


def png(path: str | os.PathLike[str], alt: str, caption: str = "") -> None:
    display(HTML(figure_html(Path(path).read_bytes(), alt, caption)))


def experiment(results: Results) -> None:
    parts = experiment_tables(results)
    markdown(parts["summary"])
    table(parts["datasets"], "Datasets, split protocols and episode shapes.")
    # One table per section (baseline, maml, ...), side by side.
    hyper = parts["hyperparameters"]
    sections = hyper["key"].str.split(".", n=1).str[0]
    tables = "".join(
        hyper[sections == name].to_html(
            index=False, escape=True, border=0, classes="mamlscope-table"
        )
        for name in dict.fromkeys(sections)
    )
    caption = "Training and adaptation settings, as resolved for each dataset (defaults filled in)."
    display(
        HTML(
            f"<p class='mamlscope-caption'>{html.escape(caption)}</p>"
            f"<div class='mamlscope-row'>{tables}</div>"
        )
    )


def accuracy(results: Results) -> None:
    table(
        accuracy_table(results),
        "Accuracy on the fixed test episodes: the per-episode accuracies of every seed are "
        "pooled, and the mean is given with its 95% interval, 1.96 * std / sqrt(episodes). "
        "'per seed' lists each seed's own mean; 'plain test accuracy' is a standard-trained "
        "model's ordinary classification accuracy on the test pool.",
    )
    markdown(reference_note(results))


def curves(results: Results) -> None:
    for dataset in results.datasets:
        figure(plots.training_curves(results, dataset), f"training curves, {dataset}")
        for seed in results.seeds:
            path = studies.compare_figure(results.root, dataset, seed, studies.CURVES)
            if path.is_file():
                caption = studies.curves_study().caption
                png(path, f"training curves, {dataset}, seed {seed}", caption)


def rulegraph(dot_file: str | os.PathLike[str]) -> None:
    svg, note = plots.render_rulegraph(dot_file)
    if svg is None:
        markdown(f"*{note}*")
        return
    display(
        HTML(
            f"<figure class='mamlscope-figure mamlscope-svg'>{svg}<figcaption>"
            f"{html.escape(note)}</figcaption></figure>"
        )
    )


def _figures_or_note(found: Sequence[tuple[str, Path]], what: str) -> None:
    """Each figure found, captioned ``what: label``; or say that the run did not make it."""
    if not found:
        markdown(f"*{what}: {NOT_PRODUCED}.*")
    for label, path in found:
        png(path, f"{what}: {label}" if label else what, f"{what}: {label}" if label else what)


def feature_studies(results: Results) -> None:
    """Every registered figure study, grouped by study, then dataset and seed."""
    for study in studies.figure_studies():
        markdown(f"### {study.title}\n\n{study.caption}")
        found = studies.study_files(
            results.root, study.key, results.datasets, results.methods, results.seeds
        )
        for (dataset, seed), files in found.items():
            _figures_or_note(files, f"{study.title}, {dataset}, seed {seed}")


def cka(results: Results) -> None:
    for study in studies.CKA_FIGURES:
        markdown(f"### {study.title}\n\n{study.caption}")
        for dataset in results.datasets:
            for seed in results.seeds:
                path = studies.compare_figure(results.root, dataset, seed, study.key)
                found = [("", path)] if path.is_file() else []
                _figures_or_note(found, f"{study.title}, {dataset}, seed {seed}")
    reuse = studies.feature_reuse(load_cka(results))
    if reuse.empty:
        markdown(f"*CKA before against after adaptation: {NOT_PRODUCED}.*")
        return
    shown = reuse.drop(columns=["layers"]).round(3)
    table(
        shown,
        "CKA of each layer before against after adaptation, averaged over seeds: the body "
        f"(every layer but the head) and the head; 'reuse' when every body layer is at "
        f"least {studies.FEATURE_REUSE_CKA} and the head lower (Raghu et al. 2020). A model "
        "whose adaptation changes only its head keeps its body by design, so its body is 1.",
    )


def load_cka(results: Results) -> pd.DataFrame:
    return studies.cka_table(results.root, results.datasets, results.seeds)


def head_only(results: Results) -> None:
    found = studies.head_only_table(results.root, results.methods)
    if found is None:
        markdown(f"*Head-only against full adaptation: {NOT_PRODUCED}.*")
        return
    shown = found.assign(
        accuracy=[
            f"{100 * m:.2f} ± {100 * c:.2f}%"
            for m, c in zip(found["mean"], found["ci95"], strict=True)
        ]
    ).drop(columns=["mean", "ci95"])
    table(
        shown,
        "Adapting only the head (the body frozen) against adapting every layer, on the same "
        "test episodes; seeds combined as the mean of their means.",
    )


def findings(results: Results) -> None:
    found = all_findings(
        results, load_cka(results), studies.head_only_table(results.root, results.methods)
    )
    for heading, lines in found.items():
        markdown(f"**{heading}**\n\n" + "\n".join(lines))


def provenance() -> None:
    markdown(
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by mamlscope {__version__}, "
        f"Python {platform.python_version()} at `{sys.executable}`."
    )
