"""One GPU per job (`mamlscope.runtime.claim_gpu`): with `--resources gpu=N`, the N GPU jobs
that run at once each take a different GPU. No GPU here: the claims are file locks, tested
across real processes, and `resolve_device` with torch.cuda's counts patched."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mamlscope import runtime
from mamlscope.runtime import claim_gpu, resolve_device

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mamlscope.runtime import claim_gpu
    print(claim_gpu(int(sys.argv[1]), Path(sys.argv[2])), flush=True)
    time.sleep(60)
    """
)


def holder(count: int, folder: Path) -> tuple[subprocess.Popen[str], int]:
    """A process that claims one of ``count`` GPUs and holds it; and the index it got."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count), str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_concurrent_jobs_take_different_gpus_and_a_finished_job_frees_its_own(tmp_path):
    first, a = holder(3, tmp_path)
    second, b = holder(3, tmp_path)
    try:
        assert (a, b) == (0, 1)
        first.kill()
        first.wait()
        third, c = holder(3, tmp_path)  # the killed job's GPU is free again
        third.kill()
        assert c == 0
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_with_every_gpu_held_a_job_shares_the_first_and_says_so(tmp_path, capfd):
    first, a = holder(1, tmp_path)
    try:
        assert a == 0
        assert claim_gpu(1, tmp_path) == 0
        assert "all 1 GPUs are held by other jobs" in capfd.readouterr().err
    finally:
        first.kill()
        first.wait()


@pytest.fixture
def four_gpus(monkeypatch, tmp_path):
    """torch.cuda as on a machine with four GPUs, the locks in tmp_path."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(runtime, "gpu_lock_dir", lambda: tmp_path)
    monkeypatch.setattr(runtime, "_held_locks", [])
    yield tmp_path
    for fd in runtime._held_locks:
        runtime.os.close(fd)


def test_auto_and_bare_cuda_claim_a_free_gpu_an_index_is_kept(four_gpus):
    other, taken = holder(4, four_gpus)  # another job holds cuda:0
    try:
        assert taken == 0
        assert resolve_device("auto") == torch.device("cuda", 1)
        assert resolve_device("cuda") == torch.device("cuda", 2)  # this process holds 1 now
        assert resolve_device("cuda:0") == torch.device("cuda", 0)  # as written
    finally:
        other.kill()
        other.wait()
