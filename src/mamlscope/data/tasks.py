"""Tensors for training and evaluation: sampled meta-training tasks and fixed episodes.

Images stay uint8 on the device (4x smaller than float32); a batch is gathered by index
and normalised there, so on CUDA only the indices cross the bus. Sampling runs on the CPU
with a seeded ``torch.Generator`` so a seed gives the same task stream on any device.

Layout of every task or episode (``N`` = way, ``K`` = shot, ``Q`` = query): support is
label-major, ``[c0 x K, c1 x K, ...]``, with labels ``0..N-1``; queries likewise. The
class behind each label is random per task, so no label is tied to a class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mamlscope.config import check_normalize
from mamlscope.data.lookup import pool_ids
from mamlscope.data.splits import check_way_shot, pool_table
from mamlscope.errors import ConfigError, DataError

if TYPE_CHECKING:  # only for the hint; mamlscope.data.prepared need not exist to import this
    from mamlscope.data.prepared import PreparedDataset

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Stats = Sequence[float] | torch.Tensor


def images_to_tensor(images: np.ndarray | torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """The uint8 ``[N, C, H, W]`` images as a tensor on ``device``, still uint8.

    A read-only memmap is copied into memory once (reading a memmap per batch is slow
    and torch cannot wrap a read-only array).
    """
    if isinstance(images, torch.Tensor):
        tensor = images
    else:
        array = np.asarray(images)
        if not (array.flags.writeable and array.flags.c_contiguous):
            array = np.array(array, copy=True, order="C")
        tensor = torch.from_numpy(array)
    if tensor.dtype != torch.uint8 or tensor.dim() != 4:
        raise DataError(
            f"images must be uint8 [N, C, H, W]; got {tensor.dtype} {tuple(tensor.shape)}"
        )
    return tensor.to(device)


def _affine(
    mean: Stats, std: Stats, channels: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale``, ``shift`` shaped ``[C, 1, 1]`` with ``x * scale - shift`` the normalisation.

    One value of mean or std serves every channel. Lists are checked on the CPU, so a
    call on CUDA never waits for the device.
    """
    out = []
    for key, value in (("mean", mean), ("std", std)):
        if isinstance(value, torch.Tensor):
            t = value.to(device=device, dtype=torch.float32).reshape(-1)
        else:
            t = torch.tensor(value, dtype=torch.float32).reshape(-1)
            if key == "std" and bool((t <= 0).any()):
                raise ConfigError(f"normalize.std: must be positive; got {t.tolist()}")
        check_normalize({key: t}, channels)
        out.append(t.to(device).expand(channels).reshape(channels, 1, 1))
    mean_t, std_t = out
    return 1.0 / (255.0 * std_t), mean_t / std_t


def _normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    # One multiply and one subtract: (x / 255 - mean) / std up to float32 rounding.
    return x.to(torch.float32).mul_(scale).sub_(shift)


def normalize_batch(x_uint8: torch.Tensor, mean: Stats, std: Stats) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel as float32; ``x`` is ``[..., C, H, W]`` uint8.

    The network sees float32 only here, so images can stay uint8 (4x smaller) until a
    batch is formed.
    """
    scale, shift = _affine(mean, std, x_uint8.shape[-3], x_uint8.device)
    return _normalize(x_uint8, scale, shift)


def _choose(n: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Per entry of ``n``, ``k`` distinct indices in ``[0, n)`` in uniformly random order.

    Floyd's algorithm: step ``s`` draws ``t`` in ``[0, top]`` with ``top = n - k + s`` and
    takes ``t``, or ``top`` when ``t`` is already taken. Its cost is ``O(k^2)`` whatever
    ``n`` (random keys + top-k would cost ``O(n)``: 7,000 per MNIST class). The steps are
    resolved together: ``t`` is taken iff it equals an earlier ``t``, or an earlier ``top``
    whose step collided; the second rule chains rarely, so a fixed point over all steps
    at once needs one or two rounds. Floyd gives a uniform *set*; a random argsort then
    makes the order uniform, which matters because position becomes the label.
    """
    steps = torch.arange(k)
    top = n.unsqueeze(-1) - k + steps  # [..., k]
    u = torch.rand(top.shape, generator=generator, dtype=torch.float64)
    t = torch.minimum((u * (top + 1)).long(), top)
    earlier = steps.unsqueeze(1) > steps  # [k, k]: column j is a step before row s
    # .sum(-1) > 0 rather than .any(-1): the same, and several times faster on CPU.
    hits_t = ((t.unsqueeze(-1) == t.unsqueeze(-2)) & earlier).sum(-1) > 0
    hits_top = (t.unsqueeze(-1) == top.unsqueeze(-2)) & earlier
    collided = hits_t
    while True:  # at most k rounds; monotone, as collided_s depends on earlier steps only
        update = hits_t | ((hits_top & collided.unsqueeze(-2)).sum(-1) > 0)
        if torch.equal(update, collided):
            break
        collided = update
    chosen = torch.where(collided, top, t)
    order = torch.rand(top.shape, generator=generator).argsort(-1)
    return chosen.gather(-1, order)


class TaskSampler:
    """Draws N-way K-shot Q-query tasks from one pool, batched and seeded.

    The pool is held as a padded ``[classes, max_per_class]`` table of example ids with
    per-class counts; a call draws every task's classes and examples at once, then
    gathers the images on the device. The same ``seed`` gives the same stream of tasks.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        index: pd.DataFrame,
        example_ids: Sequence[int] | np.ndarray,
        way: int,
        shot: int,
        query: int,
        mean: Stats,
        std: Stats,
        seed: int,
        device: str | torch.device | None = None,
        *,
        pool: str = "train",
    ) -> None:
        if device is None:
            device = images.device if isinstance(images, torch.Tensor) else "cpu"
        self.device = torch.device(device)
        self.images = images_to_tensor(images, self.device)
        members = pool_table(index, np.asarray(example_ids, dtype=np.int64))
        if len(members) and int(members["example_id"].max()) >= len(self.images):
            raise DataError(
                f"example id {int(members['example_id'].max())} is beyond the "
                f"{len(self.images)} stored images"
            )
        counts = members.groupby("class_id", sort=True).size()
        if len(members) == 0:
            counts = pd.Series([], dtype=np.int64)
        check_way_shot(counts, pool, way=way, shot=shot, query=query)
        self.way, self.shot, self.query = way, shot, query
        self.class_ids = torch.tensor(counts.index.to_numpy(np.int64))  # table row -> class_id
        sizes = counts.to_numpy(np.int64, copy=True)
        table = np.zeros((len(sizes), int(sizes.max())), dtype=np.int64)
        rows = np.repeat(np.arange(len(sizes)), sizes)
        cols = np.arange(len(members)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        table[rows, cols] = members["example_id"].to_numpy(np.int64)
        self.table = torch.from_numpy(table)  # [classes, max_per_class], CPU
        self.counts = torch.from_numpy(sizes)  # [classes], CPU
        self.scale, self.shift = _affine(mean, std, self.images.shape[1], self.device)
        self.generator = torch.Generator().manual_seed(int(seed))
        arange = torch.arange(way, device=self.device)
        self._support_y = arange.repeat_interleave(shot)
        self._query_y = arange.repeat_interleave(query)

    @classmethod
    def from_prepared(
        cls,
        data: PreparedDataset,
        pools: pd.DataFrame,
        pool: str,
        way: int,
        shot: int,
        query: int,
        seed: int,
        device: str | torch.device | None = None,
    ) -> TaskSampler:
        """A sampler over one pool of a prepared dataset, with its own normalisation."""
        ids = pool_ids(pools, pool)
        norm = data.meta["normalize"]
        return cls(
            data.images,
            data.index,
            ids,
            way,
            shot,
            query,
            norm["mean"],
            norm["std"],
            seed,
            device,
            pool=pool,
        )

    def sample_ids(self, num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example ids ``[T, N*K]`` (support) and ``[T, N*Q]`` (query), on the CPU."""
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1; got {num_tasks}")
        way, shot, query = self.way, self.shot, self.query
        n_classes = torch.full((num_tasks,), len(self.counts), dtype=torch.long)
        classes = _choose(n_classes, way, self.generator)  # [T, N] rows of the table
        picks = _choose(self.counts[classes], shot + query, self.generator)  # [T, N, K+Q]
        ids = self.table[classes.unsqueeze(-1), picks]
        support = ids[..., :shot].reshape(num_tasks, way * shot)
        queries = ids[..., shot:].reshape(num_tasks, way * query)
        return support, queries

    def sample(self, num_tasks: int) -> Batch:
        """``num_tasks`` tasks as ``(support_x, support_y, query_x, query_y)`` on the device.

        ``support_x`` is float32 ``[T, N*K, C, H, W]``, ``support_y`` int64 ``[T, N*K]``
        (label-major), and likewise for the queries. Classes are distinct within a task,
        and so are examples.
        """
        support, queries = self.sample_ids(num_tasks)
        return (
            self._gather(support),
            self._support_y.repeat(num_tasks, 1),
            self._gather(queries),
            self._query_y.repeat(num_tasks, 1),
        )

    def _gather(self, ids: torch.Tensor) -> torch.Tensor:
        return _gather(self.images, ids, self.scale, self.shift)


def _gather(
    images: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Normalised images ``[*ids.shape, C, H, W]``; only ``ids`` move to the device."""
    flat = ids.reshape(-1).to(images.device, non_blocking=True)
    x = images.index_select(0, flat)
    return _normalize(x, scale, shift).reshape(*ids.shape, *images.shape[1:])


def _episode_arrays(
    episodes_df: pd.DataFrame, way: int, shot: int, query: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Support ids/labels ``[E, N*K]`` and query ids/labels ``[E, N*Q]``, checked."""
    missing = {"episode", "role", "example_id", "label"} - set(episodes_df.columns)
    if missing:
        raise DataError(f"episode table lacks column(s) {sorted(missing)}")
    episode = episodes_df["episode"].to_numpy(np.int64)
    role = episodes_df["role"].astype(str).to_numpy()
    label = episodes_df["label"].to_numpy(np.int64)
    ids = episodes_df["example_id"].to_numpy(np.int64)
    if not np.isin(role, ["support", "query"]).all():
        raise DataError("episode table: role must be 'support' or 'query'")
    is_query = role == "query"
    order = np.lexsort((label, is_query, episode))  # stable: episode, support first, label
    per_s, per_q = way * shot, way * query
    n_ep = len(np.unique(episode))
    if len(order) != n_ep * (per_s + per_q):
        raise DataError(
            f"episode table has {len(order)} rows for {n_ep} episodes; a {way}-way {shot}-shot "
            f"{query}-query episode has {per_s + per_q}"
        )
    shape = (n_ep, per_s + per_q)
    ep, q, lab, ex = (a[order].reshape(shape) for a in (episode, is_query, label, ids))
    expected = np.concatenate([np.repeat(np.arange(way), shot), np.repeat(np.arange(way), query)])
    if (ep != ep[:, :1]).any() or q[:, :per_s].any() or (lab != expected).any():
        raise DataError(
            f"episode table does not match {way}-way {shot}-shot {query}-query: each episode "
            f"needs labels 0..{way - 1}, each with {shot} support and {query} query rows"
        )
    return ex[:, :per_s], lab[:, :per_s], ex[:, per_s:], lab[:, per_s:]


def iterate_episodes(
    images: np.ndarray | torch.Tensor,
    episodes_df: pd.DataFrame,
    way: int,
    shot: int,
    query: int,
    mean: Stats,
    std: Stats,
    batch_size: int,
    device: str | torch.device | None = None,
) -> Iterator[Batch]:
    """Yield fixed episodes (as written by ``make_episodes``) in batches of ``batch_size``.

    Episodes come in ascending ``episode`` order and keep their labels; within an episode
    rows are label-major, as in :class:`TaskSampler`. The table is checked against
    ``way``/``shot``/``query`` before the first batch, so a mismatched config fails at once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if device is None:
        device = images.device if isinstance(images, torch.Tensor) else "cpu"
    tensor = images_to_tensor(images, device)
    s_ids, s_lab, q_ids, q_lab = _episode_arrays(episodes_df, way, shot, query)
    if len(s_ids) and max(int(s_ids.max()), int(q_ids.max())) >= len(tensor):
        raise DataError(f"episode table names example ids beyond the {len(tensor)} stored images")
    scale, shift = _affine(mean, std, tensor.shape[1], tensor.device)
    s_ids_t, s_lab_t, q_ids_t, q_lab_t = (
        torch.from_numpy(a).to(tensor.device) for a in (s_ids, s_lab, q_ids, q_lab)
    )
    return _batches(tensor, s_ids_t, s_lab_t, q_ids_t, q_lab_t, scale, shift, batch_size)


def _batches(
    images: torch.Tensor,
    s_ids: torch.Tensor,
    s_lab: torch.Tensor,
    q_ids: torch.Tensor,
    q_lab: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    batch_size: int,
) -> Iterator[Batch]:
    for start in range(0, len(s_ids), batch_size):
        end = start + batch_size
        yield (
            _gather(images, s_ids[start:end], scale, shift),
            s_lab[start:end],
            _gather(images, q_ids[start:end], scale, shift),
            q_lab[start:end],
        )


def configured_episodes(
    images: torch.Tensor,
    episodes_df: pd.DataFrame,
    ds_cfg: dict,
    mean: Stats,
    std: Stats,
    device: str | torch.device | None = None,
) -> Iterator[Batch]:
    """:func:`iterate_episodes` with way, shot, query and batch size from a dataset's config."""
    ep = ds_cfg["episodes"]
    return iterate_episodes(
        images,
        episodes_df,
        way=ep["way"],
        shot=ep["shot"],
        query=ep["query"],
        mean=mean,
        std=std,
        batch_size=ds_cfg["maml"]["eval_batch"],
        device=device,
    )
