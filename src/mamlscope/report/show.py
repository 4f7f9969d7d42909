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
from mamlscope.report import analyses as tables
from mamlscope.report import plots, studies, training
from mamlscope.report.findings import findings as all_findings
from mamlscope.report.results import Results, accuracy_table, experiment_tables, reference_note
from mamlscope.report.verdicts import classes_of, classes_phrase, network_layers

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
        "pooled, and the mean is given with its 95% interval, 1.96 * std / sqrt(episodes), "
        "which reflects episode-to-episode variation only. 'across seeds' is the mean of the "
        "seeds' means with the Student t 95% interval over seeds (seeds - 1 degrees of "
        "freedom): what a new training run may give. 'per seed' lists each seed's own mean; "
        "'plain test accuracy' is a standard-trained model's ordinary classification accuracy "
        "on the test pool. Methods are compared by paired differences in the findings.",
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
        notes = studies.study_notes(
            results.root, study.key, results.datasets, results.methods, results.seeds
        )
        for (dataset, seed), files in found.items():
            what = f"{study.title}, {dataset}, seed {seed}"
            _figures_or_note(files, what)
            for method, note in notes.get((dataset, seed), []):
                markdown(f"*{what}: no result for {method}. {note}*")


def cka(results: Results) -> None:
    for study in studies.CKA_FIGURES:
        markdown(f"### {study.title}\n\n{study.caption}")
        for dataset in results.datasets:
            for seed in results.seeds:
                path = studies.compare_figure(results.root, dataset, seed, study.key)
                found = [("", path)] if path.is_file() else []
                _figures_or_note(found, f"{study.title}, {dataset}, seed {seed}")
    shown = studies.adaptation_table(load_cka(results), results.methods)
    if shown.empty:
        markdown(f"*CKA before against after adaptation: {NOT_PRODUCED}.*")
        return
    table(
        shown,
        "Linear CKA of each layer with itself before against after adaptation, computed per "
        "test episode (the support and query images of one episode, adapted on its own "
        "support labels) and given as the mean over the recorded episodes with a 95% "
        "bootstrap interval over episodes, [low, high]; 'episodes' is how many, each seed "
        "apart. 1: adaptation leaves the layer's representation of the episode's images as "
        "it was, up to rotation and scale; lower: it moves. A fresh head on a frozen body "
        "(the baseline) or a head-only inner loop (ANIL) leaves the body as it is by design. "
        "A description of how much each layer moves, not a test of feature reuse.",
    )


def load_cka(results: Results) -> pd.DataFrame:
    """Every CKA table of the run (:func:`mamlscope.report.studies.cka_table`): stage
    ``meta`` rows on the probe and stage ``adaptation`` rows per test episode, summarised."""
    return studies.cka_table(results.root, results.datasets, results.seeds)


ANALYSES_CAPTIONS = {
    "verdicts": "One verdict per inner-loop method and BatchNorm mode, by accuracy on the "
    "fixed test episodes: 'no adaptation needed' when nearest centroid on the frozen "
    "penultimate features is not significantly worse than full adaptation; else 'rapid "
    "learning' when a setting adapting body layers beats head-only (Bonferroni over the "
    "settings compared; k the highest such layer); else 'feature reuse'. Differences in "
    "points, paired on (seed, episode): the 95% interval pooled over every seed's episodes "
    "decides, the interval over the seeds' mean differences stands beside it.",
    "freezing": "Layer freezing: accuracy when the inner loop (the evaluation's steps and "
    "learning rate) adapts only the layers from k up ('from head': head only; the last "
    "'from' column: every layer; 'body': every layer but the head). Mean of the seeds' "
    "means ± the half width of the Student t 95% interval over seeds.",
    "centroid": "Nearest centroid (each query to the nearest class mean of the support set's "
    "frozen penultimate features, no adaptation) against the method's full adaptation in "
    "the same BatchNorm mode (the baseline's: its fresh head), paired difference in points.",
    "steps": "Accuracy after n inner steps at test on the method's own adapted parameters "
    "(0: the meta-learned weights), mean of the seeds' means ± the across-seed interval.",
    "baseline": "The fine-tuned baseline's protocols: its fresh head (its evaluation under "
    "'running') and nearest centroid under each BatchNorm mode, and their paired difference.",
    "like": "Like for like: each meta method's full adaptation against the baseline's fresh "
    "head under the same protocol: both transductive (an episode's queries normalised "
    "together), or neither (the meta method with its support set's statistics, the baseline "
    "with its running statistics). Paired difference method - baseline in points.",
}
OVER_TRAINING_CAPTIONS = {
    "table": "Verdict over training: the verdict of each inner-loop method and BatchNorm mode "
    "at each training snapshot (maml.snapshots evenly spaced meta-steps; the column is the "
    "share of training done), decided as in the verdict table but on that snapshot's rows "
    "alone: its layer freezing, its own adaptation at the test steps and nearest centroid. "
    "100% is the final model, the verdict table above.",
    "figure": "Over training: each body-adapting setting's accuracy minus head-only's (points; "
    "'from k': the layers from k up adapt, 'body': every layer but the head), paired on (seed, "
    "episode), with its 95% interval pooled over every seed's episodes, against the share of "
    "training done; deeper settings darker. Written above each snapshot: its verdict (the "
    "table gives it in full; 'rapid ≥k': rapid learning from layer k up; '?': not consistent "
    "across seeds; 'n/a': not assessed), decided with Bonferroni-corrected intervals.",
    "cka": "CKA over training: linear CKA of each layer with itself before against after "
    "adaptation (each episode's support and query images, adapted on its own labels with the "
    "method's inner loop, adapted set, test steps and evaluation BatchNorm mode), against the "
    "share of training done. A description of how much each layer moves, not a verdict.",
}


def analyses(results: Results) -> None:
    """Rapid learning or feature reuse? Per dataset: the verdicts, then each analysis as a
    table (and a figure for the layer freezing and the steps sweep)."""
    if results.analyses.empty:
        markdown(f"*The analyses (`results/episodes.parquet`): {NOT_PRODUCED}.*")
        return
    found = tables.verdicts_of(results)
    over = training.verdicts_over_training_of(results)
    cka = training.load_training_cka(results)
    for dataset in results.datasets:
        if not (results.analyses["dataset"] == dataset).any():
            markdown(f"### {dataset}\n\n*The analyses: {NOT_PRODUCED}.*")
            continue
        seen = classes_phrase(classes_of(results.analyses, dataset))
        markdown(f"### {dataset} ({seen})")
        part = found[found["dataset"] == dataset]
        table(tables.verdict_table(results, dataset, part), ANALYSES_CAPTIONS["verdicts"])
        sections = (
            ("freezing", "Layer freezing", tables.freezing_table, tables.freezing_figure),
            ("centroid", "Nearest centroid", tables.centroid_table, None),
            ("steps", "Inner steps at test", tables.steps_table, tables.steps_figure),
            ("baseline", "The baseline's protocols", tables.baseline_table, None),
            ("like", "Like for like", tables.like_for_like_table, None),
        )
        for key, title, make_table, make_figure in sections:
            shown = make_table(results, dataset)
            caption = f"{dataset} ({seen}). {ANALYSES_CAPTIONS[key]}"
            if shown.empty:
                markdown(f"*{title}, {dataset}: {NOT_PRODUCED}.*")
                continue
            table(shown, caption)
            if make_figure is not None:
                figure(make_figure(results, dataset), f"{key}, {dataset}", caption)
        over_training(results, dataset, seen, over, cka)


def over_training(
    results: Results, dataset: str, seen: str, found: pd.DataFrame, cka: pd.DataFrame
) -> None:
    """When does it switch? The verdict at each training snapshot (a table), the
    body-adapting settings against head-only over training (a figure, verdicts on it), and
    each layer's CKA before against after adaptation over training."""
    shown = training.verdict_over_training_table(found, dataset)
    if shown.empty:
        markdown(
            f"*Over training, {dataset}: no training snapshot before the final weights was "
            "analysed (`maml.snapshots`).*"
        )
    else:
        note = training.episodes_note(results.analyses, dataset)
        table(shown, f"{dataset} ({seen}). {OVER_TRAINING_CAPTIONS['table']} {note}")
        layers = network_layers(results.config).get(dataset)
        fig = training.over_training_figure(results.analyses, dataset, found, layers)
        caption = f"{dataset} ({seen}). {OVER_TRAINING_CAPTIONS['figure']} {note}"
        figure(fig, f"over training, {dataset}", caption)
    if training.cka_tracked(cka, dataset):
        caption = (
            f"{dataset} ({seen}). {OVER_TRAINING_CAPTIONS['cka']} {training.cka_note(cka, dataset)}"
        )
        figure(training.training_cka_figure(cka, dataset), f"CKA over training, {dataset}", caption)


def findings(results: Results) -> None:
    found = all_findings(results)
    for heading, lines in found.items():
        markdown(f"**{heading}**\n\n" + "\n".join(lines))


def provenance() -> None:
    markdown(
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by mamlscope {__version__}, "
        f"Python {platform.python_version()} at `{sys.executable}`."
    )
