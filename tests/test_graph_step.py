"""The CUDA-graph training step (mamlscope.maml.graph) and what training does with it.

On every machine: which step training chooses (`graph` on a CPU runs eagerly with a
reason, `auto` never picks the graph there), the graphed step's eager path over its static
buffers against the plain eager loop (bit-identical on a CPU), warm-up, restore and
re-capture with a recorder whose "graph" re-runs the body, a failed capture falling back,
optimiser states, `maml.max_tasks_in_flight`, how often training reads the loss from the
device, and a smoke run of benchmarks/train_throughput.py. Where CUDA exists: graph-captured
training steps against eager ones from the same seed (skipped without CUDA, as on CI).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import mamlscope.train as train_module
from mamlscope.config import train_section, validate_config
from mamlscope.errors import ConfigError
from mamlscope.maml import STRATEGIES, meta_step, resolve_strategy
from mamlscope.maml.graph import (
    GraphedMetaStep,
    StepPlan,
    load_optimizer_state,
    plan_training_step,
)
from mamlscope.models import build_model
from mamlscope.train import run_training

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
CUDA_REASON = "needs CUDA: graph capture runs on a GPU only (CPU-only machines such as CI skip it)"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
WAY, SHOT, QUERY = 5, 1, 3


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_conv(seed: int = 0, device: torch.device = CPU, size: int = 12) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("conv4", (1, size, size), WAY, filters=8).to(device)


def task_stream(steps: int, tasks: int, seed: int = 1, device=CPU, size: int = 12):
    """A fixed list of meta-batches (support_x, support_y, query_x, query_y)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        sx = torch.randn(tasks, WAY * SHOT, 1, size, size, generator=g)
        qx = torch.randn(tasks, WAY * QUERY, 1, size, size, generator=g)
        sy = torch.arange(WAY).repeat_interleave(SHOT).expand(tasks, -1).contiguous()
        qy = torch.arange(WAY).repeat_interleave(QUERY).expand(tasks, -1).contiguous()
        out.append(tuple(t.to(device) for t in (sx, sy, qx, qy)))
    return out


KW = {"inner_lr": 0.4, "inner_steps": 1, "order": "second"}


def plain_loop(model, batches, *, capturable=False, max_tasks=None, lr=1e-3, **kw):
    """The eager training loop as train_maml runs it for strategy 'batched'."""
    kw = {**KW, **kw}
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=capturable)
    params = dict(model.named_parameters())
    stats = []
    for batch in batches:
        r = meta_step(model, *batch, strategy="batched", max_tasks_in_flight=max_tasks, **kw)
        for name, g in r.grads.items():
            params[name].grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats.append((r.query_loss, r.query_accuracy))
    return stats, opt


def graphed_loop(model, batches, *, capturable=False, lr=1e-3, **kwargs):
    step_kw = {**KW, **{k: kwargs.pop(k) for k in list(kwargs) if k in KW}}
    opt = torch.optim.Adam(model.parameters(), lr=lr, capturable=capturable)
    step = GraphedMetaStep(model, opt, **step_kw, **kwargs)
    stats = [tuple(float(v) for v in step(*batch)) for batch in batches]
    return stats, step


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), f"{name} differs"


# --- which step training runs -------------------------------------------------------------


def test_graph_is_a_strategy_and_resolves_to_the_batched_computation():
    assert "graph" in STRATEGIES
    model = small_conv()
    assert resolve_strategy("graph", model, CPU) == "batched"
    batch = task_stream(1, 3)[0]
    a = meta_step(model, *batch, strategy="graph", **KW)
    b = meta_step(model, *batch, strategy="batched", **KW)
    assert a.strategy == "batched"
    assert all(torch.equal(a.grads[k], b.grads[k]) for k in b.grads)


def test_graph_on_cpu_falls_back_to_eager_with_a_reason():
    plan = plan_training_step("graph", small_conv(), CPU)
    assert plan.graphed and not plan.capture
    assert "CUDA graphs need a CUDA device" in plan.reason and "cpu" in plan.reason
    step = GraphedMetaStep(small_conv(), torch.optim.Adam(small_conv().parameters()), **KW)
    assert not step.active and "CUDA graphs need a CUDA device" in step.reason
    assert step.describe().startswith("eager (CUDA graphs need")


@pytest.mark.parametrize("arch", ["conv4", "fc"])
def test_auto_on_cpu_never_picks_the_graph(arch):
    kwargs = {"filters": 8} if arch == "conv4" else {"hidden": [16]}
    model = build_model(arch, (1, 8, 8), WAY, **kwargs)
    plan = plan_training_step("auto", model, CPU)
    assert not plan.graphed and not plan.capture and "CUDA" in plan.reason


def test_auto_on_cuda_picks_the_graph_and_other_strategies_stay_eager(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda")
    assert plan_training_step("auto", small_conv(), cuda) == StepPlan(True, True, None)
    assert plan_training_step("graph", small_conv(), cuda) == StepPlan(True, True, None)
    for strategy in ("batched", "vmap", "loop"):
        plan = plan_training_step(strategy, small_conv(), cuda)
        assert not plan.graphed and strategy in plan.reason
    with pytest.raises(ConfigError, match="strategy must be one of"):
        plan_training_step("fast", small_conv(), cuda)


def test_graph_refuses_a_model_the_batched_forward_cannot_run(monkeypatch):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, WAY)

        def forward(self, x):
            return self.lin(x.flatten(1))

    with pytest.raises(ConfigError, match="'graph' cannot run this model"):
        plan_training_step("graph", Odd(), CPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = plan_training_step("auto", Odd(), torch.device("cuda"))  # auto: eager vmap instead
    assert not plan.graphed and "batched forward cannot run" in plan.reason


# --- the graphed step's eager path and its buffers ----------------------------------------


@pytest.mark.parametrize("order", ["second", "first", "finite-difference"])
@pytest.mark.parametrize("max_tasks", [None, 2])
def test_eager_path_over_static_buffers_is_bit_identical_to_the_plain_loop(max_tasks, order):
    batches = task_stream(4, 5)
    plain, graphed = small_conv(), small_conv()
    expected, _ = plain_loop(plain, batches, max_tasks=max_tasks, order=order)
    got, step = graphed_loop(
        graphed, batches, capture=False, max_tasks_in_flight=max_tasks, order=order
    )
    assert got == expected
    assert_same_weights(graphed, plain)
    assert step.reason == "capture disabled" and step.captures == 0 and step.steps == 4


def test_returned_statistics_are_device_tensors_that_later_steps_do_not_overwrite():
    model = small_conv()
    step = GraphedMetaStep(model, torch.optim.Adam(model.parameters()), capture=False, **KW)
    batches = task_stream(2, 3)
    first = step(*batches[0])
    kept = [float(v) for v in first]
    step(*batches[1])
    assert [float(v) for v in first] == kept
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in first)


def replaying_recorder(log: list):
    """A stand-in for torch.cuda.CUDAGraph: 'capture' records the body (running nothing),
    'replay' runs it again over the same static buffers."""

    def record(body):
        log.append("capture")
        return body

    return record


def test_warm_up_capture_and_replay_leave_the_eager_trajectory_unchanged():
    batches = task_stream(5, 4)
    plain, graphed = small_conv(), small_conv()
    expected, _ = plain_loop(plain, batches)
    captures: list[str] = []
    got, step = graphed_loop(graphed, batches, recorder=replaying_recorder(captures))
    assert step.active and step.reason is None and step.describe() == "cuda-graph"
    assert captures == ["capture"] and step.captures == 1  # one capture, four replays
    assert got == expected  # the warm-up steps were undone exactly (Adam state included)
    assert_same_weights(graphed, plain)


def test_a_new_shape_recaptures_and_a_loaded_optimizer_state_recaptures():
    model = small_conv()
    captures: list[str] = []
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = GraphedMetaStep(model, opt, recorder=replaying_recorder(captures), **KW)
    step(*task_stream(1, 4)[0])
    step(*task_stream(1, 4, seed=2)[0])
    assert step.captures == 1
    step(*task_stream(1, 3)[0])  # another meta-batch size: new buffers, new graph
    assert step.captures == 2
    state = copy.deepcopy(opt.state_dict())
    step.load_optimizer_state(state)
    step(*task_stream(1, 3, seed=3)[0])
    assert step.captures == 3


def test_a_failed_capture_falls_back_to_eager_and_says_why(caplog):
    def broken(body):
        raise RuntimeError("operation not permitted when stream is capturing")

    batches = task_stream(3, 4)
    plain, graphed = small_conv(), small_conv()
    expected, _ = plain_loop(plain, batches)
    with caplog.at_level(logging.WARNING, logger="mamlscope"):
        got, step = graphed_loop(graphed, batches, recorder=broken)
    assert not step.active and step.captures == 0
    assert step.reason.startswith("capture failed: RuntimeError: operation not permitted")
    assert "capture failed" in caplog.text
    assert got == expected  # the warm-up before the failed capture was undone too
    assert_same_weights(graphed, plain)


def test_optimizer_state_round_trips_between_capturable_and_eager_runs():
    model = small_conv()
    stats, opt = plain_loop(model, task_stream(3, 3))
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:  # as a CUDA-graph run writes it
        group["capturable"] = True
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location="cpu", weights_only=True)
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    load_optimizer_state(fresh, loaded, capturable=False)  # an eager CPU run resumes it
    assert all(g["capturable"] is False for g in fresh.param_groups)
    for p in model.parameters():
        a, b = fresh.state[p], opt.state[p]
        assert a["step"].device.type == "cpu" and float(a["step"]) == float(b["step"]) == 3
        assert torch.equal(a["exp_avg"], b["exp_avg"])
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
        p.grad = torch.ones_like(p)
    fresh.step()  # a capturable group on CPU would fail here


def test_graph_step_checks_its_arguments():
    model = small_conv()
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ConfigError, match="order"):
        GraphedMetaStep(model, opt, inner_lr=0.4, inner_steps=1, order="third")
    with pytest.raises(ConfigError, match="max_tasks_in_flight"):
        GraphedMetaStep(model, opt, max_tasks_in_flight=0, **KW)
    step = GraphedMetaStep(model, opt, capture=False, **KW)
    sx, sy, qx, qy = task_stream(1, 3)[0]
    with pytest.raises(ConfigError, match="same tasks"):
        step(sx, sy, qx[:2], qy[:2])


# --- maml.max_tasks_in_flight -------------------------------------------------------------


def test_max_tasks_in_flight_is_a_checked_training_key():
    raw = yaml.safe_load((REPO / "config" / "omniglot.yaml").read_text())
    ds = validate_config(raw, check_paths=False)["datasets"]["omniglot-5way1shot"]
    assert ds["maml"]["max_tasks_in_flight"] is None and ds["maml"]["strategy"] == "auto"
    edited = copy.deepcopy(ds)
    edited["maml"]["max_tasks_in_flight"] = 4
    assert train_section(edited, "maml")["maml"]["max_tasks_in_flight"] == 4  # retrains
    assert train_section(edited, "maml") != train_section(ds, "maml")
    for value, ok in (("graph", True), ("cuda-graph", False)):
        raw["datasets"]["omniglot-5way1shot"]["maml"]["strategy"] = value
        if ok:
            validate_config(raw, check_paths=False)
        else:
            with pytest.raises(ConfigError, match="strategy"):
                validate_config(raw, check_paths=False)
    raw["datasets"]["omniglot-5way1shot"]["maml"].update(strategy="auto", max_tasks_in_flight=0)
    with pytest.raises(ConfigError, match="max_tasks_in_flight"):
        validate_config(raw, check_paths=False)


def test_chunked_meta_step_is_the_same_mean():
    model = small_conv()
    batch = task_stream(1, 5)[0]
    whole = meta_step(model, *batch, strategy="batched", **KW)
    for chunk in (1, 2, 5, 9):
        part = meta_step(model, *batch, strategy="batched", max_tasks_in_flight=chunk, **KW)
        for k in whole.grads:
            torch.testing.assert_close(part.grads[k], whole.grads[k], rtol=1e-4, atol=1e-6)
        assert part.query_loss == pytest.approx(whole.query_loss, rel=1e-5)
        assert part.query_accuracy == pytest.approx(whole.query_accuracy, abs=1e-12)
    with pytest.raises(ConfigError, match="max_tasks_in_flight"):
        meta_step(model, *batch, strategy="batched", max_tasks_in_flight=0, **KW)


# --- train_maml ---------------------------------------------------------------------------


def train(tiny, out: Path, cfg: dict, device: str = "cpu", **extra):
    return run_training(
        images=tiny["images"],
        index=tiny["index"],
        meta=tiny["meta"],
        pools=tiny["pools"],
        val_episodes=tiny["val_episodes"],
        config=cfg,
        method="maml",
        seed=2,
        device=device,
        checkpoint=out / "model.pt",
        metrics=out / "metrics.parquet",
        progress=False,
        **extra,
    )


def with_maml(tiny, **keys) -> dict:
    cfg = copy.deepcopy(tiny["cfg"])
    cfg["maml"].update(keys)
    return cfg


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


COLS = ["step", "phase", "loss", "accuracy"]


@pytest.mark.parametrize("max_tasks", [None, 3])
def test_training_with_strategy_graph_on_cpu_equals_batched_bit_for_bit(
    tiny_digits, tmp_path, max_tasks
):
    cfg = with_maml(tiny_digits, strategy="graph", max_tasks_in_flight=max_tasks)
    graph = train(tiny_digits, tmp_path / "g", cfg)
    cfg = with_maml(tiny_digits, strategy="batched", max_tasks_in_flight=max_tasks)
    batched = train(tiny_digits, tmp_path / "b", cfg)
    assert graph.meta_step.startswith("eager (CUDA graphs need a CUDA device")
    assert batched.meta_step.startswith("eager (strategy 'batched' runs eagerly")
    a, b = weights(tmp_path / "g" / "model.pt"), weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(graph.metrics[COLS], batched.metrics[COLS])


def test_the_loss_is_read_from_the_device_every_log_every_steps(tiny_digits, tmp_path, monkeypatch):
    """40 steps, validation every 20, LOG_EVERY 10: four reads (10, 20, 30, 40), each of the
    steps since the last, and still one train row per step in order."""
    reads: list[int] = []
    original = train_module._StepLog._read

    def counting(self, losses, accuracies):
        assert all(isinstance(v, torch.Tensor) for v in losses + accuracies)
        reads.append(len(losses))
        return original(self, losses, accuracies)

    monkeypatch.setattr(train_module, "LOG_EVERY", 10)
    monkeypatch.setattr(train_module._StepLog, "_read", counting)
    result = train(tiny_digits, tmp_path, with_maml(tiny_digits, strategy="graph"))
    assert reads == [10, 10, 10, 10]
    train_rows = result.metrics[result.metrics["phase"] == "train"]
    assert list(train_rows["step"]) == list(range(1, 41))
    assert list(result.metrics["phase"]).index("val") == 20  # after step 20's train row
    assert result.metrics["elapsed_s"].is_monotonic_increasing
    reads.clear()
    monkeypatch.setattr(train_module, "LOG_EVERY", 1000)
    train(tiny_digits, tmp_path / "rare", with_maml(tiny_digits, strategy="graph"))
    assert reads == [20, 20]  # only before each validation (the last is also the end)


def test_a_graph_strategy_run_resumes_to_the_same_weights(tiny_digits, tmp_path, monkeypatch):
    cfg = with_maml(tiny_digits, strategy="graph")
    reference = train(tiny_digits, tmp_path / "ref", cfg, resume=False)
    add, count = train_module._Metrics.add, {"n": 0}

    class Crash(Exception):
        pass

    def crash(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > 25:
            raise Crash
        return add(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_module._Metrics, "add", crash)
        with pytest.raises(Crash):
            train(tiny_digits, tmp_path / "run", cfg, resume_every_steps=3)
    again = train(tiny_digits, tmp_path / "run", cfg, resume_every_steps=3)
    assert again.resumed_from > 0
    a, b = weights(tmp_path / "run" / "model.pt"), weights(tmp_path / "ref" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(again.metrics[COLS], reference.metrics[COLS])


# --- the throughput benchmark, smoke-tested on a CPU ----------------------------------------


def load_benchmark():
    path = REPO / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_throughput_benchmark_runs_on_cpu_with_tiny_settings(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "throughput.json"
    args = "--device cpu --tasks 2 --filters 4 --warmup 1 --steps 1 --classes 25"
    code = bench.main([*args.split(), "--per-class", "20", "--bounded", "1", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert set(result["settings"]) == {"5w1s-32t-1step-second", "20w1s-16t-5step-second"}
    for entry in result["settings"].values():
        runs = entry["runs"]
        assert {"mamlscope", "mamlscope-bounded-1"} <= set(runs)
        for run in runs.values():
            assert run["steps_per_s"] > 0 and run["projected_60000_s"] > 0
        assert runs["mamlscope"]["meta_step"].startswith("eager (CUDA graphs need")
        if bench.higher_available():
            assert runs["mamlscope"]["vs_higher"] > 0
    assert "projected" in printed and "x higher" in printed


# --- where CUDA exists ----------------------------------------------------------------------

FREE_BIASES = ("conv1.bias", "conv2.bias", "conv3.bias", "conv4.bias")  # feed BatchNorm


def assert_close_models(a: torch.nn.Module, b: torch.nn.Module, rel: float = 1e-3) -> None:
    """Every parameter within `rel` of the other (relative norm), except conv biases that
    feed BatchNorm: their meta-gradient is exactly zero in theory, so Adam turns float32
    rounding noise into steps of any sign and they carry no information."""
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if name in FREE_BIASES:
            continue
        err = float((p - q).norm() / q.norm().clamp_min(1e-12))
        assert err < rel, f"{name}: relative difference {err:.2e}"


@needs_cuda
@pytest.mark.parametrize(("order", "max_tasks"), [("second", None), ("first", None), ("second", 3)])
def test_cuda_graph_steps_match_eager_steps_from_the_same_seed(order, max_tasks):
    cuda = torch.device("cuda")
    batches = task_stream(30, 8, device=cuda, size=28)
    eager_model, graph_model = small_conv(device=cuda, size=28), small_conv(device=cuda, size=28)
    kw = {"order": order, "max_tasks_in_flight": max_tasks}
    eager, _ = graphed_loop(eager_model, batches, capturable=True, capture=False, **kw)
    graph, step = graphed_loop(graph_model, batches, capturable=True, **kw)
    assert step.active and step.captures == 1, step.reason
    losses = torch.tensor([s[0] for s in graph]), torch.tensor([s[0] for s in eager])
    torch.testing.assert_close(*losses, rtol=1e-3, atol=1e-5)
    assert_close_models(graph_model, eager_model)
    # and against the plain eager loop (non-capturable Adam, meta_step)
    plain_model = small_conv(device=cuda, size=28)
    plain, _ = plain_loop(plain_model, batches, max_tasks=max_tasks, order=order)
    plain_losses = torch.tensor([s[0] for s in plain])
    torch.testing.assert_close(losses[0], plain_losses, rtol=1e-3, atol=1e-5)
    assert_close_models(graph_model, plain_model)


@needs_cuda
def test_cuda_graph_recaptures_on_a_new_shape_and_after_a_resume():
    cuda = torch.device("cuda")
    batches = task_stream(20, 6, device=cuda, size=28)
    whole = small_conv(device=cuda, size=28)
    graphed_loop(whole, batches, capturable=True)
    model = small_conv(device=cuda, size=28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    step = GraphedMetaStep(model, opt, **KW)
    for batch in batches[:10]:
        step(*batch)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=True)
    resumed = small_conv(seed=5, device=cuda, size=28)
    resumed.load_state_dict(saved["model"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-3, capturable=True)
    step2 = GraphedMetaStep(resumed, opt2, **KW)
    step2.load_optimizer_state(saved["optimizer"])
    assert all(s["step"].device.type == "cuda" for s in opt2.state.values())
    for batch in batches[10:]:
        step2(*batch)
    assert step2.active and step2.captures == 1, step2.reason
    assert_close_models(resumed, whole)
    small = task_stream(2, 3, device=cuda, size=28)
    step2(*small[0])
    step2(*small[1])
    assert step2.captures == 2 and step2.active


@needs_cuda
def test_cuda_training_with_the_graph_matches_eager_training(tiny_digits, tmp_path):
    graph = train(tiny_digits, tmp_path / "g", with_maml(tiny_digits, strategy="auto"), "cuda")
    eager = train(tiny_digits, tmp_path / "e", with_maml(tiny_digits, strategy="batched"), "cuda")
    assert graph.meta_step == "cuda-graph"
    g, e = (result.metrics[result.metrics["phase"] == "train"] for result in (graph, eager))
    g_loss, e_loss = (torch.tensor(rows["loss"].to_numpy()) for rows in (g, e))
    torch.testing.assert_close(g_loss, e_loss, rtol=2e-3, atol=1e-4)
    a, b = weights(tmp_path / "g" / "model.pt"), weights(tmp_path / "e" / "model.pt")
    for k in a:
        if k.endswith("weight") and not k.startswith("bn"):
            assert float((a[k] - b[k]).norm() / b[k].norm()) < 1e-2, k
