"""Atomic writes: fsynced, never a moment without the target, no temporaries left behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mamlscope.io as mio
from mamlscope.io import atomic_path, remove_stale_temporaries


def write_folder(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text(text)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_file_and_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if sys.platform == "linux" else "?")
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    assert len(synced) >= 2  # the file, then the folder that received the rename
    if sys.platform == "linux":
        assert synced[0].endswith("/f.txt") and synced[-1] == str(tmp_path)
    synced.clear()
    write_folder(tmp_path / "d", "y")
    if sys.platform == "linux":
        names = [Path(s).name for s in synced]
        assert {"a.txt", "b.txt", "sub"} <= set(names) and synced[-1] == str(tmp_path)


def test_stale_temporary_of_a_killed_writer_is_removed_on_next_write(tmp_path: Path) -> None:
    target = tmp_path / "out"
    code = (
        "import os, sys\n"
        "from mamlscope.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.mkdir(); (tmp / 'half.txt').write_text('half')\n"
        "    os._exit(9)\n"  # killed: no finally, no cleanup
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=False)
    left = [n for n in siblings(target) if n.startswith(".out.")]
    assert len(left) == 1  # the kill left its temporary folder behind
    write_folder(target, "new")
    assert siblings(target) == ["out"]
    assert (target / "a.txt").read_text() == "new"


def test_only_this_targets_unheld_temporaries_are_removed(tmp_path: Path) -> None:
    for name in (".seed1.abcd_123.tmp", ".seed1.zzzzzzzz", ".seed10.abcd1234.tmp", ".seed1.x"):
        (tmp_path / name).mkdir()
    held = tmp_path / ".seed1.held0000.tmp"
    held.mkdir()
    lock = mio._try_lock(held)  # a live writer
    try:
        removed = remove_stale_temporaries(tmp_path / "seed1")
    finally:
        mio._unlock(lock)
    assert sorted(p.name for p in removed) == [".seed1.abcd_123.tmp", ".seed1.zzzzzzzz"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".seed1.held0000.tmp", ".seed1.x", ".seed10.abcd1234.tmp"]


def watch_target(monkeypatch: pytest.MonkeyPatch, target: Path) -> list[str]:
    """Patch every rename the module may use to assert ``target`` is a folder around it."""
    calls: list[str] = []

    def guarded(name: str, func):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            assert target.is_dir() and not target.is_symlink(), f"absent before {name}"
            out = func(*args, **kwargs)
            assert target.is_dir() and not target.is_symlink(), f"absent after {name}"
            calls.append(name)
            return out

        return wrapper

    monkeypatch.setattr(os, "replace", guarded("replace", os.replace))
    monkeypatch.setattr(os, "rename", guarded("rename", os.rename))
    monkeypatch.setattr(mio, "exchange", guarded("exchange", mio.exchange))
    return calls


@pytest.mark.skipif(sys.platform != "linux", reason="the exchange is Linux only")
def test_old_folder_is_never_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "data"
    write_folder(target, "old")
    calls = watch_target(monkeypatch, target)
    write_folder(target, "new")
    assert calls == ["exchange"]
    assert (target / "a.txt").read_text() == "new" and (target / "sub" / "b.txt").exists()
    assert siblings(target) == ["data"]


def test_fallback_without_exchange_replaces_and_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(a, b):  # type: ignore[no-untyped-def]
        raise OSError(errno.EINVAL, "not supported here")

    monkeypatch.setattr(mio, "exchange", unsupported)
    target = tmp_path / "data"
    write_folder(target, "old")
    write_folder(target, "new")
    assert (target / "a.txt").read_text() == "new" and siblings(target) == ["data"]

    real_rename = os.rename

    def failing_second(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == target and Path(src).name == target.name:  # the new one, not the old
            raise OSError(errno.EIO, "disk trouble")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_second)
    with pytest.raises(OSError, match="disk trouble"):
        write_folder(target, "lost")
    assert (target / "a.txt").read_text() == "new" and siblings(target) == ["data"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_exception_leaves_old_target_and_no_temporary(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "t"
    if kind == "file":
        target.write_text("old")
    else:
        write_folder(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        if kind == "file":
            tmp.write_text("half")
        else:
            tmp.mkdir()
            (tmp / "a.txt").write_text("half")
        raise RuntimeError("job failed")
    assert siblings(target) == ["t"]
    assert (target if kind == "file" else target / "a.txt").read_text() == "old"


def test_file_and_folder_replace_each_other(tmp_path: Path) -> None:
    target = tmp_path / "x"
    with atomic_path(target) as tmp:
        tmp.write_text("file")
    write_folder(target, "folder")
    assert (target / "a.txt").read_text() == "folder"
    with atomic_path(target) as tmp:
        tmp.write_text("file again")
    assert target.read_text() == "file again" and siblings(target) == ["x"]


def test_nothing_written_raises_and_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass
    assert target.read_text() == "old" and siblings(target) == ["f"]
