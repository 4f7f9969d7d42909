"""Evaluation on fixed episodes: MAML adapts, the baseline fine-tunes a fresh head.

Accuracy is reported as the mean over episodes with a 95% interval,
1.96 * std / sqrt(episodes) (std with ddof=1, the sample standard deviation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mamlscope.checkpoint import Checkpoint
from mamlscope.maml import adapt_and_predict

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Accuracy:
    """Mean accuracy over episodes with its 95% confidence interval half-width."""

    mean: float
    ci95: float
    std: float
    episodes: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f}% +- {100 * self.ci95:.2f}% ({self.episodes} episodes)"


def summarize(per_episode: Iterable[float]) -> Accuracy:
    """Mean and 1.96 * std / sqrt(n) of per-episode accuracies."""
    values = np.asarray(list(per_episode), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no episodes to summarise")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return Accuracy(
        mean=float(values.mean()),
        ci95=1.96 * std / math.sqrt(values.size),
        std=std,
        episodes=int(values.size),
    )


def evaluate_maml(
    model: nn.Module, batches: Iterable[Batch], *, inner_lr: float, inner_steps: int
) -> np.ndarray:
    """Per-episode query accuracy after adapting on each support set (batch statistics)."""
    accuracies = []
    for support_x, support_y, query_x, query_y in batches:
        logits = adapt_and_predict(
            model, support_x, support_y, query_x, inner_lr=inner_lr, inner_steps=inner_steps
        )  # [E, N*Q, way]
        hits = (logits.argmax(-1) == query_y).float().mean(-1)  # [E]
        accuracies.append(hits.cpu().numpy())
    return np.concatenate(accuracies)


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate activations: every child of the model but its `head`."""
    for name, layer in model.named_children():
        if name == "head":
            break
        x = layer(x)
    return x.flatten(1)


def evaluate_finetune(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    way: int,
    steps: int,
    lr: float,
    finetune_all: bool = False,
) -> np.ndarray:
    """Per-episode accuracy of "pretrain, then fine-tune a fresh N-way head".

    The pretrained body runs in eval mode (its running statistics). Heads of all episodes
    in a batch are trained together as one batched linear map, so there is no loop over
    episodes; with ``finetune_all`` every layer is fine-tuned per episode instead, one
    episode at a time from a copy of the pretrained weights.
    """
    model.eval()
    accuracies = []
    for support_x, support_y, query_x, query_y in batches:
        if finetune_all:
            accuracies.append(
                _finetune_all(
                    model, support_x, support_y, query_x, query_y, way=way, steps=steps, lr=lr
                )
            )
            continue
        episodes, n_support = support_y.shape
        with torch.no_grad():
            fs = features_of(model, support_x.flatten(0, 1)).unflatten(0, (episodes, n_support))
            fq = features_of(model, query_x.flatten(0, 1)).unflatten(0, (episodes, -1))
        generator = torch.Generator().manual_seed(0)
        weight = (torch.randn(episodes, way, fs.shape[-1], generator=generator) * 0.01).to(fs)
        weight.requires_grad_(True)
        bias = torch.zeros(episodes, 1, way, device=fs.device, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            logits = torch.baddbmm(bias, fs, weight.transpose(1, 2))  # [E, N*K, way]
            # Sum over episodes of each episode's mean loss: each head sees its own gradient.
            loss = F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum")
            optimizer.zero_grad()
            (loss / n_support).backward()
            optimizer.step()
        with torch.no_grad():
            logits = torch.baddbmm(bias, fq, weight.transpose(1, 2))  # [E, N*Q, way]
            accuracies.append((logits.argmax(-1) == query_y).float().mean(-1).cpu().numpy())
    return np.concatenate(accuracies)


def _finetune_all(model, support_x, support_y, query_x, query_y, *, way, steps, lr):  # type: ignore[no-untyped-def]
    import copy

    out = []
    for e in range(support_x.shape[0]):
        local = copy.deepcopy(model)
        local.head = nn.Linear(local.head.in_features, way).to(support_x.device)
        local.eval()  # keep the pretrained normalisation statistics fixed
        optimizer = torch.optim.Adam(local.parameters(), lr=lr)
        for _ in range(steps):
            loss = F.cross_entropy(local(support_x[e]), support_y[e])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out.append((local(query_x[e]).argmax(-1) == query_y[e]).float().mean().item())
    return np.asarray(out)


def evaluate_checkpoint_on(
    checkpoint: Checkpoint, batches: Iterable[Batch], *, way: int
) -> np.ndarray:
    """Per-episode accuracy by the checkpoint's own method and its config's settings."""
    cfg = checkpoint.config
    if checkpoint.method == "baseline":
        base = cfg["baseline"]
        return evaluate_finetune(
            checkpoint.model,
            batches,
            way=way,
            steps=base["finetune_steps"],
            lr=base["finetune_lr"],
            finetune_all=base["finetune_all"],
        )
    maml = cfg["maml"]
    return evaluate_maml(
        checkpoint.model, batches, inner_lr=maml["inner_lr"], inner_steps=maml["test_inner_steps"]
    )
