"""Send a rule's output to its log file, so a failed job's reason is one `cat` away."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator

from mamlscope.runtime import process_usage, tune_allocator

# The last line of every job's log: the job's whole-process CPU, for
# benchmarks/workflow_time.py (Snakemake's benchmark files sample CPU only now and then).
USAGE_PREFIX = "process usage:"


@contextlib.contextmanager
def logged(path: str | os.PathLike[str] | None) -> Iterator[logging.Logger]:
    """Redirect stdout, stderr and the `mamlscope` logger to ``path`` for the block.

    An exception is written to the log with its traceback, then re-raised so the job
    fails. With ``path`` None everything stays on the terminal. Every job's script runs
    inside it, so it also sets up what every job needs before it computes: glibc malloc
    keeps freed memory (:func:`mamlscope.runtime.tune_allocator`). A log file ends with
    the process's CPU time and page faults (:data:`USAGE_PREFIX`, one ``key=value`` line).
    """
    tune_allocator()
    logger = logging.getLogger("mamlscope")
    logger.setLevel(logging.INFO)
    if path is None:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        try:
            yield logger
        finally:
            logger.removeHandler(handler)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                try:
                    yield logger
                except BaseException:
                    traceback.print_exc(file=stream)
                    raise
        finally:
            usage = " ".join(f"{k}={v}" for k, v in process_usage().items())
            logger.info("%s %s", USAGE_PREFIX, usage)
            logger.removeHandler(handler)
