"""Meta-steps per second of mamlscope's training loop against a training loop written with higher.

End to end, as training runs: task sampling from a pool of images on the device, the
meta-step, Adam, the loss logged (validation off). Both loops train Finn et al.'s Omniglot
settings as `config/omniglot.yaml` defines them (conv4, 28x28, second order):

* ``5w1s-32t-1step-second``: 5-way 1-shot, 15 queries, meta-batch 32, 1 inner step;
* ``20w1s-16t-5step-second``: 20-way 1-shot, 5 queries, meta-batch 16, 5 inner steps;

on synthetic data of the right shape (random uint8 28x28 images, by default 4,800 classes of
20: Omniglot's 1,200 meta-train characters in 4 rotations). Implementations:

* ``mamlscope``: :func:`mamlscope.train.train_maml` with ``strategy: auto`` (on CUDA the
  meta-step and a capturable Adam as one CUDA graph; on a CPU the eager batched step);
* ``mamlscope-eager`` (CUDA only): the same loop with ``strategy: batched``, no graph;
* ``mamlscope-bounded-K``: ``auto`` with ``maml.max_tasks_in_flight: K`` (the meta-batch in
  chunks of at most K tasks, the memory-bounded mode);
* ``higher``: facebookresearch/higher's ``innerloop_ctx`` per task (as higher's own MAML
  example), same sampler, model, initial weights and Adam; skipped when higher is absent.

Timing: per implementation an untimed run (CUDA context, cuDNN), then a timed run of
``--warmup`` steps and one of ``--warmup`` + S steps; meta-steps per second is S over the
difference of the two, so setup (model, sampler, warm-up, graph capture) cancels; S is
``--steps`` or sized to take about ``--target-seconds``. The projected wall time of 60,000
meta-steps is the setup plus 60,000 steps at that rate. Peak memory (CUDA):
``torch.cuda.max_memory_allocated`` during the long run above what was allocated before it
(the image pool), and the total; on a CPU no peak is measured (``null``).

    python benchmarks/train_throughput.py --device cuda --out benchmarks/out/train_throughput.json
    python benchmarks/train_throughput.py --device cpu --tasks 2 --filters 4 --steps 1 \\
        --warmup 1 --classes 25 --bounded 1         # a smoke run (the test suite runs this)

Needs the benchmark extra (``pip install -e '.[test,report,benchmark]'``) for higher.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from mamlscope.checkpoint import ModelSpec
from mamlscope.config import validate_config
from mamlscope.data.prepared import PreparedDataset
from mamlscope.data.tasks import TaskSampler
from mamlscope.models import batch_statistics
from mamlscope.runtime import seed_everything
from mamlscope.train import LOG_EVERY, train_maml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "omniglot.yaml"
SETTINGS = {  # benchmark name -> dataset of config/omniglot.yaml
    "5w1s-32t-1step-second": "omniglot-5way1shot",
    "20w1s-16t-5step-second": "omniglot-20way1shot",
}
PROJECTED_STEPS = 60_000


def higher_available() -> bool:
    return importlib.util.find_spec("higher") is not None


def omniglot_config(dataset: str, tasks: int | None, filters: int | None) -> dict[str, Any]:
    """The dataset's validated config from config/omniglot.yaml (defaults filled in)."""
    raw = yaml.safe_load(CONFIG.read_text())
    ds = validate_config(raw, check_paths=False)["datasets"][dataset]
    if tasks is not None:
        ds["maml"]["meta_batch"] = tasks
    if filters is not None:
        ds["model"]["filters"] = filters
    return ds


def synthetic_data(
    ds: dict[str, Any], classes: int, per_class: int, device: torch.device, seed: int = 0
) -> tuple[PreparedDataset, pd.DataFrame]:
    """Random uint8 images ``[classes * per_class, C, S, S]`` (already on the device) in a
    PreparedDataset, and a pools table that puts them all in the meta-train pool."""
    n = classes * per_class
    size, channels = ds["image_size"], ds["channels"]
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8))
    index = pd.DataFrame({"example_id": np.arange(n), "class_id": np.arange(n) // per_class})
    meta = {"normalize": {"mean": [0.5], "std": [0.5]}}
    pools = pd.DataFrame({"example_id": np.arange(n), "pool": "train"})
    return PreparedDataset(images=images.to(device), index=index, meta=meta), pools


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the two loops


def mamlscope_loop(strategy: str, max_tasks: int | None):
    def run(ds, data, pools, device, steps):
        cfg = copy.deepcopy(ds)
        cfg["maml"].update(meta_steps=steps, strategy=strategy, max_tasks_in_flight=max_tasks)
        result = train_maml(
            data, pools, pd.DataFrame(), cfg, "maml", seed=0, device=device, progress=False
        )
        return result.meta_step

    return run


def higher_loop(ds, data, pools, device, steps):
    """A MAML training loop with higher (its maml-omniglot example's shape): per step, per
    task an ``innerloop_ctx``, the query loss backpropagated through the inner steps, Adam;
    the loss read to the host every LOG_EVERY steps, like mamlscope's loop."""
    import higher

    cfg, ep = ds["maml"], ds["episodes"]
    seed_everything(0)
    mean, std = data.normalize
    ids = pools["example_id"].to_numpy()
    sampler = TaskSampler(
        data.images, data.index, ids, ep["way"], ep["shot"], ep["query"], mean, std, 0, device
    )
    spec = ModelSpec.from_config(
        ds["model"], tuple(data.images.shape[1:]), ep["way"], running_stats=False
    )
    model = spec.build().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["meta_lr"])
    inner_opt = torch.optim.SGD(model.parameters(), lr=cfg["inner_lr"])
    losses = []
    for step in range(1, steps + 1):
        sx, sy, qx, qy = sampler.sample(cfg["meta_batch"])
        tasks = sx.shape[0]
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        with batch_statistics():
            for t in range(tasks):
                with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
                    fmodel,
                    diffopt,
                ):
                    for _ in range(cfg["inner_steps"]):
                        diffopt.step(F.cross_entropy(fmodel(sx[t]), sy[t]))
                    loss = F.cross_entropy(fmodel(qx[t]), qy[t]) / tasks
                    loss.backward()
                    total = total + loss.detach()
        opt.step()
        losses.append(total)
        if step % LOG_EVERY == 0 or step == steps:
            torch.stack(losses).cpu()
            losses = []
    return "higher (eager, one task at a time)"


# --------------------------------------------------------------------------------- timing


def time_loop(loop, ds, data, pools, device, *, warmup, steps, target_s) -> dict[str, Any]:
    """Untimed run, timed run of ``warmup`` steps, timed run of ``warmup + S`` steps."""
    loop(ds, data, pools, device, max(1, min(warmup, 2)))  # CUDA context, cuDNN, allocator
    sync(device)
    start = time.perf_counter()
    loop(ds, data, pools, device, warmup)
    sync(device)
    short = time.perf_counter() - start
    extra = steps if steps else int(min(2000, max(5, target_s * warmup / short)))
    if device.type == "cuda":  # the earlier runs' graphs and tensors gone: only the images
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    mode = loop(ds, data, pools, device, warmup + extra)
    sync(device)
    long = time.perf_counter() - start
    diff = long - short
    per_step = diff / extra if diff > 0 else long / (warmup + extra)  # noise on tiny runs
    setup = max(0.0, short - warmup * per_step)
    out: dict[str, Any] = {
        "meta_step": mode,
        "timed_steps": extra,
        "warmup_steps": warmup,
        "short_run_s": short,
        "long_run_s": long,
        "s_per_step": per_step,
        "steps_per_s": 1.0 / per_step,
        "tasks_per_s": ds["maml"]["meta_batch"] / per_step,
        "setup_s": setup,
        f"projected_{PROJECTED_STEPS}_s": setup + PROJECTED_STEPS * per_step,
        "peak_mib": None,
        "peak_total_mib": None,
        "reserved_mib": None,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out["peak_mib"] = (peak - base) / 2**20
        out["peak_total_mib"] = peak / 2**20
        out["reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return out


def implementations(device: torch.device, bounded: list[int], wanted: list[str] | None):
    impls = {"mamlscope": mamlscope_loop("auto", None)}
    if device.type == "cuda":
        impls["mamlscope-eager"] = mamlscope_loop("batched", None)
    for k in bounded:
        impls[f"mamlscope-bounded-{k}"] = mamlscope_loop("auto", k)
    if higher_available():
        impls["higher"] = higher_loop
    else:
        print("# higher is not installed (pip install -e '.[benchmark]'): no peer", flush=True)
    if wanted:
        impls = {k: v for k, v in impls.items() if k in wanted}
    return impls


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--impls", nargs="*", default=None, help="default: all")
    parser.add_argument(
        "--bounded", nargs="*", type=int, default=[1, 4], help="max_tasks_in_flight values"
    )
    parser.add_argument("--warmup", type=int, default=5, help="steps of the short timed run")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: sized)")
    parser.add_argument("--target-seconds", type=float, default=8.0)
    parser.add_argument("--tasks", type=int, default=None, help="override the meta-batch")
    parser.add_argument("--filters", type=int, default=None, help="override conv4's filters")
    parser.add_argument("--classes", type=int, default=4800)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "tf32": bool(torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32),
    }
    print(f"# {machine}", flush=True)
    impls = implementations(device, args.bounded, args.impls)
    results: dict[str, Any] = {"machine": machine, "args": vars(args), "settings": {}}
    for name in args.settings:
        ds = omniglot_config(SETTINGS[name], args.tasks, args.filters)
        data, pools = synthetic_data(ds, args.classes, args.per_class, device)
        print(f"# {name}: {ds['episodes']} maml {ds['maml']}", flush=True)
        runs: dict[str, Any] = {}
        for impl, loop in impls.items():
            runs[impl] = time_loop(
                loop,
                ds,
                data,
                pools,
                device,
                warmup=args.warmup,
                steps=args.steps,
                target_s=args.target_seconds,
            )
            r = runs[impl]
            print(
                f"  {impl:24s} {r['s_per_step'] * 1e3:9.2f} ms/step  {r['steps_per_s']:8.2f} "
                f"steps/s  peak {_fmt(r['peak_mib'], '.0f') or '-'} MiB  ({r['meta_step']})",
                flush=True,
            )
        ref = runs.get("higher")
        for r in runs.values():
            r["vs_higher"] = r["steps_per_s"] / ref["steps_per_s"] if ref else None
            both = ref and r["peak_mib"] is not None and ref["peak_mib"]
            r["memory_vs_higher"] = r["peak_mib"] / ref["peak_mib"] if both else None
        results["settings"][name] = {
            "dataset": SETTINGS[name],
            "episodes": ds["episodes"],
            "maml": ds["maml"],
            "model": ds["model"],
            "runs": runs,
        }
        del data
    print()
    print(
        "| setting | implementation | meta-steps/s | ms/step | x higher | projected "
        f"{PROJECTED_STEPS:,} steps | peak MiB | x higher memory | meta-step |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, entry in results["settings"].items():
        for impl, r in entry["runs"].items():
            projected = r[f"projected_{PROJECTED_STEPS}_s"]
            print(
                f"| {name} | {impl} | {r['steps_per_s']:.2f} | {r['s_per_step'] * 1e3:.1f} | "
                f"{_fmt(r['vs_higher'], '.1f')} | {projected / 60:.1f} min | "
                f"{_fmt(r['peak_mib'], '.0f')} | {_fmt(r['memory_vs_higher'], '.2f')} | "
                f"{r['meta_step']} |"
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
