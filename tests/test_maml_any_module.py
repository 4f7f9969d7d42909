"""MAML on plain torch models, as a new user would build them: every order and strategy
against a per-task autograd reference (tests/maml_reference.py); gates of torch's own
layers held by hooks; kinks that cannot be held found and handled by a float64 fallback
logged once; torch's BatchNorm under MAML's BatchNorm policy."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from maml_reference import assert_close_grads, reference_meta_gradients, rel_error
from torch import nn
from torch_models import FunctionalKinks, Residual, conv_sequential, dense_sequential

from mamlscope.errors import ConfigError
from mamlscope.gates import hold_gates, record_gates, unheld_kink_calls, unheld_kinks
from mamlscope.maml import STRATEGIES, adapt_and_predict, meta_gradients, meta_step
from mamlscope.models import BatchNorm2d, batch_statistics

INNER_LR, STEPS, WAY, SHOT, QUERY, TASKS = 0.4, 2, 3, 2, 3, 3
SHAPE = (1, 8, 8)


MODELS = {
    "conv-sequential": conv_sequential,
    "dense-sequential": dense_sequential,
    "residual": Residual,
    "functional-kinks": FunctionalKinks,
}
SEQUENTIAL = ("conv-sequential", "dense-sequential")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and immune to other processes' load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(name: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name]().to(dtype)


def tasks(dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    sx = torch.randn(TASKS, WAY * SHOT, *SHAPE, generator=gen, dtype=torch.float64).to(dtype)
    qx = torch.randn(TASKS, WAY * QUERY, *SHAPE, generator=gen, dtype=torch.float64).to(dtype)
    sy = torch.arange(WAY).repeat_interleave(SHOT).repeat(TASKS, 1)
    qy = torch.arange(WAY).repeat_interleave(QUERY).repeat(TASKS, 1)
    return sx, sy, qx, qy


def cases() -> list[tuple[str, str, str]]:
    out = []
    for name in MODELS:
        strategies = STRATEGIES if name in SEQUENTIAL else ("auto", "vmap", "loop")
        out += [(name, o, s) for o in ("second", "first", "finite-difference") for s in strategies]
    return out


@pytest.mark.parametrize(("name", "order", "strategy"), cases())
def test_meta_gradients_of_plain_torch_models_match_the_reference(name, order, strategy):
    """second and first exactly (float64); finite differences on the float32 model, its
    gates held (torch's layers by hooks) or, with functional kinks, in the fallback."""
    model = make(name)
    want = reference_meta_gradients(
        model, *tasks(), inner_lr=INNER_LR, inner_steps=STEPS, second=order != "first"
    )
    kw = {"inner_lr": INNER_LR, "inner_steps": STEPS, "order": order, "strategy": strategy}
    if order == "finite-difference":
        got = meta_gradients(model.float(), *tasks(torch.float32), **kw)
        assert all(g.dtype == torch.float32 for g in got.values())
        assert rel_error(got, want) < 1e-2
    else:
        assert_close_grads(meta_gradients(model, *tasks(), **kw), want)


def test_auto_runs_sequentials_task_batched_and_other_modules_with_vmap():
    for name in MODELS:
        result = meta_step(
            make(name), *tasks(), inner_lr=INNER_LR, inner_steps=1, order="finite-difference"
        )
        assert result.strategy == ("batched" if name in SEQUENTIAL else "vmap")


def test_a_refused_strategy_names_one_way_out_and_that_way_works_in_every_order():
    model = make("residual")
    kw = {"inner_lr": INNER_LR, "inner_steps": STEPS}
    with pytest.raises(ConfigError, match=r"'batched' cannot run .*Residual.*; use 'vmap'$"):
        meta_gradients(model, *tasks(), order="finite-difference", strategy="batched", **kw)
    for order in ("second", "first", "finite-difference"):
        grads = meta_gradients(model, *tasks(), order=order, strategy="vmap", **kw)
        assert grads.keys() == dict(model.named_parameters()).keys()


def test_every_strategy_holds_the_same_gates_of_torch_layers():
    """float64 at a perturbation that crosses kinks unless held: the hooks (vmap, loop) and
    the task-batched forward (batched: torch's BatchNorm1d, LeakyReLU) agree to rounding."""
    for name in SEQUENTIAL:
        model = make(name)
        kw = {"inner_lr": INNER_LR, "inner_steps": STEPS, "order": "finite-difference"}
        grads = {
            s: meta_gradients(model, *tasks(), strategy=s, fd_epsilon=3e-2, **kw)
            for s in STRATEGIES
        }
        for s in STRATEGIES:
            assert rel_error(grads[s], grads["loop"]) < 1e-9, s


def test_held_torch_layers_are_the_linearisation_through_their_recorded_gates():
    """Recorded at x, held at a far point: an in-place ReLU, a max-pool and a LeakyReLU of
    torch's replay their masks, choices and slopes, computed by hand here."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32, 6), nn.LeakyReLU(0.2), nn.Linear(6, WAY),
    ).double()  # fmt: skip
    x = torch.randn(4, *SHAPE, dtype=torch.float64)
    gates = record_gates(lambda: model(x))
    mask, idx, slopes = gates
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and idx.dtype == torch.int64
    assert set(slopes.unique().tolist()) <= {1.0, 0.2} and slopes.dtype == torch.float64
    out = model(x)
    with hold_gates(gates):
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
    far = x + 3 * torch.randn_like(x)
    with hold_gates(gates):
        held = model(far)
    h = model[0](far) * mask  # the pre-activation, not what the in-place ReLU left
    h = h.flatten(-2).gather(-1, idx.flatten(-2)).view(idx.shape).flatten(1)
    expected = model[6](model[4](h) * slopes)
    torch.testing.assert_close(held, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(held, model(far))  # the free network switched gates


@pytest.mark.parametrize(
    ("layer", "call"),
    [
        (nn.ReLU6(), "hardtanh"),
        (nn.Hardtanh(), "hardtanh"),
        (nn.PReLU(), "prelu"),
        (nn.AdaptiveMaxPool2d(2), "adaptive_max_pool2d"),
        (nn.MaxPool2d(2, return_indices=True), "max_pool2d_with_indices"),
    ],
)
def test_layers_whose_kinks_cannot_be_held_are_named(layer, call):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), layer)
    assert unheld_kinks(model) == ["1"]
    found = unheld_kink_calls(model, lambda: model(torch.randn(2, *SHAPE)))
    assert found == [f"layer '1' ({type(layer).__name__}) calls {call}"]


def test_held_layers_and_functional_kinks_are_told_apart():
    held = make("residual")
    assert unheld_kinks(held) == []
    assert unheld_kink_calls(held, lambda: held(tasks()[0][0])) == []
    kinked = make("functional-kinks")
    with batch_statistics():
        found = unheld_kink_calls(kinked, lambda: kinked(tasks()[0][0]))
    assert found == [
        "the model's own forward (FunctionalKinks) calls clamp",
        "the model's own forward (FunctionalKinks) calls relu",
    ]


def test_the_fallback_logs_one_reason_line_and_leaves_the_model_alone(caplog):
    model = make("functional-kinks", torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = {"inner_lr": INNER_LR, "inner_steps": STEPS, "order": "finite-difference"}
    with caplog.at_level(logging.WARNING, logger="mamlscope"):
        for strategy in ("vmap", "loop", "auto"):
            grads = meta_gradients(model, *tasks(torch.float32), strategy=strategy, **kw)
            assert all(g.dtype == torch.float32 for g in grads.values())
        meta_gradients(make("residual", torch.float32), *tasks(torch.float32), **kw)  # held
    lines = [r for r in caplog.records if r.name == "mamlscope"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "calls clamp" in lines[0].getMessage() and "float64" in lines[0].getMessage()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


def with_mamlscope_batchnorm(model: nn.Module) -> nn.Module:
    """The same network with mamlscope's BatchNorm2d in place of torch's."""
    ours = copy.deepcopy(model)
    for name, layer in model.named_children():
        if isinstance(layer, nn.BatchNorm2d):
            bn = BatchNorm2d(layer.num_features, eps=layer.eps).to(layer.weight.dtype)
            bn.load_state_dict(layer.state_dict(), strict=False)
            setattr(ours, name, bn)
    return ours


@pytest.mark.parametrize("strategy", ["vmap", "batched", "loop"])
@pytest.mark.parametrize("batchnorm", ["transductive", "support"])
def test_torch_batchnorm_follows_the_batchnorm_mode_like_mamlscope_batchnorm(strategy, batchnorm):
    """ "support" normalises queries with the support statistics in torch's layers too (never
    silently transductive): the same logits as mamlscope's BatchNorm."""
    model = make("conv-sequential")
    sx, sy, qx, _ = tasks()
    kw = {"inner_lr": INNER_LR, "inner_steps": STEPS, "strategy": strategy, "batchnorm": batchnorm}
    got = adapt_and_predict(model, sx, sy, qx, **kw)
    want = adapt_and_predict(with_mamlscope_batchnorm(model), sx, sy, qx, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    other = qx.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])  # every query but the first replaced
    changed = adapt_and_predict(model, sx, sy, other, **kw)
    same = torch.allclose(changed[:, 0], got[:, 0], rtol=1e-10, atol=1e-12)
    assert same == (batchnorm == "support")


def test_torch_batchnorm_tracking_running_statistics_is_refused_with_one_way_out():
    model = make("conv-sequential")
    model[1] = nn.BatchNorm2d(8).double()  # torch's default tracks running statistics
    sx, sy, qx, qy = tasks()
    kw = {"inner_lr": INNER_LR, "inner_steps": STEPS}
    match = r"layer '1' \(BatchNorm2d\) tracks running statistics.*track_running_stats=False$"
    for strategy in STRATEGIES:
        with pytest.raises(ConfigError, match=match):
            meta_step(model, sx, sy, qx, qy, order="second", strategy=strategy, **kw)
        with pytest.raises(ConfigError, match=match):
            adapt_and_predict(model, sx, sy, qx, strategy=strategy, **kw)
    model[1] = nn.BatchNorm2d(8, track_running_stats=False).double()  # the way out
    assert meta_step(model, sx, sy, qx, qy, order="second", **kw).strategy == "batched"
