"""The inner loop told which parameters adapt (ANIL: the head, BOIL: the body, freezing the
layers below one): every order and strategy against a per-task autograd reference with
that subset (tests/maml_reference.py); the helpers that make subsets; the settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from maml_reference import assert_close_grads, reference_meta_gradients, rel_error
from torch.func import functional_call
from torch_models import Residual

from mamlscope.errors import ConfigError
from mamlscope.maml import (
    ORDERS,
    STRATEGIES,
    Gradient,
    InnerLoop,
    adapt,
    adapt_and_predict,
    fd_meta_gradient,
    meta_step,
    parameters_from,
    select_parameters,
)
from mamlscope.maml.graph import GraphedMetaStep
from mamlscope.models import build_model

INNER_LR, STEPS, WAY, SHOT, QUERY, TASKS = 0.4, 2, 3, 2, 3, 3
SPECS = {"fc": ((1, 6, 6), {"hidden": [12, 8]}), "conv4": ((1, 8, 8), {"filters": 4})}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and immune to other processes' load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "residual":  # a plain torch module, not an nn.Sequential
        return Residual().double()
    in_shape, kwargs = SPECS[arch]
    return build_model(arch, in_shape, WAY, **kwargs).double()


def tasks(arch: str) -> tuple[torch.Tensor, ...]:
    shape = (1, 8, 8) if arch == "residual" else SPECS[arch][0]
    gen = torch.Generator().manual_seed(1)
    sx = torch.randn(TASKS, WAY * SHOT, *shape, generator=gen, dtype=torch.float64)
    qx = torch.randn(TASKS, WAY * QUERY, *shape, generator=gen, dtype=torch.float64)
    sy = torch.arange(WAY).repeat_interleave(SHOT).repeat(TASKS, 1)
    qy = torch.arange(WAY).repeat_interleave(QUERY).repeat(TASKS, 1)
    return sx, sy, qx, qy


def cases() -> list[tuple[str, str, str, str]]:
    out = []
    for arch in ("fc", "conv4", "residual"):
        strategies = ("auto", "vmap", "loop") if arch == "residual" else STRATEGIES
        for part in ("head", "body"):
            out += [(arch, part, o, s) for o in ORDERS for s in strategies]
    return out


@pytest.mark.parametrize(("arch", "part", "order", "strategy"), cases())
def test_a_subset_adapts_and_every_parameter_gets_the_reference_meta_gradient(
    arch, part, order, strategy
):
    model = make(arch)
    adapted = select_parameters(model, part)
    want = reference_meta_gradients(
        model, *tasks(arch), inner_lr=INNER_LR, inner_steps=STEPS, second=order != "first",
        adapted=adapted,
    )  # fmt: skip
    got = meta_step(
        model, *tasks(arch), inner_lr=INNER_LR, inner_steps=STEPS, order=order,
        strategy=strategy, adapted=adapted, fd_epsilon=1e-6,
    ).grads  # fmt: skip
    if order == "finite-difference":
        assert rel_error(got, want) < 1e-2
    else:
        assert_close_grads(got, want)
    full = reference_meta_gradients(
        model, *tasks(arch), inner_lr=INNER_LR, inner_steps=STEPS, second=order != "first"
    )
    assert rel_error(want, full) > 1e-2  # the subset changes the answer
    fixed = [k for k in want if k not in adapted]
    assert any(float(got[k].abs().max()) > 1e-6 for k in fixed)  # and they still learn


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_adapting_all_parameters_by_name_is_bit_identical_to_none(strategy):
    model, batch = (
        make("conv4").float(),
        tuple(t.float() if t.is_floating_point() else t for t in tasks("conv4")),
    )
    every = [name for name, _ in model.named_parameters()]
    for order in ORDERS:
        kw = {"inner_lr": INNER_LR, "inner_steps": STEPS, "order": order, "strategy": strategy}
        a = meta_step(model, *batch, **kw, adapted=None)
        b = meta_step(model, *batch, **kw, adapted=every)
        assert all(torch.equal(a.grads[k], b.grads[k]) for k in every)
        assert (a.query_loss, a.query_accuracy) == (b.query_loss, b.query_accuracy)
    if strategy != "auto":
        kw = {"inner_lr": INNER_LR, "inner_steps": 3, "strategy": strategy}
        a = adapt_and_predict(model, *batch[:3], **kw)
        assert torch.equal(a, adapt_and_predict(model, *batch[:3], **kw, adapted=set(every)))


@pytest.mark.parametrize("strategy", ["vmap", "batched", "loop"])
@pytest.mark.parametrize("batchnorm", ["transductive", "support"])
def test_adapt_and_predict_moves_only_the_adapted_parameters(strategy, batchnorm):
    model, (sx, sy, qx, _) = make("fc"), tasks("fc")
    adapted = parameters_from(model, "fc2")  # fc2, bn2, relu2, head
    logits = adapt_and_predict(
        model, sx, sy, qx, inner_lr=INNER_LR, inner_steps=3, strategy=strategy,
        batchnorm=batchnorm, adapted=adapted,
    )  # fmt: skip
    for t in range(TASKS):
        params = {k: p.detach() for k, p in model.named_parameters()}
        for _ in range(3):
            live = {k: p.requires_grad_() for k, p in params.items()}
            loss = F.cross_entropy(functional_call(model, live, (sx[t],)), sy[t])
            grads = dict(zip(live, torch.autograd.grad(loss, list(live.values())), strict=True))
            params = {
                k: (p - INNER_LR * grads[k] if k in adapted else p).detach()
                for k, p in params.items()
            }
        plain = adapt_and_predict(
            build_like(model, params), sx[t : t + 1], sy[t : t + 1], qx[t : t + 1],
            inner_lr=INNER_LR, inner_steps=0, strategy=strategy, batchnorm=batchnorm,
        )  # fmt: skip
        torch.testing.assert_close(logits[t], plain[0])


def build_like(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    other = make("fc")
    for name, p in other.named_parameters():
        p.data.copy_(params[name])
    return other


def test_adapt_leaves_the_parameters_outside_the_subset_as_they_were():
    model, (sx, sy, _, _) = make("conv4"), tasks("conv4")
    params = {k: p.detach() for k, p in model.named_parameters()}
    head = select_parameters(model, "head")
    with torch.enable_grad():
        out = adapt(model, params, {}, sx[0], sy[0], inner_lr=INNER_LR, inner_steps=2, adapted=head)
    for k, p in out.items():
        assert (p is params[k]) == (k not in head)
        assert torch.equal(p, params[k]) == (k not in head)


def test_finite_difference_recursion_with_a_projection_is_exact_on_a_quadratic():
    """L = theta' A theta / 2 and steps that move coordinates P only: (I - a A P)^K v."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    a = m @ m.T / 6
    split = lambda w: {"a": w[:4], "b": w[4:]}  # noqa: E731
    theta = split(torch.randn(6, generator=gen, dtype=torch.float64))
    v = split(torch.randn(6, generator=gen, dtype=torch.float64))

    def grad_fn(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return split(a @ torch.cat([p["a"], p["b"]]))

    out = fd_meta_gradient(grad_fn, [theta] * 4, v, inner_lr=0.1, fd_epsilon=0.5, adapted={"a"})
    p = torch.diag(torch.tensor([1.0] * 4 + [0.0] * 2, dtype=torch.float64))
    step = torch.eye(6, dtype=torch.float64) - 0.1 * a @ p
    expected = torch.linalg.matrix_power(step, 3) @ torch.cat([v["a"], v["b"]])
    torch.testing.assert_close(torch.cat([out["a"], out["b"]]), expected, rtol=1e-12, atol=1e-12)


def test_the_graphed_training_step_adapts_the_same_subset():
    model, other = make("conv4").float(), make("conv4").float()
    batch = tuple(t.float() if t.is_floating_point() else t for t in tasks("conv4"))
    body = select_parameters(model, "body")
    kw = {"inner_lr": INNER_LR, "inner_steps": STEPS, "order": "second"}
    step = GraphedMetaStep(
        model, torch.optim.Adam(model.parameters(), lr=1e-3), capture=False, adapted=body, **kw
    )
    step(*batch)
    opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    grads = meta_step(other, *batch, strategy="batched", adapted=body, **kw).grads
    for name, p in other.named_parameters():
        p.grad = grads[name]
    opt.step()
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters(), strict=True)
    )


def test_selections_name_the_head_the_body_and_the_layers_from_one_on():
    model = make("conv4")
    every = {name for name, _ in model.named_parameters()}
    assert select_parameters(model, "all") == every
    assert select_parameters(model, "head") == {"head.weight", "head.bias"}
    assert select_parameters(model, "body") == every - {"head.weight", "head.bias"}
    expected = {f"{layer}.{p}" for layer in ("conv4", "bn4", "head") for p in ("weight", "bias")}
    assert parameters_from(model, "conv4") == expected
    assert parameters_from(model, "conv1") == every
    assert parameters_from(model, "pool") == {"head.weight", "head.bias"}
    residual = Residual()
    assert select_parameters(residual, "head") == {"head.weight", "head.bias"}
    assert parameters_from(residual, "leaky") == {"head.weight", "head.bias"}


def test_bad_selections_and_names_are_config_errors_naming_the_way_out():
    model, batch = make("fc"), tasks("fc")
    with pytest.raises(ConfigError, match=r"head 'classifier' is not a direct child.*'fc1'"):
        select_parameters(model, "head", head="classifier")
    with pytest.raises(ConfigError, match=r"layer 'conv9' is not a direct child.*'head'\]"):
        parameters_from(model, "conv9")
    with pytest.raises(ConfigError, match="which must be one of"):
        select_parameters(model, "neck")
    kw = {"inner_lr": INNER_LR, "inner_steps": 1, "order": "first"}
    with pytest.raises(ConfigError, match=r"\['head.wieght'\].*select_parameters"):
        meta_step(model, *batch, adapted={"head.wieght"}, **kw)
    with pytest.raises(ConfigError, match="adapted must be a collection.*adapted=\\{"):
        meta_step(model, *batch, adapted="head.weight", **kw)
    with pytest.raises(ConfigError, match="not parameters"):
        adapt_and_predict(model, *batch[:3], inner_lr=0.1, inner_steps=1, adapted={"x"})


def test_settings_are_checked_when_made_and_frozen():
    with pytest.raises(ConfigError, match="inner_steps must be an integer >= 0"):
        InnerLoop(0.1, -1)
    with pytest.raises(ConfigError, match="inner_lr must be a finite number >= 0"):
        InnerLoop(float("inf"), 1)
    with pytest.raises(ConfigError, match="order must be one of"):
        Gradient("third")
    with pytest.raises(ConfigError, match="fd_epsilon must be a finite number > 0"):
        Gradient("finite-difference", fd_epsilon=-1.0)
    inner = InnerLoop(0.1, 2, ["head.weight"])
    assert inner.adapted == frozenset({"head.weight"}) and inner.moves("head.weight")
    assert not inner.moves("fc1.weight") and InnerLoop(0.1, 2).moves("fc1.weight")
    with pytest.raises(dataclasses.FrozenInstanceError):
        inner.steps = 3  # type: ignore[misc]
    assert Gradient("first").held
