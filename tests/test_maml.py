"""MAML meta-gradients against a plain per-task reference written here, for every order and
strategy, on networks with BatchNorm in batch-statistics mode (float64)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mamlscope.errors import ConfigError
from mamlscope.maml import (
    AUTO,
    FD_EPSILON,
    ORDERS,
    STRATEGIES,
    adapt_and_predict,
    fd_meta_gradient,
    meta_gradients,
    meta_step,
    resolve_strategy,
)
from mamlscope.models import build_model

INNER_LR = 0.4
SPECS = {  # arch -> (in_shape, build kwargs)
    "fc": ((1, 6, 6), {"hidden": [12, 8]}),
    "conv4": ((1, 14, 14), {"filters": 8}),
    "conv4-maxpool": ((2, 16, 16), {"filters": 4}),
}
WAY, SHOT, QUERY, TASKS = 3, 2, 3, 3


def make_model(arch: str, seed: int = 0, running_stats: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    in_shape, kwargs = SPECS[arch]
    return build_model(arch, in_shape, WAY, running_stats=running_stats, **kwargs).double()


def make_tasks(arch: str, seed: int = 1) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    shape = SPECS[arch][0]
    sx = torch.randn(TASKS, WAY * SHOT, *shape, generator=gen, dtype=torch.float64)
    qx = torch.randn(TASKS, WAY * QUERY, *shape, generator=gen, dtype=torch.float64)
    sy = torch.arange(WAY).repeat_interleave(SHOT).repeat(TASKS, 1)  # [T, N*K]
    qy = torch.arange(WAY).repeat_interleave(QUERY).repeat(TASKS, 1)  # [T, N*Q]
    return sx, sy, qx, qy


def float_tasks(arch: str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    sx, sy, qx, qy = make_tasks(arch)
    return sx.to(dtype), sy, qx.to(dtype), qy


def reference(model, sx, sy, qx, qy, *, inner_steps: int, second: bool) -> dict[str, torch.Tensor]:
    """Finn et al. Algorithm 1 spelled out: a loop over tasks, torch.autograd.grad."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone().requires_grad_() for _, p in model.named_parameters()]
    total = [torch.zeros_like(p) for p in theta]
    for t in range(sx.shape[0]):
        params = list(theta)
        for _ in range(inner_steps):
            logits = functional_call(model, dict(zip(names, params, strict=True)), (sx[t],))
            grads = torch.autograd.grad(F.cross_entropy(logits, sy[t]), params, create_graph=second)
            if not second:
                grads = [g.detach() for g in grads]
            params = [p - INNER_LR * g for p, g in zip(params, grads, strict=True)]
        logits = functional_call(model, dict(zip(names, params, strict=True)), (qx[t],))
        outer = torch.autograd.grad(F.cross_entropy(logits, qy[t]), theta)
        total = [a + g / sx.shape[0] for a, g in zip(total, outer, strict=True)]
    return dict(zip(names, total, strict=True))


@functools.cache
def cached_reference(arch: str, inner_steps: int, second: bool) -> dict[str, torch.Tensor]:
    return reference(make_model(arch), *make_tasks(arch), inner_steps=inner_steps, second=second)


def rel_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in b])
    return float(diff.norm() / torch.cat([v.flatten() for v in b.values()]).norm())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("arch", list(SPECS))
def test_meta_gradients_match_reference(arch: str, order: str, strategy: str) -> None:
    inner_steps = 3 if arch == "fc" else 2
    model = make_model(arch)
    grads = meta_gradients(
        model,
        *make_tasks(arch),
        inner_lr=INNER_LR,
        inner_steps=inner_steps,
        order=order,
        strategy=strategy,
        fd_epsilon=1e-6,
    )
    assert grads.keys() == dict(model.named_parameters()).keys()
    exact = cached_reference(arch, inner_steps, second=order != "first")
    tolerance = 1e-2 if order == "finite-difference" else 1e-6
    assert rel_error(grads, exact) < tolerance


@pytest.mark.parametrize("strategy", ["vmap", "batched", "loop"])
def test_bias_before_batchnorm_has_exactly_zero_meta_gradient(strategy: str) -> None:
    """Batch statistics subtract the mean, so a bias feeding BN cannot change any loss.

    A BatchNorm whose second-order gradient is wrong under vmap breaks this identity.
    """
    for arch in ("conv4", "fc"):
        grads = meta_gradients(
            make_model(arch),
            *make_tasks(arch),
            inner_lr=INNER_LR,
            inner_steps=2,
            order="second",
            strategy=strategy,
        )
        prefix = "conv" if arch == "conv4" else "fc"
        biases = [grads[f"{prefix}{i}.bias"] for i in range(1, 5 if arch == "conv4" else 3)]
        assert max(float(b.abs().max()) for b in biases) < 1e-12
        assert float(grads["bn1.weight"].abs().max()) > 1e-4  # the rest is not trivially zero


def test_second_order_differs_materially_from_first_order() -> None:
    second = cached_reference("conv4", 2, second=True)
    first = cached_reference("conv4", 2, second=False)
    assert rel_error(first, second) > 0.05


def test_zero_inner_steps_is_the_plain_gradient_for_every_order() -> None:
    model, (sx, sy, qx, qy) = make_model("fc"), make_tasks("fc")
    plain = cached_reference("fc", 0, second=True)
    for order in ORDERS:
        grads = meta_gradients(model, sx, sy, qx, qy, inner_lr=INNER_LR, inner_steps=0, order=order)
        assert rel_error(grads, plain) < 1e-12


def test_finite_difference_recursion_is_exact_on_a_quadratic() -> None:
    """For L(theta) = theta' A theta / 2 central differences are exact: (I - aA)^K v."""
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = m @ m.T / 5  # symmetric Hessian
    theta = {"w": torch.randn(5, generator=gen, dtype=torch.float64)}
    v = {"w": torch.randn(5, generator=gen, dtype=torch.float64)}
    trajectory = [theta] * 3
    out = fd_meta_gradient(lambda p: {"w": a @ p["w"]}, trajectory, v, inner_lr=0.1, fd_epsilon=0.5)
    expected = torch.linalg.matrix_power(torch.eye(5, dtype=torch.float64) - 0.1 * a, 2) @ v["w"]
    torch.testing.assert_close(out["w"], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", ["vmap", "batched", "loop"])
def test_meta_step_changes_no_parameter_buffer_or_grad(strategy: str) -> None:
    model = make_model("conv4", running_stats=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = meta_step(
        model,
        *make_tasks("conv4"),
        inner_lr=INNER_LR,
        inner_steps=2,
        order="second",
        strategy=strategy,
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    # running stats are ignored: the result equals that of the same weights without them
    exact = cached_reference("conv4", 2, second=True)
    assert rel_error(result.grads, exact) < 1e-6


def test_meta_step_reports_query_loss_and_accuracy_after_adaptation() -> None:
    model, (sx, sy, qx, qy) = make_model("fc"), make_tasks("fc")
    results = [
        meta_step(model, sx, sy, qx, qy, inner_lr=INNER_LR, inner_steps=2, order=o, strategy=s)
        for o in ORDERS
        for s in ("vmap", "batched", "loop")
    ]
    logits = adapt_and_predict(model, sx, sy, qx, inner_lr=INNER_LR, inner_steps=2)
    loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten())
    accuracy = (logits.argmax(-1) == qy).double().mean()
    for r in results:
        assert r.query_loss == pytest.approx(float(loss), rel=1e-9)
        assert r.query_accuracy == pytest.approx(float(accuracy), rel=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_adapt_and_predict_matches_reference_adaptation(strategy: str) -> None:
    model, (sx, sy, qx, _) = make_model("conv4"), make_tasks("conv4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = adapt_and_predict(
        model, sx, sy, qx, inner_lr=INNER_LR, inner_steps=3, strategy=strategy
    )
    assert logits.shape == (TASKS, WAY * QUERY, WAY) and not logits.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for t in range(TASKS):
        params = {k: p.detach().requires_grad_() for k, p in model.named_parameters()}
        for _ in range(3):
            loss = F.cross_entropy(functional_call(model, params, (sx[t],)), sy[t])
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {
                k: (p - INNER_LR * g).detach().requires_grad_()
                for (k, p), g in zip(params.items(), grads, strict=True)
            }
        torch.testing.assert_close(logits[t], functional_call(model, params, (qx[t],)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"order": "third"}, r"order .*'second', 'first', 'finite-difference'"),
        ({"strategy": "fast"}, r"strategy .*'auto', 'graph', 'vmap', 'batched', 'loop'"),
        ({"inner_steps": -1}, "inner_steps"),
        ({"inner_lr": float("nan")}, "inner_lr"),
        ({"fd_epsilon": 0.0}, "fd_epsilon"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(kwargs: dict, match: str) -> None:
    args = {"inner_lr": INNER_LR, "inner_steps": 1, "order": "second"} | kwargs
    with pytest.raises(ConfigError, match=match):
        meta_gradients(make_model("fc"), *make_tasks("fc"), **args)


def test_mismatched_task_shapes_raise_config_error() -> None:
    sx, sy, qx, qy = make_tasks("fc")
    with pytest.raises(ConfigError, match="support_y"):
        meta_gradients(
            make_model("fc"), sx, sy[:, :-1], qx, qy, inner_lr=0.1, inner_steps=1, order="first"
        )


def test_auto_strategy_per_device_and_fallback_for_unsupported_models() -> None:
    conv, dense = make_model("conv4"), make_model("fc")
    for device in ("cpu", "cuda"):
        assert resolve_strategy("auto", conv, torch.device(device)) == AUTO[device]["conv"]
        assert resolve_strategy("auto", dense, torch.device(device)) == AUTO[device]["dense"]
    odd = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3))
    for device in ("cpu", "cuda"):  # never "batched", which cannot run it
        assert resolve_strategy("auto", odd, torch.device(device)) in ("vmap", "loop")
    with pytest.raises(ConfigError, match="batched.*Tanh"):
        resolve_strategy("batched", odd, torch.device("cpu"))


@pytest.mark.slow
def test_meta_training_lowers_the_meta_loss_on_a_learnable_task_family() -> None:
    """Tasks: 2 classes around random centres, labels arbitrary; 300 Adam meta-steps (~1 s)."""
    torch.manual_seed(0)
    model = build_model("fc", (1, 1, 4), 2, hidden=[32, 32])

    def tasks(n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        centres = torch.randn(n, 2, 1, 1, 4, generator=gen)  # [T, way, C, H, W]
        y = torch.tensor([0, 1]).repeat(5)  # [10]
        x = centres[:, y] + 0.5 * torch.randn(n, 10, 1, 1, 4, generator=gen)  # [T, 10, 1, 1, 4]
        xq = centres[:, y] + 0.5 * torch.randn(n, 10, 1, 1, 4, generator=gen)
        return x, y.repeat(n, 1), xq, y.repeat(n, 1)

    held_out = tasks(64, torch.Generator().manual_seed(99))
    # batched is the fastest here; every strategy gives the same gradients (tests above)
    kw = {"inner_lr": 0.2, "inner_steps": 1, "order": "second", "strategy": "batched"}
    before = meta_step(model, *held_out, **kw).query_loss
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    for _ in range(300):
        for name, g in meta_gradients(model, *tasks(8, gen), **kw).items():
            params[name].grad = g
        optimizer.step()
    after = meta_step(model, *held_out, **kw).query_loss
    assert after < 0.5 * before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_difference_runs_in_the_model_dtype_and_leaves_the_model_untouched(
    dtype: torch.dtype,
) -> None:
    """Formerly maml-fd ran on a float64 copy (and this test asked 1e-4 of a float32
    model); with held gates it runs in the model's dtype, within the O(r^2) error."""
    model = make_model("conv4").to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sx, sy, qx, qy = float_tasks("conv4", dtype)
    kw = {"inner_lr": INNER_LR, "inner_steps": 2}
    exact = meta_gradients(model, sx, sy, qx, qy, order="second", **kw)
    fd = meta_gradients(model, sx, sy, qx, qy, order="finite-difference", **kw)
    assert all(g.dtype == dtype for g in fd.values())
    as64 = {k: g.double() for k, g in fd.items()}
    assert rel_error(as64, {k: g.double() for k, g in exact.items()}) < 5e-3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == dtype


def test_finite_difference_holds_torch_relus_as_it_holds_mamlscope_relus() -> None:
    """Plain nn.ReLU layers (one in place): every strategy holds their gates (torch's own
    layers by forward hooks) and gives what build_model's own ReLU gives, at a
    perturbation that crosses kinks unless held."""
    model, tasks = make_model("fc"), make_tasks("fc")
    plain = copy.deepcopy(model)
    for name in [n for n, _ in plain.named_children()]:
        if name.startswith("relu"):
            setattr(plain, name, nn.ReLU(inplace=name == "relu1"))
    kw = {"inner_lr": INNER_LR, "inner_steps": 2, "order": "finite-difference", "fd_epsilon": 3e-2}
    ours = meta_gradients(model, *tasks, strategy="loop", **kw)
    for strategy in ("vmap", "batched", "loop"):
        assert rel_error(meta_gradients(plain, *tasks, strategy=strategy, **kw), ours) < 1e-12


def test_auto_on_cpu_runs_conv_nets_in_chunks_of_tasks_with_the_same_result() -> None:
    """Six tasks in chunks of four (4 + 2): the mean over tasks is weighted correctly."""
    from mamlscope.maml import AUTO_CHUNK

    assert AUTO_CHUNK["cpu"]["conv"] == 4
    model = make_model("conv4")
    gen = torch.Generator().manual_seed(3)
    shape = SPECS["conv4"][0]
    tasks = 6
    sx = torch.randn(tasks, WAY * SHOT, *shape, generator=gen, dtype=torch.float64)
    qx = torch.randn(tasks, WAY * QUERY, *shape, generator=gen, dtype=torch.float64)
    sy = torch.arange(WAY).repeat_interleave(SHOT).repeat(tasks, 1)
    qy = torch.arange(WAY).repeat_interleave(QUERY).repeat(tasks, 1)
    for order in ("second", "first"):
        kw = {"inner_lr": INNER_LR, "inner_steps": 2, "order": order}
        auto = meta_step(model, sx, sy, qx, qy, strategy="auto", **kw)
        loop = meta_step(model, sx, sy, qx, qy, strategy="loop", **kw)
        assert auto.strategy == "batched"
        for k in loop.grads:
            torch.testing.assert_close(auto.grads[k], loop.grads[k], rtol=1e-9, atol=1e-12)
        assert auto.query_loss == pytest.approx(loop.query_loss, rel=1e-9)
        assert auto.query_accuracy == pytest.approx(loop.query_accuracy, rel=1e-9)


def support_normalised_reference(model, params, sx, qx) -> torch.Tensor:
    """Query logits with every BatchNorm using the support activations' statistics, by hand."""
    h_s, h_q = sx, qx
    for name, layer in model.named_children():
        if isinstance(layer, nn.Module) and name.startswith("bn"):
            dims = (0, *range(2, h_s.dim()))
            mean = h_s.mean(dims, keepdim=True)
            var = h_s.var(dims, unbiased=False, keepdim=True)
            shape = (1, -1) + (1,) * (h_s.dim() - 2)
            w, b = params[f"{name}.weight"].view(shape), params[f"{name}.bias"].view(shape)
            h_s, h_q = ((h - mean) / torch.sqrt(var + layer.eps) * w + b for h in (h_s, h_q))
            continue
        sub = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{name}.")}
        h_s, h_q = (functional_call(layer, sub, (h,)) for h in (h_s, h_q))
    return h_q


@pytest.mark.parametrize("strategy", ["vmap", "batched", "loop"])
@pytest.mark.parametrize("arch", ["fc", "conv4"])
def test_support_batchnorm_normalises_queries_with_the_support_statistics(
    arch: str, strategy: str
) -> None:
    model, (sx, sy, qx, _) = make_model(arch), make_tasks(arch)
    logits = adapt_and_predict(
        model, sx, sy, qx, inner_lr=INNER_LR, inner_steps=2, strategy=strategy,
        batchnorm="support",
    )  # fmt: skip
    for t in range(TASKS):
        params = {k: p.detach().requires_grad_() for k, p in model.named_parameters()}
        for _ in range(2):
            loss = F.cross_entropy(functional_call(model, params, (sx[t],)), sy[t])
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {
                k: (p - INNER_LR * g).detach().requires_grad_()
                for (k, p), g in zip(params.items(), grads, strict=True)
            }
        expected = support_normalised_reference(model, params, sx[t], qx[t])
        torch.testing.assert_close(logits[t], expected.detach())


@pytest.mark.parametrize("strategy", ["vmap", "batched", "loop"])
def test_support_batchnorm_makes_each_query_independent_of_the_others(strategy: str) -> None:
    """Transductive BN lets one query change another's logits; with a single query its
    logits do not even depend on the image. Support statistics remove both effects."""
    model, (sx, sy, qx, _) = make_model("conv4"), make_tasks("conv4")
    noisy = qx.clone()
    noisy[:, 1:] = torch.randn_like(noisy[:, 1:]) * 5  # every query but the first replaced
    kw = {"inner_lr": INNER_LR, "inner_steps": 2, "strategy": strategy}

    def first_query(q: torch.Tensor, mode: str) -> torch.Tensor:
        return adapt_and_predict(model, sx, sy, q, batchnorm=mode, **kw)[:, 0]

    assert not torch.allclose(first_query(qx, "transductive"), first_query(noisy, "transductive"))
    torch.testing.assert_close(first_query(qx, "support"), first_query(noisy, "support"))
    one, other = qx[:, :1], torch.randn_like(qx[:, :1])
    torch.testing.assert_close(first_query(one, "transductive"), first_query(other, "transductive"))
    assert not torch.allclose(first_query(one, "support"), first_query(other, "support"))


def test_unknown_batchnorm_mode_is_a_config_error() -> None:
    model, (sx, sy, qx, _) = make_model("fc"), make_tasks("fc")
    with pytest.raises(ConfigError, match="batchnorm must be one of"):
        adapt_and_predict(model, sx, sy, qx, inner_lr=0.1, inner_steps=1, batchnorm="tasknorm")


# ------------------------------------------- maml-fd with held gates (float32, model dtype)


@pytest.mark.parametrize("fd_epsilon", [None, 1e-2])
@pytest.mark.parametrize("strategy", ["vmap", "batched", "loop"])
@pytest.mark.parametrize("arch", list(SPECS))
def test_held_gate_finite_difference_matches_exact_second_order_in_float32(
    arch: str, strategy: str, fd_epsilon: float | None
) -> None:
    """float32 model, perturbations float32 resolves (None: the default, FD_EPSILON):
    within the smooth O(r^2) error of exact second order, in the model's dtype.

    Before held gates this ran on a float64 copy and, at 1e-2, crossed ReLU kinks (off by
    more than 10% here; 17x to 1,300x on real trajectories)."""
    model = make_model(arch).float()
    exact = cached_reference(arch, 2, second=True)
    fd = meta_gradients(
        model, *float_tasks(arch), inner_lr=INNER_LR, inner_steps=2,
        order="finite-difference", strategy=strategy,
        **({} if fd_epsilon is None else {"fd_epsilon": fd_epsilon}),
    )  # fmt: skip
    assert all(g.dtype == torch.float32 for g in fd.values())
    assert rel_error({k: g.double() for k, g in fd.items()}, exact) < 5e-3
    assert FD_EPSILON >= 1e-3  # large enough to resolve in float32


@pytest.mark.parametrize("arch", list(SPECS))
def test_every_strategy_holds_the_same_gates(arch: str) -> None:
    """float64, a perturbation that crosses kinks unless held: all strategies agree to
    rounding, so each holds the same ReLU masks and max-pool choices."""
    model, tasks = make_model(arch), make_tasks(arch)
    grads = {
        s: meta_gradients(
            model,
            *tasks,
            inner_lr=INNER_LR,
            inner_steps=2,
            order="finite-difference",
            strategy=s,
            fd_epsilon=3e-2,
        )  # fmt: skip
        for s in STRATEGIES
    }
    for s in STRATEGIES:
        assert all(g.dtype == torch.float64 for g in grads[s].values())
        assert rel_error(grads[s], grads["loop"]) < 1e-9


def one_task_fd(arch: str, *, fd_epsilon: float, held: bool) -> dict[str, torch.Tensor]:
    """fd_meta_gradient on task 0 spelled out with autograd, float32, gates held or not."""
    from mamlscope.models import functional_forward, record_gates

    model = make_model(arch).float()
    sx, sy, qx, qy = (t[0] for t in float_tasks(arch))
    buffers: dict[str, torch.Tensor] = {}  # MAML models have none

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_forward(model, p, buffers, x), y)

    def grad_fn(p: dict[str, torch.Tensor], x=sx, y=sy) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
        p = {k: v.detach().requires_grad_() for k, v in p.items()}
        return dict(zip(p, torch.autograd.grad(loss(p, x, y), list(p.values())), strict=True))

    theta = {k: p.detach() for k, p in model.named_parameters()}
    trajectory, gates = [theta], []
    for _ in range(2):
        with torch.no_grad():
            gates.append(record_gates(lambda: functional_forward(model, trajectory[-1], {}, sx)))
        g = grad_fn(trajectory[-1])
        trajectory.append({k: p - INNER_LR * g[k] for k, p in trajectory[-1].items()})
    v = grad_fn(trajectory[-1], qx, qy)
    return fd_meta_gradient(
        grad_fn, trajectory, v, inner_lr=INNER_LR, fd_epsilon=fd_epsilon,
        gates=gates if held else None,
    )  # fmt: skip


@pytest.mark.parametrize("arch", ["fc", "conv4", "conv4-maxpool"])
def test_holding_gates_fixes_the_kink_crossing_of_float32_central_differences(arch: str) -> None:
    """At a perturbation large enough for float32 the un-held differences cross ReLU kinks
    (and max-pool switches) and are far off; the held ones are within O(r^2) of exact."""
    model, (sx, sy, qx, qy) = make_model(arch), make_tasks(arch)
    exact = reference(model, sx[:1], sy[:1], qx[:1], qy[:1], inner_steps=2, second=True)
    held = one_task_fd(arch, fd_epsilon=1e-2, held=True)
    unheld = one_task_fd(arch, fd_epsilon=1e-2, held=False)
    as64 = functools.partial(lambda g: {k: v.double() for k, v in g.items()})
    assert rel_error(as64(held), exact) < 5e-3
    assert rel_error(as64(unheld), exact) > 0.1


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("arch", ["conv4", "conv4-maxpool"])
def test_fused_conv_batchnorm_gives_the_elementary_ops_meta_gradient(
    arch: str, order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched forward's native conv BatchNorm (one kernel, its own double backward)
    and models.batch_norm's elementary ops give the same meta-gradient and predictions."""
    import mamlscope.maml.batched_forward as bf

    model, tasks = make_model(arch), make_tasks(arch)
    kw = {"inner_lr": INNER_LR, "inner_steps": 2, "order": order, "fd_epsilon": 3e-2}
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(bf, "FUSED_CONV_BATCH_NORM", fused)
        step = meta_step(model, *tasks, strategy="batched", **kw)
        logits = adapt_and_predict(
            model, *tasks[:3], inner_lr=INNER_LR, inner_steps=2, strategy="batched"
        )
        results[fused] = step, logits
    (fused_step, fused_logits), (plain_step, plain_logits) = results[True], results[False]
    assert rel_error(fused_step.grads, plain_step.grads) < 1e-10
    assert fused_step.query_loss == pytest.approx(plain_step.query_loss, rel=1e-10)
    torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-10, atol=1e-12)
