"""Crash-safe writes and file hashes: what lamina writes (a checkpoint, a corpus, a tokenizer,
eval results) is either whole or absent, never half there.

The one atomic writer of the project (the ground floor: every stage writes through it). A write
goes to a hidden partial name beside its destination (`.NAME.partial-PID`), is fsynced, and is
renamed into place only when complete. A process killed mid-write leaves only the hidden partial,
which the next write to the same destination removes once its writer is dead. A write that finds
no room (a full disk, a used-up quota, a file size limit) ends in one `LaminaError` that says
so, where, and how much was written and needed, with the partial removed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LaminaError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # someone else's process: alive
        return True
    return True


def partial_path(dst: Path) -> Path:
    """Where this process writes `dst` before it is whole."""
    return dst.parent / f".{dst.name}.partial-{os.getpid()}"


def remove_stale_partials(dst: Path) -> None:
    """Drop what killed writers of `dst` left behind (their process is gone); a live writer's
    partial is left alone."""
    for p in dst.parent.glob(f".{dst.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


_NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EFBIG: "a file outgrew the largest size allowed (the file system's, or `ulimit -f`)"}
# libraries that lose the errno of a failed write: numpy's tofile (counts of items, not bytes),
# torch.save's zip writer (file offsets), SQLite
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|unexpected pos \d+ vs \d+|disk I/O error")


def _causes(e: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _what_ran_out(e: BaseException, where: Path) -> str | None:
    """What ran out if `e` (or an error behind it) is a write that found no room, else None."""
    for cause in _causes(e):
        if isinstance(cause, OSError) and cause.errno in _NO_ROOM:
            return _NO_ROOM[cause.errno]
        if isinstance(cause, sqlite3.OperationalError) and "disk is full" in str(cause):
            return _NO_ROOM[errno.ENOSPC]
        if isinstance(cause, LaminaError):
            continue
        for code, what in _NO_ROOM.items():      # wrapped by a library: "No space left on device", ...
            if os.strerror(code) in str(cause):
                return what
        if _SHORT_WRITE.search(str(cause)):      # errno lost: see what is short, the disk or the limit
            if shutil.disk_usage(where).free < 1 << 20:
                return _NO_ROOM[errno.ENOSPC]
            if _file_size_limited():
                return _NO_ROOM[errno.EFBIG]
    return None


def _file_size_limited() -> bool:
    try:
        import resource         # POSIX only
    except ImportError:
        return False
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def _size(path: Path) -> int:
    """Bytes in a file, or in all the files under a folder (links not followed)."""
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _mount(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def _no_room(e: BaseException, dst: Path, partial: Path) -> LaminaError | None:
    """One line for a write of `dst` that found no room: what ran out, on which file system, how
    much was written (it needs more than that) and how much is free; None when `e` is some other
    error. Measured before the partial is removed, so the numbers are those of the failure."""
    what = _what_ran_out(e, dst.parent)
    if what is None:
        return None
    written = _size(partial)
    need = f"more than {_bytes(written)}" if written else "more"
    return LaminaError(f"{dst}: not written, {what} on {_mount(dst.parent)} ({_bytes(written)} written, "
                       f"{_bytes(shutil.disk_usage(dst.parent).free)} free; it needs {need}); "
                       f"free some space or write it somewhere else")


def _check_free(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise LaminaError(f"{dst}: already exists; choose a new path or remove it first")


@contextmanager
def atomic_directory(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `dst`; on success fsync it and rename it to `dst`,
    on any failure remove it. A reader never sees a partly written `dst`."""
    dst = Path(dst)
    _check_free(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst)
    tmp = partial_path(dst)
    try:
        tmp.mkdir()
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        _fsync_dir(tmp)
        if dst.exists():
            dst.rmdir()
        os.rename(tmp, dst)
        _fsync_dir(dst.parent)
    except BaseException as e:
        full = _no_room(e, dst, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from e
        raise


@contextmanager
def atomic_file(dst: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `dst`; renamed over `dst` only once fully written. An
    existing `dst` is refused unless `overwrite` (then it is replaced in one step)."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise LaminaError(f"{dst}: already exists; choose a new path or remove it first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dst)
    tmp = partial_path(dst)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    except BaseException as e:
        full = _no_room(e, dst, tmp)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from e
        raise


def write_json(path: str | Path, value, *, overwrite: bool = True) -> Path:
    """`value` as indented JSON, written atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")
    return path


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
