"""Time one full MAML meta-training step of mamlscope against two peers.

One step = inner loop on every task's support set, the meta-gradient of the mean query
loss, and Adam's update. The peers, on identical inputs and initial weights:

* ``higher``: facebookresearch/higher's ``innerloop_ctx``, a Python loop over tasks;
* ``loop``: a per-task loop with ``torch.autograd.grad(create_graph=True)`` (the style of
  learn2learn's ``clone``/``adapt``), written here in a few lines.

Before timing, every implementation's meta-gradient is checked against the others in
float64 on a small meta-batch. Prints a table (median seconds per step, tasks per second,
peak GPU memory, speed ratio against higher) and writes everything as JSON.

    python benchmarks/meta_step.py --device cpu --out benchmarks/out/cpu.json
    python benchmarks/meta_step.py --device cuda --out benchmarks/out/cuda.json

Needs the benchmark extra (``pip install -e '.[benchmark]'``) for higher.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlscope.maml import meta_step
from mamlscope.models import batch_statistics, build_model
from mamlscope.runtime import tune_allocator


@dataclass(frozen=True)
class Setting:
    name: str
    way: int
    shot: int
    query: int
    tasks: int
    steps: int
    order: str  # "second" or "first"
    inner_lr: float


SETTINGS = [
    Setting("5w1s-32t-1step-second", 5, 1, 15, 32, 1, "second", 0.4),
    Setting("5w1s-32t-1step-first", 5, 1, 15, 32, 1, "first", 0.4),
    Setting("20w1s-16t-5step-second", 20, 1, 15, 16, 5, "second", 0.1),
    Setting("5w1s-128t-1step-second", 5, 1, 15, 128, 1, "second", 0.4),
]


def make_model(way: int, device: torch.device, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("conv4", (1, 28, 28), way).to(device=device, dtype=dtype)


def make_batch(s: Setting, tasks: int, device, dtype, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(tasks, s.way * s.shot, 1, 28, 28, generator=g)
    qx = torch.randn(tasks, s.way * s.query, 1, 28, 28, generator=g)
    sy = torch.arange(s.way).repeat_interleave(s.shot).expand(tasks, -1).contiguous()
    qy = torch.arange(s.way).repeat_interleave(s.query).expand(tasks, -1).contiguous()
    return [
        t.to(device) if t.dtype == torch.long else t.to(device, dtype) for t in (sx, sy, qx, qy)
    ]


# ------------------------------------------------------------------------------ the steps
# Each returns a function step() that runs one full meta-step (zero grads, meta-gradient,
# Adam update) on the given model and batch, and a function grads() for the check.


def mamlscope_step(strategy: str):
    def factory(model, batch, s: Setting):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = dict(model.named_parameters())

        def grads():
            return meta_step(
                model,
                *batch,
                inner_lr=s.inner_lr,
                inner_steps=s.steps,
                order=s.order,
                strategy=strategy,
            ).grads

        def step():
            for name, g in grads().items():
                params[name].grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step, grads

    return factory


def _peer_step(model, opt, accumulate):
    """step() and grads() for a peer whose accumulate() adds the meta-gradient to .grad."""

    def grads():
        model.zero_grad(set_to_none=True)
        accumulate()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    def step():
        opt.zero_grad(set_to_none=True)
        accumulate()
        opt.step()

    return step, grads


def loop_peer(model, batch, s: Setting):
    """learn2learn style: per task, differentiable SGD steps, then backward of the query loss."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    names = [n for n, _ in model.named_parameters()]

    def accumulate():
        sx, sy, qx, qy = batch
        base = list(model.parameters())
        with batch_statistics():
            for t in range(sx.shape[0]):
                fast = base
                for _ in range(s.steps):
                    out = functional_call(model, dict(zip(names, fast, strict=True)), (sx[t],))
                    g = torch.autograd.grad(
                        F.cross_entropy(out, sy[t]), fast, create_graph=s.order == "second"
                    )
                    fast = [p - s.inner_lr * gi for p, gi in zip(fast, g, strict=True)]
                out = functional_call(model, dict(zip(names, fast, strict=True)), (qx[t],))
                (F.cross_entropy(out, qy[t]) / sx.shape[0]).backward()

    return _peer_step(model, opt, accumulate)


def higher_peer(model, batch, s: Setting):
    """facebookresearch/higher: innerloop_ctx per task; first order with untracked fast weights."""
    import higher

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inner_opt = torch.optim.SGD(model.parameters(), lr=s.inner_lr)
    second = s.order == "second"

    def accumulate():
        sx, sy, qx, qy = batch
        tasks = sx.shape[0]
        with batch_statistics():
            for t in range(tasks):
                with higher.innerloop_ctx(
                    model, inner_opt, copy_initial_weights=False, track_higher_grads=second
                ) as (fmodel, diffopt):
                    for _ in range(s.steps):
                        diffopt.step(F.cross_entropy(fmodel(sx[t]), sy[t]))
                    loss = F.cross_entropy(fmodel(qx[t]), qy[t]) / tasks
                    if second:
                        loss.backward()
                    else:  # fast weights are detached: carry their gradient to the model
                        g = torch.autograd.grad(loss, list(fmodel.parameters()))
                        for p, gi in zip(model.parameters(), g, strict=True):
                            p.grad = gi if p.grad is None else p.grad + gi

    return _peer_step(model, opt, accumulate)


def graphed_step(model, batch, s: Setting):
    """Experimental: the batched meta-step and Adam (capturable) captured in one CUDA graph.

    Replays launch the whole step at once, removing Python and launch overhead. Before
    timing, the graph's meta-gradient is compared with an eager one at the same weights.
    """
    from mamlscope.maml import Gradient, InnerLoop
    from mamlscope.maml.strategies import batched_meta

    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, capturable=True)
    for p in params:
        p.grad = torch.zeros_like(p)
    kw = {"inner": InnerLoop(s.inner_lr, s.steps), "gradient": Gradient(s.order, 1e-8)}

    def body():
        grads = batched_meta(model, *batch, **kw).grads
        for name, p in zip(names, params, strict=True):
            p.grad.copy_(grads[name])
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    eager = batched_meta(model, *batch, **kw).grads
    graph.replay()
    torch.cuda.synchronize()
    num = sum(
        float((p.grad - eager[n]).double().square().sum())
        for n, p in zip(names, params, strict=True)
    )
    den = sum(float(eager[n].double().square().sum()) for n in names)
    print(f"  graph vs eager float32 meta-gradient: relative difference {(num / den) ** 0.5:.1e}")

    def grads():
        raise NotImplementedError

    return graph.replay, grads


def implementations(device: torch.device) -> dict[str, Callable]:
    impls = {"higher": higher_peer, "loop": loop_peer}
    for strategy in ("vmap", "batched"):
        impls[f"mamlscope-{strategy}"] = mamlscope_step(strategy)
    impls["mamlscope-auto"] = mamlscope_step("auto")
    if device.type == "cuda":
        impls["mamlscope-graph"] = graphed_step
    return impls


# ------------------------------------------------------------------------------ check, time


def check_gradients(s: Setting, device, impls, tasks: int = 4) -> dict[str, float]:
    """Largest relative difference of each implementation's float64 meta-gradient from loop's."""
    batch = make_batch(s, tasks, device, torch.float64)
    reference = None
    errors = {}
    for name in ["loop", *[n for n in impls if n not in ("loop", "mamlscope-graph")]]:
        model = make_model(s.way, device, torch.float64)
        _, grads = impls[name](model, batch, s)
        g = grads()
        if reference is None:
            reference = g
        num = sum(float((g[k] - reference[k]).pow(2).sum()) for k in reference)
        den = sum(float(reference[k].pow(2).sum()) for k in reference)
        errors[name] = (num / den) ** 0.5
    return errors


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_impl(factory, s: Setting, device, warmup: int, repeats: int) -> dict[str, float]:
    model = make_model(s.way, device, torch.float32)
    batch = make_batch(s, s.tasks, device, torch.float32)
    step, _ = factory(model, batch, s)
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "median_s": median,
        "tasks_per_s": s.tasks / median,
        "peak_mib": peak,
        "min_s": min(times),
        "repeats": repeats,
    }


def time_sampler(device, repeats: int = 50) -> dict[str, float]:
    """Sampling and moving one 5-way 1-shot 15-query meta-batch of 32 tasks from a pool of
    70,000 28x28 images (the size of full MNIST) held on the device."""
    import numpy as np
    import pandas as pd

    from mamlscope.data.tasks import TaskSampler

    n = 70_000
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)).to(device)
    index = pd.DataFrame({"example_id": np.arange(n), "class_id": np.arange(n) % 10})
    sampler = TaskSampler(
        images,
        index,
        np.arange(n),
        way=5,
        shot=1,
        query=15,
        mean=[0.5],
        std=[0.5],
        seed=0,
        device=device,
    )
    for _ in range(5):
        sampler.sample(32)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sampler.sample(32)
        sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="*", default=[s.name for s in SETTINGS])
    parser.add_argument("--impls", nargs="*", default=None, help="default: all")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc malloc as it is (default: mamlscope.runtime.tune_allocator, as the "
        "workflow's jobs run; it applies to every implementation in this process alike)",
    )
    args = parser.parse_args(argv)
    tuned = False if args.default_malloc else tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    device = torch.device(args.device)
    impls = implementations(device)
    if args.impls:
        impls = {k: v for k, v in impls.items() if k in args.impls or k == "loop"}
    machine = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "tf32": args.tf32,
        "malloc_tuned": tuned,
    }
    print(f"# {machine}", flush=True)
    results = {"machine": machine, "settings": {}}
    for s in SETTINGS:
        if s.name not in args.settings:
            continue
        errors = check_gradients(s, device, impls)
        bad = {k: v for k, v in errors.items() if v > 1e-6}
        print(
            f"# {s.name}: float64 gradient agreement (relative to loop): "
            + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()),
            flush=True,
        )
        if bad:
            print(f"ERROR: gradients disagree: {bad}", file=sys.stderr)
            return 1
        timings = {}
        for name, factory in impls.items():
            try:
                timings[name] = time_impl(factory, s, device, args.warmup, args.repeats)
            except Exception as exc:  # an experimental variant must not hide the others
                print(f"  {name}: failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            print(f"  {name:18s} {timings[name]['median_s'] * 1e3:9.2f} ms", flush=True)
        for t in timings.values():
            t["vs_higher"] = (
                timings["higher"]["median_s"] / t["median_s"] if "higher" in timings else None
            )
        results["settings"][s.name] = {
            "setting": vars(s),
            "gradient_rel_error": errors,
            "timings": timings,
        }
    results["sampler"] = time_sampler(device)
    print(f"# sampling a 32-task meta-batch: {results['sampler']['median_s'] * 1e3:.2f} ms")
    print()
    print("| setting | implementation | median ms/step | tasks/s | peak MiB | x higher |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, entry in results["settings"].items():
        for impl, t in entry["timings"].items():
            peak = "" if t["peak_mib"] is None else f"{t['peak_mib']:.0f}"
            ratio = "" if t["vs_higher"] is None else f"{t['vs_higher']:.2f}"
            print(
                f"| {name} | {impl} | {t['median_s'] * 1e3:.2f} | {t['tasks_per_s']:.1f} | "
                f"{peak} | {ratio} |"
            )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
