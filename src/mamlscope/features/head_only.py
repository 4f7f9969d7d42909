"""The `head_only` job: does MAML need to adapt its body, or only its head? (ANIL, Raghu et
al. 2020)

For each MAML model, accuracy on the fixed test episodes when only the ``head`` adapts
(the same inner loop, learning rate and steps, the body frozen at the meta-learned
weights and normalised as in its evaluation), beside full adaptation (the evaluation's
own numbers, from ``evaluation.json``). The baseline's evaluation already is "frozen
features, a head fitted per episode": its row is that number.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mamlscope.checkpoint import load_checkpoint
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.tasks import images_to_tensor
from mamlscope.evaluate import EvalSettings, summarize
from mamlscope.finetune import features_of
from mamlscope.io import atomic_path
from mamlscope.models import batch_statistics, statistics_from_first
from mamlscope.runtime import resolve_device, set_threads

COLUMNS = ("dataset", "method", "seed", "adaptation", "batchnorm", "mean", "ci95", "episodes")


def _features(
    model: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor, batchnorm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One episode's support and query features with batch statistics as in evaluation."""
    with batch_statistics():
        if batchnorm == "support":
            with statistics_from_first(len(support_x)):
                both = features_of(model, torch.cat([support_x, query_x]))
            return both[: len(support_x)], both[len(support_x) :]
        return features_of(model, support_x), features_of(model, query_x)


@torch.no_grad()
def head_only_accuracy(
    model: nn.Module,
    batches,  # type: ignore[no-untyped-def]
    *,
    inner_lr: float,
    inner_steps: int,
    batchnorm: str,
) -> np.ndarray:
    """Per-episode query accuracy after ``inner_steps`` SGD steps on the head alone."""
    head = model.head
    out = []
    for support_x, support_y, query_x, query_y in batches:
        episodes = support_x.shape[0]
        pairs = [_features(model, support_x[e], query_x[e], batchnorm) for e in range(episodes)]
        fs = torch.stack([p[0] for p in pairs])  # [E, N*K, F]
        fq = torch.stack([p[1] for p in pairs])  # [E, N*Q, F]
        weight = head.weight.detach().expand(episodes, -1, -1).clone()  # [E, way, F]
        bias = head.bias.detach().expand(episodes, -1).clone().unsqueeze(1)  # [E, 1, way]
        for _ in range(inner_steps):
            with torch.enable_grad():
                w, b = weight.requires_grad_(), bias.requires_grad_()
                logits = torch.baddbmm(b, fs, w.transpose(1, 2))  # [E, N*K, way]
                # Sum of each episode's mean loss: each head gets its own task's gradient.
                loss = (
                    F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum")
                    / support_y.shape[1]
                )
                gw, gb = torch.autograd.grad(loss, (w, b))
            weight, bias = (weight - inner_lr * gw).detach(), (bias - inner_lr * gb).detach()
        logits = torch.baddbmm(bias, fq, weight.transpose(1, 2))  # [E, N*Q, way]
        out.append((logits.argmax(-1) == query_y).float().mean(-1).cpu().numpy())
    return np.concatenate(out)


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
    """Write the head-only and full-adaptation rows of one model to ``out``."""
    set_threads(threads)
    summary = json.loads(open(evaluation).read())
    rows = [
        {
            "adaptation": "head" if settings.method == "baseline" else "full",
            **{k: summary[k] for k in ("mean", "ci95", "episodes")},
        }
    ]
    if settings.method != "baseline":
        torch_device = resolve_device(device)
        ckpt = load_checkpoint(checkpoint, torch_device)
        data = PreparedDataset.from_files(images, index, meta)
        pixels = images_to_tensor(data.images, torch_device)
        batches = settings.batches(pixels, pd.read_parquet(test_episodes), data)
        per_episode = head_only_accuracy(
            ckpt.model,
            batches,
            inner_lr=settings.inner_lr,
            inner_steps=settings.inner_steps,
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
    """Every model's rows in one table, and a Markdown summary (full against head-only)."""
    table = pd.concat([pd.read_parquet(t) for t in tables], ignore_index=True)
    table = table.sort_values(["dataset", "method", "seed", "adaptation"]).reset_index(drop=True)
    with atomic_path(out_parquet) as tmp:
        table.to_parquet(tmp, index=False)
    lines = [
        "| dataset | method | seed | adaptation | BatchNorm at test | accuracy (95% CI) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in table.itertuples():
        what = "head only" if r.adaptation == "head" else "every layer"
        lines.append(
            f"| {r.dataset} | {r.method} | {r.seed} | {what} | {r.batchnorm} | "
            f"{100 * r.mean:.2f} +- {100 * r.ci95:.2f}% |"
        )
    with atomic_path(out_markdown) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
