"""The baseline's evaluation: a fresh N-way head fine-tuned per episode on frozen features,
and its plain accuracy on held-out images of its own classes.

Standard training learns a head for its training classes only; on an N-way episode of
other labels it needs a new head, fitted on the support set (Chen et al. 2019's
"Baseline"). The body keeps its running BatchNorm statistics (eval mode).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mamlscope.data.tasks import normalize_batch
from mamlscope.models import head_input

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate activations ``[N, F]``: the input of the model's ``head`` (every
    registered network has one), read by a hook; the forward stops there."""
    return head_input(model, x).flatten(1)


def evaluate_finetune(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    way: int,
    steps: int,
    lr: float,
    finetune_all: bool = False,
    seed: int = 0,
    episode_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """Per-episode accuracy of "pretrain, then fine-tune a fresh N-way head".

    The pretrained body runs in eval mode (its running statistics). Heads of all episodes
    in a batch are trained together as one batched linear map, so there is no loop over
    episodes; with ``finetune_all`` every layer is fine-tuned per episode instead, one
    episode at a time from a copy of the pretrained weights.

    Each episode's fresh head is drawn from (``seed``, episode number), the number being
    ``episode_ids[i]`` for the i-th episode fed, or ``i`` without them. Episodes' losses
    are independent and Adam is elementwise, so an episode's accuracy depends neither on
    the batch size nor on the other episodes.
    """
    model.eval()
    accuracies = []
    fed = 0
    for support_x, support_y, query_x, query_y in batches:
        episodes, n_support = support_y.shape
        numbers = _episode_numbers(fed, episodes, episode_ids)
        fed += episodes
        if finetune_all:
            accuracies.append(
                _finetune_all(
                    model,
                    (support_x, support_y, query_x, query_y),
                    numbers,
                    way=way,
                    steps=steps,
                    lr=lr,
                    seed=seed,
                )
            )
            continue
        with torch.no_grad():
            fs = features_of(model, support_x.flatten(0, 1)).unflatten(0, (episodes, n_support))
            fq = features_of(model, query_x.flatten(0, 1)).unflatten(0, (episodes, -1))
        weight, bias = fit_heads(
            fs, support_y, way=way, steps=steps, lr=lr, seed=seed, numbers=numbers
        )
        with torch.no_grad():
            logits = torch.baddbmm(bias, fq, weight.transpose(1, 2))  # [E, N*Q, way]
            accuracies.append((logits.argmax(-1) == query_y).float().mean(-1).cpu().numpy())
    return np.concatenate(accuracies)


def fit_heads(
    support_features: torch.Tensor,
    support_y: torch.Tensor,
    *,
    way: int,
    steps: int,
    lr: float,
    seed: int,
    numbers: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh N-way heads fitted with Adam on each episode's support features, all at once.

    ``support_features`` ``[E, N*K, F]``, ``support_y`` ``[E, N*K]``; ``numbers`` are the
    episodes' numbers that seed their initial heads. Returns ``weight`` ``[E, way, F]`` and
    ``bias`` ``[E, 1, way]``, detached.
    """
    episodes, n_support = support_y.shape
    fs = support_features
    weight = torch.stack([_fresh_head(seed, n, way, fs.shape[-1]) for n in numbers]).to(fs)
    weight.requires_grad_(True)
    bias = torch.zeros(episodes, 1, way, device=fs.device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            logits = torch.baddbmm(bias, fs, weight.transpose(1, 2))  # [E, N*K, way]
            # Sum over episodes of each episode's mean loss: each head sees its own gradient.
            loss = F.cross_entropy(logits.flatten(0, 1), support_y.flatten(), reduction="sum")
            optimizer.zero_grad()
            (loss / n_support).backward()
            optimizer.step()
    return weight.detach(), bias.detach()


def _episode_numbers(fed: int, episodes: int, episode_ids: Sequence[int] | None) -> list[int]:
    """Numbers of the next ``episodes`` episodes after ``fed`` of them."""
    if episode_ids is None:
        return list(range(fed, fed + episodes))
    if fed + episodes > len(episode_ids):
        raise ValueError(f"more episodes fed than the {len(episode_ids)} episode_ids given")
    return [int(n) for n in episode_ids[fed : fed + episodes]]


def _fresh_head(seed: int, episode: int, way: int, features: int) -> torch.Tensor:
    """The initial head weight [way, features] of one episode, from (seed, episode) alone.

    A generator per episode (SeedSequence spawn keys keep the streams independent), so
    the draw does not depend on which other episodes share the batch. Bias starts at 0.
    """
    state = np.random.SeedSequence(seed, spawn_key=(episode,)).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randn(way, features, generator=generator) * 0.01


def _finetune_all(
    model: nn.Module,
    batch: Batch,
    numbers: Sequence[int],
    *,
    way: int,
    steps: int,
    lr: float,
    seed: int,
) -> np.ndarray:
    """Per episode, fine-tune every layer of a copy, from the batched path's fresh head."""
    support_x, support_y, query_x, query_y = batch
    pretrained_head = model.head
    if not isinstance(pretrained_head, nn.Linear):
        raise TypeError(
            f"{type(model).__name__}.head is a {type(pretrained_head).__name__}, not the "
            "nn.Linear every network has; build the model with mamlscope.models.build_model"
        )
    out = []
    for e, number in enumerate(numbers):
        local = copy.deepcopy(model)
        head = nn.utils.skip_init(nn.Linear, pretrained_head.in_features, way)  # no global RNG
        with torch.no_grad():
            head.weight.copy_(_fresh_head(seed, number, way, head.in_features))
            head.bias.zero_()
        local.head = head.to(support_x.device)
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


@torch.no_grad()
def plain_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    ids: np.ndarray,
    mean: list[float],
    std: list[float],
    device: torch.device,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Loss and accuracy of a classifier in eval mode on the given example ids."""
    model.eval()
    total_loss, hits = 0.0, 0
    for batch in torch.as_tensor(ids).to(device).split(batch_size):
        logits = model(normalize_batch(images[batch], mean, std))
        total_loss += F.cross_entropy(logits, labels[batch], reduction="sum").item()
        hits += (logits.argmax(-1) == labels[batch]).sum().item()
    return total_loss / len(ids), hits / len(ids)
