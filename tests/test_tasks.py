"""Task and episode tensors: every pixel traced back to the example it must come from."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamlscope.data.splits import make_episodes
from mamlscope.data.tasks import (
    TaskSampler,
    _choose,
    images_to_tensor,
    iterate_episodes,
    normalize_batch,
)
from mamlscope.errors import ConfigError, DataError

MEAN, STD = [0.25], [0.5]


def fake_dataset(classes: int = 8, per_class: int = 10, seed: int = 0):
    """Index and uint8 images [N, 1, 4, 4] whose first two pixels encode the example id."""
    rng = np.random.default_rng(seed)
    class_id = rng.permutation(np.repeat(np.arange(classes), per_class))
    n = len(class_id)
    index = pd.DataFrame(
        {
            "example_id": np.arange(n, dtype=np.int64),
            "class_id": class_id,
            "class_name": [f"c{c}" for c in class_id],
            "base_class": class_id,
            "rotation": 0,
            "group": [f"c{c}" for c in class_id],
            "origin": "train",
        }
    )
    images = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    return index, images


def decode(x: torch.Tensor, mean=MEAN, std=STD) -> np.ndarray:
    """Example ids back from normalised images ``[..., 1, 4, 4]``."""
    pixels = torch.round((x * std[0] + mean[0]) * 255).to(torch.int64)
    return (pixels[..., 0, 0, 0] + 256 * pixels[..., 0, 0, 1]).numpy()


def test_normalize_batch_formula_and_channels():
    x = torch.randint(0, 256, (2, 3, 3, 5, 5), dtype=torch.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    out = normalize_batch(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    ref = (x.double() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)
    one = normalize_batch(x, [0.5], [0.2])  # one value serves every channel
    torch.testing.assert_close(one, normalize_batch(x, [0.5] * 3, [0.2] * 3))
    with pytest.raises(ConfigError, match=r"normalize\.mean"):
        normalize_batch(x, [0.1, 0.2], [1.0])
    with pytest.raises(ConfigError, match=r"normalize\.std"):
        normalize_batch(x, [0.1], [0.0])


def test_images_to_tensor_keeps_uint8_and_reads_memmaps(tmp_path):
    _, images = fake_dataset()
    np.save(tmp_path / "images.npy", images)
    mm = np.load(tmp_path / "images.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning
        t = images_to_tensor(mm, "cpu")
    assert t.dtype == torch.uint8 and t.shape == images.shape
    assert torch.equal(t, torch.from_numpy(images))
    with pytest.raises(DataError, match="uint8"):
        images_to_tensor(images.astype(np.float32), "cpu")
    with pytest.raises(DataError, match=r"\[N, C, H, W\]"):
        images_to_tensor(images[:, 0], "cpu")


@settings(max_examples=10, deadline=None)
@given(
    way=st.integers(2, 6),
    shot=st.integers(1, 3),
    query=st.integers(1, 4),
    tasks=st.integers(1, 9),
    seed=st.integers(0, 2**31),
)
def test_sampled_tasks_trace_back_to_the_right_examples(way, shot, query, tasks, seed):
    index, images = fake_dataset(classes=8, per_class=10)
    pool = index.loc[index.groupby("class_id").cumcount() >= 2, "example_id"].to_numpy()  # 8 each
    sampler = TaskSampler(images, index, pool, way, shot, query, MEAN, STD, seed)
    sx, sy, qx, qy = sampler.sample(tasks)
    assert sx.shape == (tasks, way * shot, 1, 4, 4) and sx.dtype == torch.float32
    assert qx.shape == (tasks, way * query, 1, 4, 4) and qx.dtype == torch.float32
    assert sy.dtype == qy.dtype == torch.int64
    assert sy.tolist() == [np.repeat(np.arange(way), shot).tolist()] * tasks
    assert qy.tolist() == [np.repeat(np.arange(way), query).tolist()] * tasks
    s_ids, q_ids = decode(sx), decode(qx)
    # every image is exactly the normalised stored image of the decoded example
    torch.testing.assert_close(sx, normalize_batch(torch.from_numpy(images[s_ids]), MEAN, STD))
    torch.testing.assert_close(qx, normalize_batch(torch.from_numpy(images[q_ids]), MEAN, STD))
    cls = index["class_id"].to_numpy()
    for t in range(tasks):
        ids = np.concatenate([s_ids[t], q_ids[t]])
        assert len(set(ids)) == len(ids)  # examples distinct, support and query disjoint
        assert set(ids) <= set(pool)
        s_cls = cls[s_ids[t]].reshape(way, shot)
        q_cls = cls[q_ids[t]].reshape(way, query)
        assert (s_cls == s_cls[:, :1]).all() and (q_cls == s_cls[:, :1]).all()
        assert len(set(s_cls[:, 0])) == way  # classes of a task distinct


def test_sampler_is_deterministic_per_seed():
    index, images = fake_dataset(classes=10, per_class=30)
    make = lambda seed: TaskSampler(images, index, index["example_id"], 5, 1, 3, MEAN, STD, seed)  # noqa: E731
    a, b, c = make(3), make(3), make(4)
    first = [a.sample(4) for _ in range(3)]
    second = [b.sample(4) for _ in range(3)]
    for x, y in zip(first, second, strict=True):
        for u, v in zip(x, y, strict=True):
            assert torch.equal(u, v)
    assert not torch.equal(first[0][0], first[1][0])  # the stream moves on
    assert not torch.equal(first[0][0], c.sample(4)[0])


def test_sampler_accepts_a_device_tensor_and_prepared_data():
    index, images = fake_dataset()
    tensor = images_to_tensor(images, "cpu")
    pools = pd.DataFrame({"example_id": index["example_id"], "pool": "train"})
    data = SimpleNamespace(
        images=images, index=index, meta={"normalize": {"mean": MEAN, "std": STD}}
    )
    a = TaskSampler(tensor, index, index["example_id"], 3, 1, 2, MEAN, STD, 0)
    b = TaskSampler.from_prepared(data, pools, "train", 3, 1, 2, seed=0)
    for u, v in zip(a.sample(5), b.sample(5), strict=True):
        assert torch.equal(u, v)


def test_sampler_errors_name_the_key():
    index, images = fake_dataset(classes=4, per_class=6)
    with pytest.raises(ConfigError, match=r"episodes\.way.*'train'.*only 4"):
        TaskSampler(images, index, index["example_id"], 5, 1, 1, MEAN, STD, 0)
    with pytest.raises(ConfigError, match=r"episodes\.shot.*7.*only 6"):
        TaskSampler(images, index, index["example_id"], 2, 2, 5, MEAN, STD, 0)
    with pytest.raises(DataError, match="not in the index"):
        TaskSampler(images, index, [0, 999], 2, 1, 1, MEAN, STD, 0)


def test_choose_is_uniform_over_ordered_tuples():
    g = torch.Generator().manual_seed(0)
    n, k, draws = 5, 2, 40_000
    out = _choose(torch.full((draws,), n), k, g)
    assert ((out >= 0) & (out < n)).all() and (out[:, 0] != out[:, 1]).all()
    counts = torch.bincount(out[:, 0] * n + out[:, 1], minlength=n * n).reshape(n, n)
    off_diagonal = counts[~torch.eye(n, dtype=torch.bool)].double()
    expected = draws / (n * (n - 1))
    assert ((off_diagonal - expected).abs() < 5 * expected**0.5).all()
    full = _choose(torch.tensor([7, 3, 16]).repeat(200), 3, g)  # k close to or equal to n
    assert (full.sort(-1).values.diff(dim=-1) > 0).all()
    assert (full < torch.tensor([7, 3, 16]).repeat(200).unsqueeze(-1)).all()


@pytest.mark.parametrize("batch_size", [1, 4, 7, 50])
def test_iterate_episodes_reproduces_the_table(batch_size):
    index, images = fake_dataset(classes=8, per_class=12)
    pools = pd.DataFrame({"example_id": index["example_id"], "pool": "test"})
    way, shot, query, count = 4, 2, 3, 7
    table = make_episodes(
        index, pools, "test", way=way, shot=shot, query=query, count=count, seed=1
    )
    batches = list(iterate_episodes(images, table, way, shot, query, MEAN, STD, batch_size))
    assert [len(b[0]) for b in batches] == [
        min(batch_size, count - s) for s in range(0, count, batch_size)
    ]
    sx, sy, qx, qy = (torch.cat(parts) for parts in zip(*batches, strict=True))
    assert sx.shape == (count, way * shot, 1, 4, 4) and qx.shape == (count, way * query, 1, 4, 4)
    sup = table[table["role"] == "support"]
    qry = table[table["role"] == "query"]
    assert decode(sx).reshape(-1).tolist() == sup["example_id"].tolist()
    assert decode(qx).reshape(-1).tolist() == qry["example_id"].tolist()
    assert sy.reshape(-1).tolist() == sup["label"].tolist()
    assert qy.reshape(-1).tolist() == qry["label"].tolist()
    torch.testing.assert_close(sx, normalize_batch(torch.from_numpy(images[decode(sx)]), MEAN, STD))
    # Row order of the table does not matter: same episodes, same label of every example.
    shuffled = table.sample(frac=1.0, random_state=0)
    again = list(iterate_episodes(images, shuffled, way, shot, query, MEAN, STD, batch_size))
    sx2, sy2, _, _ = (torch.cat(parts) for parts in zip(*again, strict=True))
    assert torch.equal(sy2, sy)
    assert np.array_equal(
        np.sort(decode(sx2).reshape(count, way, shot), -1),
        np.sort(decode(sx).reshape(count, way, shot), -1),
    )


def test_iterate_episodes_checks_the_table_first():
    index, images = fake_dataset()
    pools = pd.DataFrame({"example_id": index["example_id"], "pool": "val"})
    table = make_episodes(index, pools, "val", way=3, shot=1, query=2, count=2, seed=0)
    with pytest.raises(DataError, match="5-way"):
        iterate_episodes(images, table, 5, 1, 2, MEAN, STD, 4)
    with pytest.raises(DataError, match="2-shot"):
        iterate_episodes(images, table, 3, 2, 1, MEAN, STD, 4)
    empty = table.iloc[:0]
    assert list(iterate_episodes(images, empty, 3, 1, 2, MEAN, STD, 4)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_stream_and_tables():
    index, images = fake_dataset(classes=10, per_class=30)
    ids = index["example_id"]
    cpu = TaskSampler(images, index, ids, 5, 2, 3, MEAN, STD, 9, "cpu")
    gpu = TaskSampler(images, index, ids, 5, 2, 3, MEAN, STD, 9, "cuda")
    assert gpu.images.is_cuda and gpu.images.dtype == torch.uint8
    for u, v in zip(cpu.sample(6), gpu.sample(6), strict=True):
        assert v.is_cuda
        torch.testing.assert_close(u, v.cpu(), atol=1e-6, rtol=0)
    pools = pd.DataFrame({"example_id": ids, "pool": "test"})
    table = make_episodes(index, pools, "test", way=4, shot=1, query=2, count=5, seed=0)
    on_gpu = images_to_tensor(images, "cuda")
    for a, b in zip(
        iterate_episodes(images, table, 4, 1, 2, MEAN, STD, 2, "cpu"),
        iterate_episodes(on_gpu, table, 4, 1, 2, MEAN, STD, 2),
        strict=True,
    ):
        for u, v in zip(a, b, strict=True):
            assert v.is_cuda
            torch.testing.assert_close(u, v.cpu(), atol=1e-6, rtol=0)
