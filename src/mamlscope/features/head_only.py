"""The `head_only` job: does a meta-learned model need to adapt its body, or only its head?
(Raghu et al. 2020, "Rapid learning or feature reuse?")

For each model whose evaluation runs an inner loop that adapts more than the head,
accuracy on the fixed test episodes when only the ``head`` adapts (the same inner loop,
learning rate, steps and BatchNorm mode, the body frozen at the meta-learned weights),
beside its own adaptation (the evaluation's numbers, from ``evaluation.json``). A method
whose evaluation already adapts only the head (a fresh head on frozen features, or an
inner loop over the head alone) has that one row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
from torch import nn

from mamlscope.evaluate import EvalSettings, evaluate_maml, summarize
from mamlscope.finetune import Batch
from mamlscope.io import atomic_path
from mamlscope.maml import select_parameters
from mamlscope.methods import method as lookup_method
from mamlscope.methods import rank
from mamlscope.model_job import open_model_job
from mamlscope.runtime import set_threads

COLUMNS = ("dataset", "method", "seed", "adaptation", "batchnorm", "mean", "ci95", "episodes")
# How the Markdown summary names each `adaptation` value (`Method.adaptation`).
ADAPTED = {"full": "every layer", "head": "head only", "body": "body only"}


def head_only_accuracy(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str,
) -> np.ndarray:
    """Per-episode query accuracy after ``inner_steps`` inner-loop steps on the head alone:
    the one inner loop (:func:`mamlscope.maml.adapt_and_predict`) with only ``head``'s
    parameters adapted, the body's features normalised as in evaluation."""
    return evaluate_maml(
        model,
        batches,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        batchnorm=batchnorm,
        adapted=select_parameters(model, "head"),
    )


def run_head_only(
    *,
    checkpoint: str | os.PathLike[str],
    evaluation: str | os.PathLike[str],
    images: str | os.PathLike[str],
    index: str | os.PathLike[str],
    meta: str | os.PathLike[str],
    test_episodes: str | os.PathLike[str],
    settings: EvalSettings,
    dataset: str,
    device: str,
    out: str | os.PathLike[str],
    threads: int | None = None,
) -> pd.DataFrame:
    """Write the rows of one model to ``out``: its own adaptation (from ``evaluation``), and
    head-only adaptation where its inner loop adapts more than the head."""
    set_threads(threads)
    method = lookup_method(settings.method)
    summary = json.loads(open(evaluation).read())
    rows = [
        {
            "adaptation": method.adaptation,
            **{k: summary[k] for k in ("mean", "ci95", "episodes")},
        }
    ]
    if method.evaluation == "inner-loop" and method.adapts != "head":
        job = open_model_job(
            checkpoint=checkpoint, images=images, index=index, meta=meta, device=device
        )
        batches = job.episodes(pd.read_parquet(test_episodes), settings)
        inner_lr, inner_steps = settings.inner_loop()
        per_episode = head_only_accuracy(
            job.model,
            batches,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            batchnorm=settings.batchnorm,
        )
        rows.append({"adaptation": "head", **summarize(per_episode).as_dict()})
    table = pd.DataFrame(rows).assign(
        dataset=dataset,
        method=settings.method,
        seed=int(summary["seed"]),
        batchnorm=settings.batchnorm_used,
    )[list(COLUMNS)]
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    return table


def gather_head_only(
    tables: list[str | os.PathLike[str]],
    out_parquet: str | os.PathLike[str],
    out_markdown: str | os.PathLike[str],
) -> pd.DataFrame:
    """Every model's rows in one table, and a Markdown summary (its own adaptation against
    head-only)."""
    table = pd.concat([pd.read_parquet(t) for t in tables], ignore_index=True)
    order = rank(table["method"])  # methods in their declared display order
    table = table.sort_values(
        ["dataset", "method", "seed", "adaptation"],
        key=lambda c: c.map(order) if c.name == "method" else c,
    ).reset_index(drop=True)
    with atomic_path(out_parquet) as tmp:
        table.to_parquet(tmp, index=False)
    lines = [
        "| dataset | method | seed | adaptation | BatchNorm at test | accuracy (95% CI) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        what = ADAPTED.get(r.adaptation, r.adaptation)
        lines.append(
            f"| {r.dataset} | {r.method} | {r.seed} | {what} | {r.batchnorm} | "
            f"{100 * r.mean:.2f} +- {100 * r.ci95:.2f}% |"
        )
    with atomic_path(out_markdown) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
