"""Resumable training: a run's state written to ``.resume/`` and read back when it fits.

Every ``resume_every_steps`` steps or ``resume_every_seconds`` seconds (and at once on
SIGTERM, which SLURM sends before a time limit or preemption kills a job) the training
loops write their state: model, optimiser, every random generator, the position in the
run and the metrics so far. A job started again with the same training config, inputs and
code continues from it and ends with exactly the weights of an uninterrupted run;
anything else starts over. The folder is not a declared output, so Snakemake's clean-up
of a failed job leaves it; it is removed once the final checkpoint is written.

A state carries a sha256 of its contents (``sha256``: every value, tensors by dtype, shape
and bytes; :func:`state_digest`), checked before anything in it is trusted: torch's zip
reader does not verify its CRCs, so a flipped byte in the tensor data otherwise loads
silently and the run ends with other weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlscope import __version__
from mamlscope.errors import MamlscopeError
from mamlscope.io import atomic_path, md5sum, remove_stale_temporaries

log = logging.getLogger("mamlscope")


RESUME_FORMAT = "mamlscope-resume/1"
RESUME_DIR = ".resume"
_RESUME_ENTRIES = ("format", "key", "complete", "step", "model", "optimizer", "rng", "metrics")
CHECKSUM = "sha256"


class TrainingInterrupted(MamlscopeError):
    """SIGTERM arrived (a time limit or preemption): the resume state is written; rerun."""


def resume_state_path(checkpoint: str | os.PathLike[str]) -> Path:
    """Where the run that writes ``checkpoint`` keeps its resume state: ``.resume/`` beside
    it, outside the job's declared outputs (Snakemake deletes those when a job fails)."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / RESUME_DIR / f"{checkpoint.name}.state"


def _code_fingerprint() -> str:
    """The library version and a digest of its Python sources: a state written by other
    code is not resumed (a code edit may change what a step computes)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def resume_key(
    config: Mapping[str, Any], method: str, seed: int, inputs: list[str | os.PathLike[str]]
) -> str:
    """What a resume state must have been written under to be resumed: the training config,
    method, seed, the code (`_code_fingerprint`) and the input files' contents."""
    blob = json.dumps(
        {
            "format": RESUME_FORMAT,
            "config": config,
            "method": method,
            "seed": int(seed),
            "code": _code_fingerprint(),
            "inputs": [md5sum(path) for path in inputs],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _rng_state() -> dict[str, Any]:
    """Every global generator a training step may draw from (the loops' own generators
    are saved beside): torch's CPU and CUDA ones, numpy's and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _feed(digest: Any, value: Any) -> None:
    """Add ``value`` to ``digest`` with its type and, for containers, its length, so that
    no two different states feed the same bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)};".encode())
        for k in sorted(value, key=repr):  # keys are str or int (optimizer state)
            _feed(digest, k)
            _feed(digest, value[k])
    elif isinstance(value, list | tuple):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, bool):
        digest.update(f"B{value};".encode())
    elif isinstance(value, int | np.integer):
        digest.update(f"I{int(value)};".encode())
    elif isinstance(value, float | np.floating):
        digest.update(f"F{float(value).hex()};".encode())
    elif isinstance(value, str):
        digest.update(f"S{len(value)};".encode() + value.encode())
    elif isinstance(value, bytes):
        digest.update(f"Y{len(value)};".encode() + value)
    else:
        raise TypeError(f"a resume state cannot hold a {type(value).__name__}: {value!r:.80}")


def state_digest(payload: Mapping[str, Any]) -> str:
    """The sha256 of every entry of a resume state but :data:`CHECKSUM` itself: tensors by
    dtype, shape and bytes, containers and scalars by type and value. Computed from the
    values, not the file's bytes, so it checks what training will read back."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != CHECKSUM})
    return digest.hexdigest()


def _why_unfit(payload: Any, key: str) -> str | None:
    """Why a loaded resume state does not fit a run with ``key`` (None: it fits)."""
    if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload)
        return f"its format is {found!r}, not {RESUME_FORMAT!r}"
    if CHECKSUM not in payload:
        return "it carries no checksum (written by an older version)"
    try:
        found = state_digest(payload)
    except TypeError as exc:
        return f"its contents cannot be checked ({exc})"
    if found != payload[CHECKSUM]:
        return (
            f"its contents do not match its {CHECKSUM} checksum (the file is damaged: "
            f"{str(payload[CHECKSUM])[:12]}... recorded, {found[:12]}... found)"
        )
    missing = [entry for entry in _RESUME_ENTRIES if entry not in payload]
    if missing or payload["complete"] is not True:
        return f"it is incomplete (missing {missing or ['complete']})"
    if payload["key"] != key:
        return (
            "it was written under other training params, inputs or code "
            "(its key differs from this run's)"
        )
    return None


class Resume:
    """Writes a run's resume state when due and reads it back when it fits.

    ``path`` None: never read nor written. ``every_steps`` / ``every_seconds`` (0: off)
    since the last write; ``stop_requested`` is set by SIGTERM (`sigterm_saves`), and
    the loops then write at once and stop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        key: str = "",
        every_steps: int = 0,
        every_seconds: float = 0.0,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self.every_steps = int(every_steps or 0)
        self.every_seconds = float(every_seconds or 0)
        self.last_step = 0
        self.last_time = time.monotonic()
        self.stop_requested = False

    def load(self) -> dict[str, Any] | None:
        """The saved state if there is one that fits this run, else None (and why, logged).

        A state is used only if it loads, has this format, its checksum matches its
        contents (:func:`state_digest`), it has every entry, `complete` set and this run's
        key. Writes go through `atomic_path`, so a kill while writing
        leaves the previous state (or none), never a partial file here.
        """
        if self.path is None:
            return None
        remove_stale_temporaries(self.path)  # what a writer killed mid-write left
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, empty, foreign: torch raises several types
            said = " ".join(str(exc).split())  # one log line: torch's messages span several
            why: str | None = f"it does not load ({type(exc).__name__}: {said[:300]})"
        else:
            why = _why_unfit(payload, self.key)
        if why is not None:
            log.warning("resume state %s not used, training starts over: %s", self.path, why)
            return None
        self.last_step = int(payload["step"])
        return payload

    def due(self, step: int, total: int) -> bool:
        """Whether to write now, after `step` of `total` (never after the last: the final
        checkpoint follows at once)."""
        if self.path is None or step >= total:
            return False
        if self.stop_requested:
            return True
        if self.every_steps and step - self.last_step >= self.every_steps:
            return True
        return bool(self.every_seconds) and (
            time.monotonic() - self.last_time >= self.every_seconds
        )

    def save(self, step: int, state: dict[str, Any]) -> None:
        assert self.path is not None
        payload: dict[str, Any] = {"format": RESUME_FORMAT, "version": __version__}
        payload |= {"key": self.key, "step": step, **state, "rng": _rng_state(), "complete": True}
        payload[CHECKSUM] = state_digest(payload)
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        self.last_step, self.last_time = step, time.monotonic()
        if self.stop_requested:
            log.warning("SIGTERM: resume state written at step %d; stopping", step)
            raise TrainingInterrupted(
                f"stopped by SIGTERM at step {step}; the resume state {self.path} is "
                "written and a rerun continues from it"
            )

    def clear(self) -> None:
        """Delete the state (the run is complete) and its folder when that is empty."""
        if self.path is None:
            return
        remove_stale_temporaries(self.path)
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()


@contextlib.contextmanager
def sigterm_saves(resume: Resume) -> Iterator[None]:
    """While training, SIGTERM asks the loop to write its resume state at the end of the
    current step and stop (SLURM sends it before a time limit or preemption kills the
    job). Only in the main thread, where Python allows signal handlers."""
    if resume.path is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        resume.stop_requested = True

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
