"""maml-fd against exact second-order MAML: fidelity along real trajectories, and cost.

Fidelity: train with the ``maml`` (second-order) updates of a config's dataset and, every
``--every`` steps, compute the finite-difference meta-gradient (``order="finite-difference"``)
at the same weights and batch, for each ``--eps``; report the cosine similarity and the
relative error ``||fd - exact|| / ||exact||`` (median, minimum / maximum over the checks).
``--unheld`` adds the same float32 central differences *without* held gates, to show what
holding them fixes.

Cost: on the default config (fc on mnist5k), time ``--timing-steps`` meta-steps (sample,
meta-gradient, Adam) of maml and maml-fd, interleaved in blocks of ``--block`` so that
load from other jobs on the machine hits both alike; ``--legacy`` adds the former maml-fd
(float64 copy, ``fd_epsilon`` 1e-8, gates not held). Writes JSON and prints tables.

    python benchmarks/fd_fidelity.py --out benchmarks/out/fd_fidelity.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlscope.config import load_config
from mamlscope.data.pools import make_pools
from mamlscope.data.prepared import PreparedDataset, prepare_dataset
from mamlscope.data.tasks import TaskSampler
from mamlscope.maml import STRATEGY_TABLE, Gradient, InnerLoop, meta_step, resolve_strategy
from mamlscope.maml.api import FD_EPSILON
from mamlscope.models import build_model

TRAJECTORIES = {  # config -> (dataset, meta-steps of the shortened trajectory or None: all)
    "config.yaml": [("mnist5k", None)],
    "config/omniglot-small.yaml": [("omniglot-small-5way", 100), ("omniglot-small-20way", 50)],
}


def unheld_fd(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, ...],
    *,
    fd_epsilon: float,
    inner_lr: float,
    inner_steps: int,
) -> dict[str, torch.Tensor]:
    """The former behaviour for comparison: central differences with no gate held, in the
    model's dtype, by the strategy ``"auto"`` picks (all tasks at once)."""
    chosen = resolve_strategy("auto", model, next(model.parameters()).device)
    out = STRATEGY_TABLE[chosen].meta(
        model,
        *batch,
        inner=InnerLoop(inner_lr, inner_steps),
        gradient=Gradient("finite-difference", fd_epsilon, held=False),
    )
    return {k: g.detach() for k, g in out.grads.items()}


def load(config: str, name: str, cache: Path, seed: int) -> tuple[dict[str, Any], TaskSampler]:
    """The dataset's resolved config and a meta-train task sampler (prepared data cached)."""
    cfg = load_config(config)
    ds = cfg["datasets"][name]
    folder = cache / name
    if not folder.exists():
        prepare_dataset(name, ds, folder, cfg["data_root"], show_progress=False)
    data = PreparedDataset.load(folder)
    pools = make_pools(data.index, ds["split"], seed)
    ep = ds["episodes"]
    sampler = TaskSampler.from_prepared(
        data, pools, "train", ep["way"], ep["shot"], ep["query"], seed
    )
    return ds, sampler


def make_model(ds: dict[str, Any], sampler: TaskSampler, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = ds["model"]
    return build_model(
        m["arch"],
        tuple(sampler.images.shape[1:]),
        ds["episodes"]["way"],
        hidden=m["hidden"],
        filters=m["filters"],
    )


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.double().flatten() for g in grads.values()])


def compare(a: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Cosine similarity and relative error of ``a`` against ``exact``."""
    x, y = flat(a), flat(exact)
    cosine = float(x @ y / (x.norm() * y.norm()).clamp_min(1e-300))
    return cosine, float((x - y).norm() / y.norm().clamp_min(1e-300))


def fidelity(config: str, name: str, steps: int | None, args: argparse.Namespace) -> dict[str, Any]:
    ds, sampler = load(config, name, args.cache, args.seed)
    cfg = ds["maml"]
    steps = steps if steps is not None and not args.full else cfg["meta_steps"]
    steps = min(steps, args.max_steps) if args.max_steps else steps
    model = make_model(ds, sampler, args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["meta_lr"])
    params = dict(model.named_parameters())
    kw = {"inner_lr": cfg["inner_lr"], "inner_steps": cfg["inner_steps"]}
    variants = [(f"held {eps:g}", eps, True) for eps in args.eps]
    variants += [(f"unheld {eps:g}", eps, False) for eps in args.eps if args.unheld]
    checks: dict[str, list[tuple[int, float, float]]] = {v[0]: [] for v in variants}
    first_rel: list[float] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = sampler.sample(cfg["meta_batch"])
        exact = meta_step(model, *batch, order="second", **kw)
        if step % args.every == 0 or step == 1:
            first = meta_step(model, *batch, order="first", **kw).grads
            first_rel.append(compare(first, exact.grads)[1])
            for label, eps, held in variants:
                if held:
                    fd = meta_step(model, *batch, order="finite-difference", fd_epsilon=eps, **kw)
                    fd_grads = fd.grads
                else:
                    fd_grads = unheld_fd(model, batch, fd_epsilon=eps, **kw)
                checks[label].append((step, *compare(fd_grads, exact.grads)))
        for k, g in exact.grads.items():
            params[k].grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    summary = {}
    for label, rows in checks.items():
        cos = [c for _, c, _ in rows]
        rel = [r for _, _, r in rows]
        summary[label] = {
            "checks": len(rows),
            "cosine_median": statistics.median(cos),
            "cosine_min": min(cos),
            "rel_error_median": statistics.median(rel),
            "rel_error_max": max(rel),
            "steps_below_0.99": sum(c < 0.99 for c in cos),
            "rows": rows,
        }
    return {
        "config": config,
        "dataset": name,
        "arch": ds["model"]["arch"],
        "meta_steps": steps,
        "every": args.every,
        "maml": dict(cfg),
        "first_order_rel_error_median": statistics.median(first_rel),
        "seconds": time.perf_counter() - start,
        "variants": summary,
    }


def timing(args: argparse.Namespace) -> dict[str, Any]:
    """Median seconds per meta-step (sample, meta-gradient, Adam), implementations interleaved."""
    ds, sampler = load("config.yaml", "mnist5k", args.cache, args.seed)
    cfg = ds["maml"]
    kw = {"inner_lr": cfg["inner_lr"], "inner_steps": cfg["inner_steps"]}
    impls: dict[str, dict[str, Any]] = {
        "maml": {"order": "second"},
        "maml-fd": {"order": "finite-difference", "fd_epsilon": args.eps[0]},
    }
    if args.legacy:
        impls["maml-fd (former: float64, 1e-8, unheld)"] = {"legacy": True}
    state = {}
    for label in impls:
        model = make_model(ds, sampler, args.seed)
        state[label] = (model, torch.optim.Adam(model.parameters(), lr=cfg["meta_lr"]))

    def one(label: str) -> None:
        model, opt = state[label]
        batch = sampler.sample(cfg["meta_batch"])
        spec = dict(impls[label])
        if spec.pop("legacy", False):
            double = copy.deepcopy(model).double()
            sx, sy, qx, qy = batch
            g = unheld_fd(double, (sx.double(), sy, qx.double(), qy), fd_epsilon=1e-8, **kw)
            grads = {k: v.float() for k, v in g.items()}
        else:
            grads = meta_step(model, *batch, **spec, **kw).grads
        for k, p in model.named_parameters():
            p.grad = grads[k]
        opt.step()
        opt.zero_grad(set_to_none=True)

    blocks = max(1, args.timing_steps // args.block)
    # Phase 1: maml and maml-fd alternate. Phase 2 (--legacy): maml and the former maml-fd;
    # apart, because the float64 copies change the allocator's state (glibc raises its mmap
    # threshold after large frees), which measurably sped up the steps after them.
    phases = [["maml", "maml-fd"]] + [["maml", label] for label in list(impls)[2:]]
    ratio, med = {}, {}
    for phase in phases:
        times = {label: [] for label in phase}
        for label in phase:  # warm-up
            for _ in range(3):
                one(label)
        for _ in range(blocks):
            for label in phase:
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    one(label)
                    times[label].append(time.perf_counter() - t0)
        base = statistics.median(times["maml"])
        for label in phase[1:]:
            med[label], ratio[label] = (
                statistics.median(times[label]),
                statistics.median(times[label]) / base,
            )
        med.setdefault("maml", base)
        ratio["maml"] = 1.0
    return {
        "config": "config.yaml",
        "dataset": "mnist5k",
        "steps_each": blocks * args.block,
        "block": args.block,
        "median_s": med,
        "ratio_to_maml_in_its_phase": ratio,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=list(TRAJECTORIES))
    parser.add_argument("--every", type=int, default=10, help="compare every k-th step")
    parser.add_argument("--eps", type=float, nargs="*", default=[FD_EPSILON])
    parser.add_argument("--unheld", action="store_true", help="also float32 without held gates")
    parser.add_argument("--full", action="store_true", help="whole trajectories, not shortened")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every trajectory")
    parser.add_argument("--timing-steps", type=int, default=100, help="0: no timing")
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--legacy", action="store_true", help="also time the former maml-fd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/out/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/fd_fidelity.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "argv": sys.argv[1:],
        "fidelity": [],
    }
    print("| config | dataset | steps (every) | variant | cosine median | cosine min | "
          "rel. error median | rel. error max | checks < 0.99 |")  # fmt: skip
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for config in args.configs:
        for name, steps in TRAJECTORIES[config]:
            r = fidelity(config, name, steps, args)
            result["fidelity"].append(r)
            for label, s in r["variants"].items():
                print(
                    f"| {config} | {name} | {r['meta_steps']} ({r['every']}) | {label} | "
                    f"{s['cosine_median']:.6f} | {s['cosine_min']:.6f} | "
                    f"{s['rel_error_median']:.1e} | {s['rel_error_max']:.1e} | "
                    f"{s['steps_below_0.99']} of {s['checks']} |",
                    flush=True,
                )
            print(f"|  | (first order, rel. error median {r['first_order_rel_error_median']:.2f}) "
                  "| | | | | | | |", flush=True)  # fmt: skip
    if args.timing_steps:
        t = timing(args)
        result["timing"] = t
        print(f"\nmnist5k fc, {t['steps_each']} meta-steps each, interleaved in blocks of "
              f"{t['block']}, {result['threads']} threads")  # fmt: skip
        print("| implementation | median ms/step | x maml (same phase) |")
        print("| --- | ---: | ---: |")
        for label, med in t["median_s"].items():
            ratio = t["ratio_to_maml_in_its_phase"][label]
            print(f"| {label} | {1e3 * med:.1f} | {ratio:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
