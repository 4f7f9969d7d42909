"""What every registered network must do, as functions of its registry name.

`tests/test_model_registry.py` runs them on every built-in network with `tiny` options and
on a plug-in network installed by an entry point: a network added to the registry is
tested without editing a test.
"""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure
from torch.func import functional_call

from mamlscope.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from mamlscope.features import figures
from mamlscope.features.activations import layer_activations, summarise
from mamlscope.features.maximise import maximise
from mamlscope.features.plots import chosen_neurons
from mamlscope.features.saliency import saliency_maps
from mamlscope.finetune import features_of
from mamlscope.maml import adapt, adapt_and_predict, meta_step
from mamlscope.models import (
    batch_statistics,
    build_model,
    layer_names,
    layer_widths,
    model_entry,
)

SHAPES = [(1, 28, 28), (3, 32, 32)]
CLASSES = 5


def tiny_keys(name: str) -> dict[str, Any]:
    """The entry's `tiny` model keys, as `build_model` keywords."""
    tiny = dict(model_entry(name).tiny or {})
    return {key: tiny[key] for key in ("hidden", "filters", "options") if key in tiny}


def tiny_model(
    name: str, in_shape=SHAPES[0], *, running_stats: bool = False, seed: int = 0
) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, in_shape, CLASSES, running_stats=running_stats, **tiny_keys(name))


def images(in_shape, n: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *in_shape, generator=torch.Generator().manual_seed(seed))


def check_builds_and_classifies(name: str, in_shape) -> None:
    model = tiny_model(name, in_shape)
    assert model.arch == name
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == CLASSES
    with batch_statistics():
        logits = model(images(in_shape, 6))
    assert logits.shape == (6, CLASSES) and torch.isfinite(logits).all()


def check_same_seed_same_weights(name: str) -> None:
    a, b, c = (tiny_model(name, seed=s).state_dict() for s in (3, 3, 4))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def check_checkpoint_round_trip(name: str, path) -> None:
    """Running statistics that moved away from their init, saved and rebuilt exactly."""
    spec = ModelSpec(name, SHAPES[1], CLASSES, running_stats=True, **tiny_keys(name))
    torch.manual_seed(0)
    model = spec.build()
    model.train()
    with torch.no_grad():
        model(images(SHAPES[1], 8) * 2 + 1)  # moves the running statistics
    save_checkpoint(path, model, spec, method="baseline", seed=0, config={"x": 1})
    ckpt = load_checkpoint(path)
    assert ckpt.spec == spec and ckpt.model.arch == name
    mine, theirs = model.state_dict(), ckpt.model.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = images(SHAPES[1], 4)
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x), model.eval()(x), rtol=0, atol=0)


def check_recorded_layers(name: str) -> None:
    """Each recorded layer records an activation; the one before `head` is head's input."""
    model = tiny_model(name)
    names = layer_names(model)
    assert names[-1] == "head" and len(set(names)) == len(names)
    x = images(SHAPES[0])
    with torch.no_grad():
        acts = layer_activations(model, x, batch_statistics=True)
        with batch_statistics():
            logits, feats = model(x), features_of(model, x)
    assert list(acts) == names
    widths = layer_widths(model, SHAPES[0])
    for layer, act in acts.items():
        assert summarise(act).shape == (len(x), widths[layer]), layer
    torch.testing.assert_close(acts["head"], logits, rtol=0, atol=0)
    torch.testing.assert_close(summarise(acts[names[-2]]), feats, rtol=0, atol=0)


def _episodes(in_shape, tasks: int = 2, way: int = 3, shot: int = 2, query: int = 3):
    gen = torch.Generator().manual_seed(1)
    support_x = torch.randn(tasks, way * shot, *in_shape, generator=gen)
    query_x = torch.randn(tasks, way * query, *in_shape, generator=gen)
    support_y = torch.arange(way).repeat_interleave(shot).repeat(tasks, 1)
    query_y = torch.arange(way).repeat_interleave(query).repeat(tasks, 1)
    return support_x, support_y, query_x, query_y


def check_maml_runs(name: str) -> None:
    """A first-order meta-step and adaptation run; adapted weights reach the recorded
    layers through `functional_call`."""
    model = tiny_model(name)
    support_x, support_y, query_x, query_y = _episodes(SHAPES[0])
    step = meta_step(
        model, support_x, support_y, query_x, query_y, inner_lr=0.1, inner_steps=1, order="first"
    )
    params = dict(model.named_parameters())
    assert step.grads.keys() == params.keys()
    assert all(step.grads[k].shape == p.shape for k, p in params.items())
    assert all(torch.isfinite(g).all() for g in step.grads.values())
    assert any(g.abs().sum() > 0 for g in step.grads.values())
    logits = adapt_and_predict(model, support_x, support_y, query_x, inner_lr=0.1, inner_steps=2)
    assert logits.shape == (*query_x.shape[:2], CLASSES) and torch.isfinite(logits).all()
    theta = {k: p.detach() for k, p in params.items()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    adapted = adapt(model, theta, buffers, support_x[0], support_y[0], inner_lr=0.5, inner_steps=1)
    assert any(not torch.equal(adapted[k], theta[k]) for k in theta)
    with torch.no_grad():
        acts = layer_activations(model, query_x[0], batch_statistics=True, params=adapted)
        with batch_statistics():
            expected = functional_call(model, (adapted, buffers), (query_x[0],))
    torch.testing.assert_close(acts["head"], expected, rtol=0, atol=0)


def check_feature_studies(name: str) -> None:
    """Filters figure, default neurons, activation maximisation and saliency run."""
    model = tiny_model(name, SHAPES[1])
    fig = figures.plot_first_layer_filters(model, SHAPES[1], f"{name} · first layer")
    assert isinstance(fig, Figure)
    neurons = chosen_neurons(model, None)
    assert neurons and all(n["layer"] in layer_names(model) for n in neurons)
    context = images(SHAPES[1], 16)
    vis = maximise(
        model,
        neurons[-1]["layer"],
        0,
        in_shape=SHAPES[1],
        mean=0.5,
        std=0.25,
        batch_statistics=True,
        context=context,
        steps=3,
        copies=2,
    )
    assert vis.image.shape == SHAPES[1] and len(vis.trace) == 3
    maps = saliency_maps(model, context[:4], torch.arange(4) % CLASSES, batch_statistics=True)
    assert maps.shape == (4, *SHAPES[1][1:]) and (maps >= 0).all() and maps.sum() > 0
