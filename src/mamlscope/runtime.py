"""What every job sets up before it computes: the torch device, seeds, CPU threads, malloc.

torch and numpy are imported inside the functions that need them, so that a job which
never computes with torch (the run table, the splits) does not pay ~1.5 s to import it
just to call :func:`set_threads` or :func:`tune_allocator`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mamlscope.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Thread counts of the numeric libraries a job may load; read when each library starts, so
# set_threads also writes them for libraries imported later (torch reads OMP_NUM_THREADS
# at import). Snakemake sets the same variables for its `script:` jobs.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
# glibc malloc (mallopt parameters, <malloc.h>): keep freed memory in the heap for reuse
# instead of handing it back to the kernel after every free (docs/benchmarks.md, "Where a
# 2-core run's system time went").
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
MMAP_THRESHOLD = 32 * 2**20  # blocks up to this from the heap (glibc's largest allowed)
MMAP_MAX = 0  # and larger ones too (a vmap-ed evaluation batch's weights): no mmap-ed blocks
# Never give the heap's free top back: a job's memory stays at its peak until it exits
# (jobs are short processes; evaluation frees and regrows over 1 GiB batch after batch).
TRIM_THRESHOLD = -1  # mallopt(3): -1 disables trimming
TOP_PAD = 16 * 2**20  # grow the heap in steps of at least this much
_allocator_tuned: bool | None = None  # None: not tried yet; False: not glibc


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU; anything else is taken as a torch device.

    A bare `cuda` (from `auto` or written so) on a machine with several GPUs becomes the
    first GPU no other job of this user holds (:func:`claim_gpu`), so that `snakemake
    --resources gpu=N` runs N GPU jobs on N different GPUs. `cuda:K` is taken as written.
    """
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' asked for, but CUDA is not available here")
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return torch.device("cuda", claim_gpu(torch.cuda.device_count()))
    return device


# Locks this process holds on the GPUs it claimed: kept open until the process exits, when
# the kernel releases them (a killed job frees its GPU too).
_held_locks: list[int] = []


def gpu_lock_dir() -> Path:
    """Where the GPU locks live: per user and machine, in the system's temporary folder."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"mamlscope-gpu-locks-{os.getuid()}"


def claim_gpu(count: int, lock_dir: Path | None = None) -> int:
    """The index of the first of ``count`` GPUs that no other live process has claimed,
    held (an exclusive `flock` on its lock file) until this process exits.

    Snakemake counts `gpu` resources but does not say which GPU a job should use; with
    `--resources gpu=N` at most N GPU jobs run at once, so one of the N is always free.
    Where every GPU is held (more jobs than `gpu=N` allows, or other users' jobs), the
    job shares the first one and says so on stderr.
    """
    import fcntl

    folder = gpu_lock_dir() if lock_dir is None else lock_dir
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        fd = os.open(folder / f"cuda{index}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_locks.append(fd)
        return index
    print(
        f"mamlscope: all {count} GPUs are held by other jobs ({folder}); sharing cuda:0 "
        "(run with --resources gpu=N, N at most the number of GPUs)",
        file=sys.stderr,
    )
    return 0


def seed_everything(seed: int) -> None:
    """Seed torch and numpy and ask for deterministic kernels, so CPU runs repeat bit for bit."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def tune_allocator() -> bool:
    """Make glibc malloc keep freed memory for reuse; True where it applied (glibc).

    PyTorch's CPU tensors come from malloc. By default glibc serves large blocks with
    ``mmap`` and returns them with ``munmap`` on every free, and trims the heap's free top
    back to the kernel past 128 KiB, so a training loop that allocates and frees the same
    few-MB tensors every step takes a fresh zero-filled page fault on every 4 KiB it
    touches: in the default workflow that was ~85 million faults and 40% of the run's CPU
    time in the kernel. The settings above keep the pages mapped, at the cost of a
    process holding its peak heap until it exits. Changes no number. Idempotent; a no-op
    off glibc (musl, macOS), where it returns False.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
            (_M_MMAP_MAX, MMAP_MAX),
        )
    )
    return _allocator_tuned


def process_usage() -> dict[str, float]:
    """This process's CPU seconds (user, system) and page faults so far, with those of its
    finished children (a notebook kernel, a subprocess), and its peak resident MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "user_s": round(own.ru_utime + kids.ru_utime, 2),
        "sys_s": round(own.ru_stime + kids.ru_stime, 2),
        "minor_faults": own.ru_minflt + kids.ru_minflt,
        "major_faults": own.ru_majflt + kids.ru_majflt,
        "max_rss_mib": round(own.ru_maxrss / 1024, 1),  # KiB on Linux
    }


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads (a job's ``threads:``); None or 0 leaves the defaults.

    Sets torch's intra-op threads when torch is loaded, one inter-op thread (no job runs
    torch ops concurrently from Python), and the thread variables of :data:`THREAD_ENV` for
    libraries loaded later, without importing torch. Also :func:`tune_allocator`.
    """
    tune_allocator()
    if not threads:
        return
    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is None:  # it reads OMP_NUM_THREADS when it is imported
        return
    torch.set_num_threads(threads)
    try:  # only before the inter-op pool first runs
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what Python knows): recorded with
    every evaluation, since another CPU model moves results within their intervals."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "an unknown CPU"
