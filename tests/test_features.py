"""Feature-study library: activations and their Parquet layout, probe, figures, saliency,
embeddings and activation maximisation, on small random networks."""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mamlscope.errors import ConfigError, DataError
from mamlscope.features import activations as acts_mod
from mamlscope.features import figures
from mamlscope.features.activations import (
    SCHEMA,
    activations_frame,
    layer_activations,
    layer_matrix,
    read_activations,
    summarise,
    write_activations,
)
from mamlscope.features.embedding import embed
from mamlscope.features.maximise import (
    compose,
    jitter,
    maximise,
    random_rotate,
    random_scale,
)
from mamlscope.features.probe import choose_probe
from mamlscope.features.saliency import saliency_maps
from mamlscope.models import batch_statistics, build_model
from mamlscope.similarity import cka_matrix

IN_SHAPE = (1, 28, 28)


def _fc(running_stats: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model("fc", IN_SHAPE, 5, hidden=[32, 16], running_stats=running_stats)
    if running_stats:  # give the running statistics something other than their init
        model.train()
        with torch.no_grad():
            for _ in range(10):
                model(torch.randn(64, *IN_SHAPE))
        model.eval()
    return model


def _conv(channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model("conv4", (channels, 28, 28), 5, filters=8)


# --- probe -----------------------------------------------------------------------------


def _index_and_pools() -> tuple[pd.DataFrame, pd.DataFrame]:
    sizes = {0: 30, 1: 30, 2: 30, 3: 4}  # class 3 is too small for an equal share
    class_id = np.concatenate([np.full(s, c) for c, s in sizes.items()])
    index = pd.DataFrame({"example_id": np.arange(len(class_id)), "class_id": class_id})
    pools = pd.DataFrame({"example_id": index.example_id, "pool": "test"})
    pools.loc[::10, "pool"] = "train"
    return index, pools


def test_probe_is_balanced_deterministic_and_sorted() -> None:
    index, pools = _index_and_pools()
    probe = choose_probe(index, pools, n=42, seed=3)
    assert list(probe.columns) == ["example_id", "class_id"]
    assert probe.example_id.is_monotonic_increasing and probe.example_id.is_unique
    assert set(probe.example_id) <= set(pools.example_id[pools.pool == "test"])
    merged = probe.merge(index, on="example_id", suffixes=("", "_index"))
    assert (merged.class_id == merged.class_id_index).all()
    counts = probe.class_id.value_counts().sort_index()
    test_class3 = int((index.class_id[pools.pool == "test"] == 3).sum())
    assert counts[3] == test_class3  # the small class whole, the rest share what is left
    assert counts.drop(3).max() - counts.drop(3).min() <= 1 and counts.sum() == 42
    pd.testing.assert_frame_equal(probe, choose_probe(index, pools, n=42, seed=3))
    assert not probe.equals(choose_probe(index, pools, n=42, seed=4))


def test_probe_errors_name_the_problem() -> None:
    index, pools = _index_and_pools()
    with pytest.raises(DataError, match="has 10"):
        choose_probe(index, pools, n=11, seed=0, pool="train")
    with pytest.raises(DataError, match=r"\['test', 'train'\]"):
        choose_probe(index, pools, n=5, seed=0, pool="val")


# --- activations -----------------------------------------------------------------------


@pytest.mark.parametrize("running_stats", [False, True])
def test_layer_activations_follow_the_forward_and_the_bn_policy(running_stats: bool) -> None:
    model = _fc(running_stats)
    x = torch.randn(16, *IN_SHAPE)
    with torch.no_grad():
        acts = layer_activations(model, x, batch_statistics=not running_stats)
        if running_stats:
            expected = model(x)  # eval mode, running statistics
        else:
            with batch_statistics():
                expected = model(x)
    assert list(acts) == model.layer_names()
    torch.testing.assert_close(acts["head"], expected)
    for mode in (True, False):  # the caller's mode is restored
        model.train(mode)
        layer_activations(model, x, ["fc1"], batch_statistics=not running_stats)
        assert model.training is mode


def test_layer_activations_with_adapted_params_and_selected_layers() -> None:
    model = _fc(False)
    x = torch.randn(8, *IN_SHAPE)
    params = {"fc2.weight": torch.zeros_like(model.fc2.weight)}
    with torch.no_grad():
        acts = layer_activations(model, x, ["relu2", "fc2"], batch_statistics=True, params=params)
    assert list(acts) == ["relu2", "fc2"]
    torch.testing.assert_close(acts["fc2"], model.fc2.bias.expand(8, -1))
    assert model.fc2.weight.abs().sum() > 0  # the model itself is untouched


def test_unknown_layer_and_wrong_policy_are_clear_errors() -> None:
    model = _fc(False)
    x = torch.randn(4, *IN_SHAPE)
    with pytest.raises(ConfigError, match=r"unknown layer\(s\) \['conv1'\].*'fc1', 'bn1'"):
        layer_activations(model, x, ["conv1"], batch_statistics=True)
    with pytest.raises(ConfigError, match="pass batch_statistics=True"):
        layer_activations(model, x, batch_statistics=False)
    with pytest.raises(ConfigError, match="lacks"):
        layer_activations(model, x, batch_statistics=True, params={"fc9.weight": x})


def test_summarise_conv_activations() -> None:
    model = _conv()
    with torch.no_grad():
        acts = layer_activations(
            model, torch.randn(6, 1, 28, 28), ["relu1", "pool"], batch_statistics=True
        )
    assert summarise(acts["relu1"]).shape == (6, 8)
    torch.testing.assert_close(summarise(acts["relu1"]), acts["relu1"].mean(dim=(2, 3)))
    assert summarise(acts["pool"]) is acts["pool"]


def _resnet() -> torch.nn.Module:
    torch.manual_seed(2)
    return build_model("resnet12", (3, 32, 32), 5, options={"channels": [3, 4, 5, 6]})


def test_a_residual_network_records_its_entrys_layers_and_reads_its_first_block() -> None:
    """Not an nn.Sequential: the layers its registry entry names, by hooks; the filters
    figure shows block1.conv1; the default neurons are the last two blocks (they hold
    BatchNorm); maximising block1 needs a context (a BatchNorm runs inside it)."""
    model = _resnet()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        acts = layer_activations(model, x, batch_statistics=True)
        one = layer_activations(model, x, ["block2"], batch_statistics=True)
    assert list(acts) == ["block1", "block2", "block3", "block4", "pool", "head"]
    assert acts["block2"].shape == (6, 4, 8, 8) and summarise(acts["block4"]).shape == (6, 6)
    torch.testing.assert_close(one["block2"], acts["block2"], rtol=0, atol=0)
    torch.testing.assert_close(acts["pool"], acts["block4"].mean(dim=(2, 3)))
    weights = figures._first_layer_weights(model, (3, 32, 32))
    np.testing.assert_array_equal(weights, model.block1.conv1.weight.detach().numpy())
    from mamlscope.features.plots import chosen_neurons

    assert chosen_neurons(model, None) == [
        {"layer": "block3", "unit": 0},
        {"layer": "block4", "unit": 0},
    ]
    with pytest.raises(ConfigError, match="context="):
        maximise(model, "block1", 0, in_shape=(3, 32, 32), mean=0.5, std=0.2,
                 batch_statistics=True, steps=1)  # fmt: skip


def test_a_module_not_built_by_the_registry_records_its_children() -> None:
    model = torch.nn.Sequential(
        collections.OrderedDict(
            flat=torch.nn.Flatten(), hidden=torch.nn.Linear(16, 4), head=torch.nn.Linear(4, 2)
        )
    )
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        acts = layer_activations(model, x, batch_statistics=True)
    assert list(acts) == ["flat", "hidden", "head"]
    torch.testing.assert_close(acts["head"], model(x))
    assert figures._first_layer_weights(model, (1, 4, 4)).shape == (4, 1, 4, 4)  # hidden
    with pytest.raises(ValueError, match=r"first layer 'hidden' has weights \(4, 16\)"):
        figures._first_layer_weights(model, (1, 2, 2))


def test_activation_parquet_round_trip(tmp_path) -> None:
    model = _conv()
    x = torch.randn(10, 1, 28, 28)
    ids, labels = np.arange(100, 110)[::-1].copy(), np.arange(10) % 5
    with torch.no_grad():
        meta = {
            k: summarise(v) for k, v in layer_activations(model, x, batch_statistics=True).items()
        }
    adapted = {"relu2": meta["relu2"][:4] + 1.0}
    frame = pd.concat(
        [
            activations_frame(meta, ids, labels),
            activations_frame(adapted, ids[:4], labels[:4], stage="adapted", episode=7),
        ],
        ignore_index=True,
    )
    path = tmp_path / "acts.parquet"
    write_activations(path, frame)

    stored = pq.ParquetFile(path)
    assert stored.schema_arrow.equals(SCHEMA, check_metadata=True)
    assert stored.metadata.num_row_groups == len(model.layer_names())  # one per layer
    back = pd.read_parquet(path)  # plain pandas, one line
    assert list(back.columns) == list(acts_mod.COLUMNS) and len(back) == len(frame)
    assert back.example_id.dtype == np.int64 and back.episode.dtype == np.int64

    relu2 = read_activations(path, "relu2")
    assert set(relu2.layer) == {"relu2"} and len(relu2) == 14
    m = layer_matrix(relu2, "relu2")
    assert m.values.dtype == np.float32 and m.values.shape == (10, 8)
    order = np.argsort(ids)
    np.testing.assert_array_equal(m.example_ids, ids[order])
    np.testing.assert_array_equal(m.labels, labels[order])
    np.testing.assert_allclose(m.values, meta["relu2"].numpy()[order])
    a = layer_matrix(relu2, "relu2", stage="adapted", episode=7)
    np.testing.assert_allclose(a.values, adapted["relu2"].numpy()[np.argsort(ids[:4])])
    with pytest.raises(ConfigError, match=r"it holds \['conv1', 'bn1'"):
        read_activations(path, "fc1")
    with pytest.raises(ConfigError, match="no rows for layer='relu2', stage='adapted', episode=3"):
        layer_matrix(relu2, "relu2", stage="adapted", episode=3)


def test_activation_frame_rejects_bad_rows() -> None:
    ok = {"fc1": np.zeros((3, 2))}
    with pytest.raises(DataError, match="episode must be >= -1 for stage 'meta'"):
        activations_frame(ok, [0, 1, 2], [0, 0, 0], stage="meta", episode=-2)
    with pytest.raises(DataError, match=">= 0 for stage 'adapted'"):
        activations_frame(ok, [0, 1, 2], [0, 0, 0], stage="adapted", episode=-1)
    meta_of_episode = activations_frame(ok, [0, 1, 2], [0, 0, 0], stage="meta", episode=2)
    assert set(meta_of_episode["episode"]) == {2}  # an episode's images before adaptation
    with pytest.raises(DataError, match="stage must be one of"):
        activations_frame(ok, [0, 1, 2], [0, 0, 0], stage="final", episode=2)
    with pytest.raises(ValueError, match="summarise"):
        activations_frame({"conv1": np.zeros((3, 2, 4, 4))}, [0, 1, 2], [0, 0, 0])


# --- saliency ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_stats", [True, False])
def test_saliency_is_each_examples_own_gradient(batch_stats: bool) -> None:
    model = _fc(running_stats=not batch_stats)
    x, target = torch.randn(6, *IN_SHAPE), torch.tensor([0, 1, 2, 3, 4, 0])
    maps = saliency_maps(model, x, target, batch_statistics=batch_stats, chunk=4)
    assert maps.shape == (6, 28, 28) and (maps >= 0).all()
    xr = x.clone().requires_grad_(True)
    model.eval()
    with batch_statistics() if batch_stats else torch.enable_grad():
        scores = model(xr).gather(1, target.view(-1, 1)).squeeze(1)
    for i in range(6):  # d score_i / d x_i, the batch as context
        (g,) = torch.autograd.grad(scores[i], xr, retain_graph=True)
        torch.testing.assert_close(maps[i], g[i].abs().amax(0))
    assert all(p.grad is None for p in model.parameters())


# --- embeddings and figures ----------------------------------------------------------------


def test_embeddings_are_deterministic_per_seed() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(c * 3.0, 1.0, size=(12, 6)) for c in range(3)])
    for method in ("tsne", "pca"):
        first = embed(features, method, seed=1)
        assert first.shape == (36, 2)
        np.testing.assert_array_equal(first, embed(features, method, seed=1))


def _png(path) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("RGB"))
    assert (image != image[0, 0]).any(), f"{path} is one colour"
    return image


def _check_saved(fig, path) -> np.ndarray:
    figures.save(fig, path)
    width, height = fig.get_size_inches() * figures.DPI
    image = _png(path)
    assert image.shape[:2] == (round(height), round(width))
    return image


@pytest.mark.slow
def test_figures_render_pngs_of_the_expected_size(tmp_path) -> None:
    title = "mnist5k · maml · seed 0"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 1, 28, 28), dtype=np.uint8)
    labels = np.arange(20) % 4
    points = np.column_stack([labels * 2.0, rng.normal(size=20)])
    metrics = pd.DataFrame(
        {
            "step": [0, 1, 2, 2, 0, 1, 2, 2],
            "phase": ["train", "train", "train", "val"] * 2,
            "loss": [2.0, 1.5, 1.0, 1.2, 1.8, 1.2, 0.9, np.nan],
            "accuracy": [0.2, 0.4, 0.6, 0.5, 0.3, 0.5, 0.7, 0.6],
            "elapsed_s": np.arange(8.0),
            "method": ["baseline"] * 4 + ["maml"] * 4,
            "seed": 0,
        }
    )
    rgb = _conv(channels=3)
    layers = {
        "fc1": rng.normal(size=(20, 4)),
        "relu1": rng.random((20, 3)),
        "dead": np.zeros((20, 2)),
    }
    made = {
        "fc_filters": figures.plot_first_layer_filters(_fc(False), IN_SHAPE, title),
        "conv_filters": figures.plot_first_layer_filters(_conv(), (1, 28, 28), title),
        "rgb_filters": figures.plot_first_layer_filters(rgb, (3, 28, 28), title),
        "embedding": figures.plot_embedding(points, labels, title),
        "extremes": figures.plot_extreme_examples(
            images, rng.normal(size=20), 5, "relu3[2]", title
        ),
        "saliency": figures.plot_saliency(
            images[:10], rng.random((10, 28, 28)), labels[:10], title
        ),
        "curves": figures.plot_training_curves(metrics, title),
        "images": figures.plot_images(rng.random((3, 1, 28, 28)), ["a", "b", "c"], title),
        "cka": figures.plot_cka(cka_matrix(layers, layers), title, "baseline", "maml"),
    }
    paths = []
    for name, fig in made.items():
        assert fig._suptitle is not None and title in fig._suptitle.get_text()
        paths.append(tmp_path / f"{name}.png")
        _check_saved(fig, paths[-1])
    fig = figures.side_by_side(paths[:2], ["baseline", "maml"], tmp_path / "both.png", title=title)
    both = _png(tmp_path / "both.png")
    assert both.shape[1] == sum(Image.open(p).size[0] for p in paths[:2])
    assert both.shape[0] == round(fig.get_size_inches()[1] * figures.DPI)


# --- activation maximisation ----------------------------------------------------------------


def _random_images_activation(model, layer: str, unit: int) -> torch.Tensor:
    x = (torch.rand(256, *IN_SHAPE, generator=torch.Generator().manual_seed(0)) - 0.5) / 0.25
    with torch.no_grad():
        return summarise(layer_activations(model, x, [layer], batch_statistics=False)[layer])[
            :, unit
        ]


def test_maximisation_raises_the_neurons_activation_and_is_deterministic() -> None:
    model = _fc(running_stats=True)
    kwargs = dict(
        in_shape=IN_SHAPE, mean=0.5, std=0.25, batch_statistics=False, steps=48, lr=0.1, seed=5
    )
    vis = maximise(model, "fc2", 3, **kwargs)
    # Uniform-noise images are far from smooth, so the unit varies more over them than over
    # anything the regularised image can become: a demanding yardstick.
    noise = _random_images_activation(model, "fc2", 3)
    assert vis.image.shape == IN_SHAPE and 0.0 <= vis.image.min() and vis.image.max() <= 1.0
    assert vis.final_activation > vis.start_activation + 2 * float(noise.std())
    assert vis.final_activation > float(noise.quantile(0.95))
    assert vis.trace.shape == (48,) and vis.trace[-8:].mean() > vis.trace[:8].mean()
    again = maximise(model, "fc2", 3, **kwargs)
    torch.testing.assert_close(again.image, vis.image, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_maximisation_with_batch_statistics_needs_and_uses_a_context() -> None:
    model = _fc(running_stats=False)
    kwargs = dict(in_shape=IN_SHAPE, mean=0.5, std=0.25, batch_statistics=True, steps=32)
    with pytest.raises(ConfigError, match="context="):
        maximise(model, "relu2", 1, **kwargs)
    context = torch.randn(24, *IN_SHAPE, generator=torch.Generator().manual_seed(1))
    vis = maximise(model, "relu2", 1, context=context, **kwargs)
    assert vis.final_activation > vis.start_activation + 1.0  # BN output: unit variance
    before_bn = maximise(model, "fc1", 0, **kwargs)  # no BatchNorm reached: no context needed
    assert before_bn.final_activation > before_bn.start_activation
    with pytest.raises(ConfigError, match="out of range"):
        maximise(model, "fc2", 99, context=context, **kwargs)


def test_transforms_keep_the_size_and_are_seeded() -> None:
    x = torch.rand(4, 3, 20, 20)
    transform = compose(jitter(2), random_scale((0.9, 1.1)), random_rotate(15.0), jitter(1))
    out = transform(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    torch.testing.assert_close(out, transform(x, torch.Generator().manual_seed(0)))
