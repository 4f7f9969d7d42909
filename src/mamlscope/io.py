"""Atomic writes and checksums: a failed job must never leave an artifact that looks complete.

``atomic_path`` yields ``.{name}.XXXXXXXX.tmp/{name}`` beside the target; the caller writes
a file or a folder there. On success every file and folder written is fsynced, the result
is renamed onto the target and the parent folder is fsynced, so after a crash or power
loss the target is the old artifact or the new one, whole.

A folder is never absent while it is replaced: an existing target is *exchanged* with the
new one in one step (Linux ``renameat2(RENAME_EXCHANGE)``), then the old copy, now inside
the temporary folder, is deleted. Readers therefore always see a real folder at the target
path, never a symlink. Where the exchange is unsupported (another OS, or a file system
without it) the old folder is renamed aside just before the new one is renamed in: a
window of one ``rename`` call, and the old folder is restored if the second rename fails.

A killed writer leaves its temporary folder behind; the next write of the same target
deletes such ``.{name}.*`` siblings. A live writer holds an ``flock`` on its temporary
folder, so a concurrent writer of the same target does not delete it.

Reading: :func:`read_json` and :func:`read_parquet` turn every way a results file can be
missing or damaged into one :class:`UnreadableFile` that names the file (the parser's own
error kept as ``__cause__``): a bare ``JSONDecodeError`` or pyarrow's "magic bytes not
found" says neither which file nor what to do. A figure that could not show its result
carries a note beside it (:func:`write_note`, :func:`read_note`) that the report shows.

Writing JSON: every JSON file the package writes goes through :func:`to_json` (or
:func:`write_json`), which stores a NaN or infinite number as ``null``: Python's bare
``NaN`` token is not JSON, and jq, JavaScript and ``json.loads(..., parse_constant=...)``
reject it. A reader takes ``null`` for a number as missing (:func:`json_number`: NaN).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlscope.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporaries are removed regardless
    fcntl = None  # type: ignore[assignment]

_SUFFIX = ".tmp"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` only on success.

    Works for files and folders: the caller writes whatever it likes at the yielded path
    (and may use its parent folder, which is private, for scratch). On an exception the
    old target is untouched and the temporary folder is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=_SUFFIX, dir=target.parent))
    lock = _try_lock(tmp_dir)
    tmp = tmp_dir / target.name
    try:
        yield tmp
        fsync_tree(tmp)
        _move_into_place(tmp, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        _unlock(lock)


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary folders of ``target`` that no live writer holds; return them.

    Only names ``atomic_path`` makes for this very target match (``.{name}.`` + 8 random
    characters + optional ``.tmp``), so ``seed1`` never touches the temporaries of ``seed10``.
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}(?:{re.escape(_SUFFIX)})?")
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        if not pattern.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            lock = _try_lock(entry)
        except OSError:
            continue  # vanished meanwhile
        if lock is None:
            continue  # a live writer holds it
        try:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            _unlock(lock)
    return removed


def _try_lock(folder: Path) -> int | None:
    """A descriptor of ``folder`` holding an exclusive flock (-1: no locks here); None if
    another process holds it."""
    if fcntl is None:
        return -1
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:  # a file system without flock: go on unlocked
        pass
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None and fd >= 0:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync a file, or every file and folder under a folder, so a rename publishes data."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    if not path.is_dir():
        _fsync_file(path)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            file = Path(folder) / name
            if not file.is_symlink():
                _fsync_file(file)
        fsync_dir(folder)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder's entries (a rename into it survives a crash); a no-op on Windows."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an old folder stays in place until the new one is in."""
    folders = new.is_dir() or (target.is_dir() and not target.is_symlink())
    if not (os.path.lexists(target) and folders):
        os.replace(new, target)  # atomic for files; rename(2) cannot replace folders
        return
    try:
        exchange(new, target)  # the old one is now at `new`, removed with the temp folder
        return
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    aside = new.with_name(new.name + ".old")
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise


_renameat2 = None


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE).

    Raises OSError with errno ENOSYS where the call does not exist, EINVAL where the file
    system does not support it.
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "renameat2 is Linux only")
    if _renameat2 is None:
        try:
            func = ctypes.CDLL(None, use_errno=True).renameat2
        except (AttributeError, OSError) as exc:
            raise OSError(errno.ENOSYS, f"renameat2 unavailable ({exc})") from exc
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        func.argtypes += [ctypes.c_uint]
        func.restype = ctypes.c_int
        _renameat2 = func
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(a), None, os.fspath(b))


def md5sum(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks so large archives need little memory."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class UnreadableFile(DataError):
    """A file the library reads is missing, truncated or not what its name says; the
    message names the file and what to do."""


def _unreadable(path: Path, what: str, exc: BaseException) -> UnreadableFile:
    if isinstance(exc, FileNotFoundError):
        return UnreadableFile(f"{path} is missing: run the workflow (snakemake) that writes it")
    return UnreadableFile(
        f"{path} cannot be read as {what} ({type(exc).__name__}: {exc}); it is damaged or "
        "was written by something else: delete it and run the workflow again to rewrite it"
    )


def finite_json(value: Any) -> Any:
    """A copy of ``value`` (mappings, lists and tuples walked) with every NaN or infinite
    float, numpy's included, replaced by None, and numpy scalars made plain Python."""
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(item) for item in value]
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # np.float32 and np.int64 are no JSON numbers as they are
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, **kwargs)`` as strict JSON: non-finite numbers become ``null``
    (:func:`finite_json`) and ``allow_nan=False`` guards what that cannot reach (a
    ``default=`` hook's output)."""
    return json.dumps(finite_json(value), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2) -> None:
    """Write ``value`` to ``path`` atomically as strict JSON (:func:`to_json`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(value, indent=indent) + "\n", encoding="utf-8")


def json_number(value: Any) -> float:
    """A number read from JSON as a float: ``null`` (and an old file's bare NaN) is NaN,
    i.e. missing, as :func:`to_json` wrote it."""
    return math.nan if value is None else float(value)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``; :class:`UnreadableFile` naming it when that fails.

    A number written as non-finite is ``null`` here (:func:`to_json`); files written
    before that may hold a bare ``NaN``, which this still reads. Read numbers that may be
    missing through :func:`json_number`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(path, "JSON", exc) from exc


def read_parquet(path: str | os.PathLike[str], **kwargs: Any) -> pd.DataFrame:
    """``pd.read_parquet(path, **kwargs)``; :class:`UnreadableFile` naming it when that fails."""
    import pandas as pd  # imported here: the write helpers above need neither
    import pyarrow as pa

    path = Path(path)
    try:
        return pd.read_parquet(path, **kwargs)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _unreadable(path, "a Parquet table", exc) from exc


def note_path(artifact: str | os.PathLike[str]) -> Path:
    """Where the note of ``artifact`` lies: ``{stem}.note.json`` beside it."""
    artifact = Path(artifact)
    return artifact.with_name(f"{artifact.stem}.note.json")


def write_note(artifact: str | os.PathLike[str], message: str | None) -> None:
    """Write why ``artifact`` shows no result beside it (atomically); None removes an old
    note, so a rerun that succeeds leaves none behind."""
    path = note_path(artifact)
    if message is None:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(to_json({"artifact": Path(artifact).name, "message": message}))


def read_note(artifact: str | os.PathLike[str]) -> str | None:
    """The note written beside ``artifact`` (:func:`write_note`), or None when it has none."""
    path = note_path(artifact)
    if not path.is_file():
        return None
    found = read_json(path)
    if not isinstance(found, dict) or not isinstance(found.get("message"), str):
        raise UnreadableFile(f"{path} holds no note (a 'message' string): delete it and rerun")
    return found["message"]
