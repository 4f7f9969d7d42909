"""Resumable training: a job killed mid-training and started again ends with exactly the
weights of an uninterrupted run (CPU), and a resume state that does not fit is never used.

The kill tests run training in a real subprocess, SIGKILL (or SIGTERM) it once it has
written a resume state, start it again and compare bit for bit with an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

import mamlscope.resume as resume_module
import mamlscope.train as train_module
from mamlscope.resume import RESUME_FORMAT, resume_state_path
from mamlscope.train import run_training

METRIC_COLUMNS = ["step", "phase", "loss", "accuracy", "method", "seed"]

# Runs one training job; `sleep` slows each metrics row (not the numbers) so that the
# test can kill the process in the middle. Prints the step it resumed from as JSON.
DRIVER = """
import json, sys, time
import torch
torch.set_num_threads(1)
import mamlscope.train as T
args = json.loads(sys.argv[1])
if args["sleep"]:
    add = T._Metrics.add
    def slow(self, *a, **k):
        time.sleep(args["sleep"])
        return add(self, *a, **k)
    T._Metrics.add = slow
result = T.run_training(progress=False, device="cpu", **args["kwargs"])
print(json.dumps({"resumed_from": result.resumed_from}))
"""


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory) -> dict:
    """scikit-learn's 8x8 digits prepared and split (as conftest's fixture of that name,
    with its own config so that later schema keys cannot break it): a [32, 16] fc net,
    40 meta-steps of 8 tasks, and 2 baseline epochs of 17 batches."""
    from conftest import prepared_files, split_files

    from mamlscope.config import data_section, load_schema, validate_config
    from mamlscope.data.prepared import prepare_dataset
    from mamlscope.data.splits import write_split

    raw = {
        "seeds": [0],
        "datasets": {
            "digits8": {
                "source": "digits",
                "image_size": 8,
                "split": {"protocol": "examples", "train": 0.6, "val": 0.2},
                "episodes": {"way": 5, "shot": 1, "query": 5, "val_episodes": 10},
                "model": {"arch": "fc", "hidden": [32, 16]},
                "maml": {"meta_steps": 40, "meta_batch": 8, "val_every": 20, "meta_lr": 0.01},
                "baseline": {"epochs": 2, "lr": 0.01, "batch_size": 64},
            }
        },
    }
    if "features" in load_schema()["properties"]:  # neurons must exist in this small net
        raw["features"] = {"neurons": [{"layer": "bn1", "unit": 0}]}
    cfg = validate_config(raw, check_paths=False)["datasets"]["digits8"]
    root = tmp_path_factory.mktemp("resume_digits")
    data_dir = prepare_dataset("digits8", data_section(cfg), root / "data", show_progress=False)
    split_dir = root / "split" / "seed0"
    index = pd.read_parquet(data_dir / "index.parquet")
    write_split(index, cfg["split"], cfg["episodes"], 0, split_dir)
    return {"cfg": cfg, **prepared_files(data_dir), **split_files(split_dir)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for the module's reference runs and the tests alike: float sums taken in
    another order (2 threads) would differ in the last bits, and the runs are compared bit
    for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def job_args(tiny: dict, out: Path, method: str, cfg: dict | None = None, **extra) -> dict:
    return dict(
        images=str(tiny["images"]),
        index=str(tiny["index"]),
        meta=str(tiny["meta"]),
        pools=str(tiny["pools"]),
        val_episodes=str(tiny["val_episodes"]),
        config=cfg or tiny["cfg"],
        method=method,
        seed=1,
        checkpoint=str(out / "model.pt"),
        metrics=str(out / "metrics.parquet"),
        snapshots=str(out / "snapshots.pt"),
        **extra,
    )


def start(kwargs: dict, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    arg = json.dumps({"kwargs": kwargs, "sleep": sleep})
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, arg],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def saved_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def wait_for_state(proc: subprocess.Popen, path: Path, min_step: int, timeout: float = 60):
    """Wait until the running job has written a resume state at `min_step` or later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            "training ended before it could be killed: " + (proc.communicate()[1][-3000:])
        )
        if path.exists() and saved_step(path) >= min_step:
            return
        time.sleep(0.02)
    raise AssertionError(f"no resume state at step >= {min_step} after {timeout} s")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_run(out: Path, ref: Path) -> None:
    a, b = weights(out / "model.pt"), weights(ref / "model.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs from the uninterrupted run"
    # The snapshots taken before the kill travel in the resume state.
    sa, sb = (torch.load(d / "snapshots.pt", weights_only=True) for d in (out, ref))
    assert sa["steps"] == sb["steps"] and sa["steps"]
    for step in sa["state_dicts"]:
        for name, value in sa["state_dicts"][step].items():
            assert torch.equal(value, sb["state_dicts"][step][name]), f"snapshot {step} {name}"
    ma, mb = pd.read_parquet(out / "metrics.parquet"), pd.read_parquet(ref / "metrics.parquet")
    pd.testing.assert_frame_equal(ma[METRIC_COLUMNS], mb[METRIC_COLUMNS])
    assert ma["elapsed_s"].is_monotonic_increasing


@pytest.fixture(scope="module")
def reference(tiny_digits, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs of both kinds of training loop (no resume state at all)."""
    out = {}
    for method in ("baseline", "maml"):
        folder = tmp_path_factory.mktemp(f"ref-{method}")
        result = run_training(
            **job_args(tiny_digits, folder, method), device="cpu", progress=False, resume=False
        )
        assert result.resumed_from == 0
        out[method] = folder
    return out


@pytest.mark.parametrize("method", ["baseline", "maml"])
@pytest.mark.slow
def test_sigkilled_training_resumes_to_bit_identical_weights(
    tiny_digits, reference, tmp_path, method
):
    kwargs = job_args(tiny_digits, tmp_path, method, resume_every_steps=4)
    state = resume_state_path(tmp_path / "model.pt")
    proc = start(kwargs, sleep=0.03)
    try:
        wait_for_state(proc, state, min_step=8)
        time.sleep(0.05)  # a few steps past the state: they are redone after the restart
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model.pt").exists() and state.is_file()
    killed_at = saved_step(state)

    again = start(kwargs, sleep=0)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.splitlines()[-1])["resumed_from"] == killed_at >= 8
    assert_same_run(tmp_path, reference[method])
    # The final checkpoint replaces the resume state.
    assert not state.exists() and not state.parent.exists()


@pytest.mark.slow
def test_sigterm_writes_a_resume_state_at_once_and_the_rerun_finishes_the_run(
    tiny_digits, reference, tmp_path
):
    """Preemption: SLURM sends SIGTERM before it kills; the job saves where it is."""
    kwargs = job_args(tiny_digits, tmp_path, "maml", resume_every_steps=5)
    state = resume_state_path(tmp_path / "model.pt")
    proc = start(kwargs, sleep=0.03)
    try:
        wait_for_state(proc, state, min_step=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr[-3000:]
    assert "SIGTERM" in stderr
    stopped_at = saved_step(state)
    assert 5 <= stopped_at < tiny_digits["cfg"]["maml"]["meta_steps"]
    again = start(kwargs, sleep=0)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.splitlines()[-1])["resumed_from"] == stopped_at
    assert_same_run(tmp_path, reference["maml"])


class Crash(Exception):
    pass


def crash_after(monkeypatch, rows: int) -> None:
    """Make training fail (in-process) once `rows` metrics rows have been written."""
    add = train_module._Metrics.add
    count = {"n": 0}

    def add_then_crash(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > rows:
            raise Crash
        return add(self, *args, **kwargs)

    monkeypatch.setattr(train_module._Metrics, "add", add_then_crash)


def run(tiny, out, method, cfg=None, **extra):
    return run_training(**job_args(tiny, out, method, cfg, **extra), device="cpu", progress=False)


@pytest.mark.parametrize("method", ["baseline", "maml"])
def test_a_crashed_run_resumes_in_process_too(
    tiny_digits, reference, tmp_path, monkeypatch, method
):
    with monkeypatch.context() as patch:
        crash_after(patch, 25)
        with pytest.raises(Crash):
            run(tiny_digits, tmp_path, method, resume_every_steps=3)
    result = run(tiny_digits, tmp_path, method, resume_every_steps=3)
    assert result.resumed_from > 0
    assert_same_run(tmp_path, reference[method])


def test_a_state_written_under_other_training_params_is_not_resumed(
    tiny_digits, tmp_path, monkeypatch
):
    cfg = copy.deepcopy(tiny_digits["cfg"])
    with monkeypatch.context() as patch:
        crash_after(patch, 20)
        with pytest.raises(Crash):
            run(tiny_digits, tmp_path, "maml", cfg, resume_every_steps=2)
    state = resume_state_path(tmp_path / "model.pt")
    assert state.is_file()
    cfg["maml"]["meta_lr"] = 0.02
    result = run(tiny_digits, tmp_path, "maml", cfg, resume_every_steps=2)
    assert result.resumed_from == 0  # started over under the new params
    ref = tmp_path / "ref"
    run(tiny_digits, ref, "maml", cfg, resume=False)
    assert_same_run(tmp_path, ref)


def test_a_state_written_by_other_code_is_not_resumed(tiny_digits, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_after(patch, 20)
        with pytest.raises(Crash):
            run(tiny_digits, tmp_path, "maml", resume_every_steps=2)
    monkeypatch.setattr(resume_module, "_code_fingerprint", lambda: "another version")
    assert run(tiny_digits, tmp_path, "maml", resume_every_steps=2).resumed_from == 0


def flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor record of a torch zip file: the
    zip's headers and pickle stay intact, so only the values change."""
    with zipfile.ZipFile(path) as archive:
        record = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    data = bytearray(path.read_bytes())
    local = record.header_offset
    name_len, extra_len = struct.unpack("<HH", data[local + 26 : local + 30])
    at = local + 30 + name_len + extra_len + record.file_size // 2
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_state_with_one_flipped_byte_is_discarded_with_one_warning(tmp_path, caplog):
    path = tmp_path / ".resume" / "model.pt.state"
    weights = {"w": torch.linspace(-1, 1, 4096), "b": torch.zeros(3, dtype=torch.int64)}
    state = {
        "model": weights,
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}},
        "metrics": [(1, "train", 0.5, 0.25)],
        "generator": torch.Generator().get_state(),
    }
    resume_module.Resume(path, key="k").save(7, state)
    loaded = resume_module.Resume(path, key="k").load()
    assert loaded is not None and loaded["step"] == 7  # an intact state is used
    assert torch.equal(loaded["model"]["w"], weights["w"])
    flip_tensor_byte(path)
    damaged = torch.load(path, map_location="cpu", weights_only=True)  # torch loads it...
    assert not torch.equal(damaged["model"]["w"], weights["w"])  # ...with other values
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mamlscope"):
        assert resume_module.Resume(path, key="k").load() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert str(path) in warnings[0].getMessage() and "checksum" in warnings[0].getMessage()


def test_the_checksum_sees_every_value_and_its_type():
    base = {"format": RESUME_FORMAT, "a": torch.arange(4), "b": [1, 2.0, "x", None]}
    digest = resume_module.state_digest(base)
    assert resume_module.state_digest({**base, "sha256": "ignored"}) == digest
    for changed in (
        {"a": torch.arange(4).float()},  # same numbers, other dtype
        {"a": torch.arange(4).reshape(2, 2)},
        {"b": (1, 2.0, "x", None)},
        {"b": [1, 2, "x", None]},
        {"b": [1, 2.0, "x", 0]},
    ):
        assert resume_module.state_digest({**base, **changed}) != digest, changed


@pytest.mark.parametrize(
    "damage", ["truncated", "empty", "garbage", "other format", "incomplete", "flipped byte"]
)
@pytest.mark.slow
def test_a_damaged_or_foreign_state_is_never_taken_for_a_good_one(
    tiny_digits, reference, tmp_path, monkeypatch, damage
):
    with monkeypatch.context() as patch:
        crash_after(patch, 20)
        with pytest.raises(Crash):
            run(tiny_digits, tmp_path, "maml", resume_every_steps=2)
    state = resume_state_path(tmp_path / "model.pt")
    data = state.read_bytes()
    if damage == "truncated":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        state.write_bytes(b"")
    elif damage == "garbage":
        state.write_bytes(os.urandom(len(data)))
    elif damage == "flipped byte":
        flip_tensor_byte(state)
    else:
        payload = torch.load(state, map_location="cpu", weights_only=True)
        if damage == "other format":
            payload["format"] = "mamlscope-resume/0"
        else:
            payload["complete"] = False
        torch.save(payload, state)
    # A writer killed while writing leaves only a temporary sibling, never the state itself.
    stale = state.parent / f".{state.name}.abcd1234.tmp"
    stale.mkdir()
    (stale / state.name).write_bytes(data[:100])
    result = run(tiny_digits, tmp_path, "maml", resume_every_steps=2)
    assert result.resumed_from == 0
    assert_same_run(tmp_path, reference["maml"])
    assert not state.parent.exists()  # the state and the stale temporary are gone


def test_resume_state_format_and_settings_are_recorded(tiny_digits, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_after(patch, 10)
        with pytest.raises(Crash):
            run(tiny_digits, tmp_path, "maml", resume_every_steps=5)
    state = resume_state_path(tmp_path / "model.pt")
    assert state.parent.name == ".resume"  # not a declared output: a failed job keeps it
    payload = torch.load(state, map_location="cpu", weights_only=True)
    assert payload["format"] == RESUME_FORMAT and payload["complete"] is True
    assert payload["step"] == 10 and len(payload["metrics"]) == 10  # rows of steps 1-10
    assert {"model", "optimizer", "rng", "key"} <= payload.keys()


def test_no_resume_state_is_written_when_disabled(tiny_digits, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_after(patch, 30)
        with pytest.raises(Crash):
            run(tiny_digits, tmp_path, "maml", resume_every_steps=0, resume_every_seconds=0)
    assert not resume_state_path(tmp_path / "model.pt").exists()
