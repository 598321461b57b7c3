"""Files of the factor store: opened never through a link, read and written raw, and the writer lock.

One writer per store folder: ``.lock`` is ``flock``-ed (released when the process dies, whatever the cause) and
holds the writer's pid for the message a second process gets. ``flock`` cannot tell two engines of one process
apart (each open of the file is its own lock), so inside a process a per-folder thread lock comes first: an
engine on another thread of this process (the explorer's background fit next to the user's own engine) waits
for the first to finish and then finds its complete store; the same thread asking twice (a nested call) is an
error rather than a deadlock.

No file inside a store is opened through a symbolic link (``O_NOFOLLOW``): a link planted or copied into a store
folder is refused, so whatever it points to (a user's file) is never truncated, written or read as factors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._integrity import StoreDamaged


# ---------------------------------------------------------------------------------------------------------------------
def _as_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy().data.cast("B")


def _np_bytes(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor as a flat uint8 array (no copy)."""
    view = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
    return view.numpy().reshape(-1).view(np.uint8)


def _write_at(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], offset + done)


def _fill(fd: int, buf: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            raise StoreDamaged(path, "it is shorter than its manifest says")
        done += n


def _read_into(fd: int, t: torch.Tensor, offset: int, path: Path) -> None:
    """Fill the contiguous CPU tensor ``t`` from ``offset`` of the file."""
    _fill(fd, _np_bytes(t).data, offset, path)


_VERIFIER: list[ThreadPoolExecutor] = []


def _verifier() -> ThreadPoolExecutor:
    """The thread that verifies blocks while the reader reads the next file (numpy releases the GIL)."""
    if not _VERIFIER:
        _VERIFIER.append(ThreadPoolExecutor(1, thread_name_prefix="tracin-verify"))
    return _VERIFIER[0]


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_file(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that never follows a link at ``path``: a link is an ``OSError`` (ELOOP) naming it."""
    try:
        return os.open(path, flags | NOFOLLOW | CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP or (e.errno == errno.EMLINK and os.path.islink(path)):
            raise OSError(e.errno, f"{str(path)!r} is a symbolic link, which a factor store never follows") from None
        raise


def link_problem(path: Path) -> str | None:
    """Why ``path`` (which may be missing) cannot be a store file: a link or not a regular file; else None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link (the store never follows links: the file it points to is left alone)"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    return None


def read_text(path: Path) -> str:
    """A small text file of the store, never through a link."""
    fd = open_file(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read().decode()


def remove_entry(path: Path) -> None:
    """Remove a store entry: a folder with its contents (``rmtree`` never follows links), anything else (a link
    included) unlinked itself, never what it points to."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@dataclass
class _Local:
    """This process's hold on one store folder."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    owner: int | None = None  # the thread holding it
    waiting: int = 0


_LOCALS: dict[str, _Local] = {}
_LOCALS_GUARD = threading.Lock()


def waiting(folder: Path) -> int:
    """How many threads of this process wait for the lock of ``folder``."""
    with _LOCALS_GUARD:
        local = _LOCALS.get(os.path.realpath(folder))
        return local.waiting if local is not None else 0


class StoreLock:
    """The writer lock of one store folder (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self.file: int | None = None  # the flock-ed descriptor while held
        self._key = ""

    def acquire(self) -> None:
        import fcntl  # POSIX (Linux, macOS): imported here so that the package still imports elsewhere

        folder = self.path.parent
        if folder.is_symlink():
            raise OSError(
                errno.ELOOP,
                f"the factor store folder {str(folder)!r} (cache_dir) is a symbolic link: a store is only written in "
                "a real folder (its contents are replaced). Remove the link, or pass another cache_dir.",
            )
        key = os.path.realpath(folder)
        local = self._local_wait(key)
        try:
            try:
                fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.EMLINK):
                    raise OSError(
                        e.errno,
                        f"the factor store's lock file {str(self.path)!r} is a symbolic link: the store never follows "
                        "links (the file it points to is left alone). Remove the link (or the store folder) to let "
                        "the store be written again.",
                    ) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ValueError(
                    f"the factor store {str(folder)!r} (cache_dir) is being written by another process (pid {pid}): "
                    "two writers would corrupt it. Wait for that process to finish (it then holds the factors for "
                    "this one), stop it, or pass another cache_dir."
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            self._local_release(key, local)
            raise
        self.file, self._key = fd, key

    @staticmethod
    def _local_wait(key: str) -> _Local:
        """Take this process's thread lock of the folder ``key``, waiting for another thread holding it."""
        me = threading.get_ident()
        with _LOCALS_GUARD:
            local = _LOCALS.setdefault(key, _Local())
            if local.owner == me:
                raise ValueError(
                    f"the factor store {key!r} (cache_dir) is being written by another engine of this same thread (a "
                    "nested call, e.g. from a progress_callback): waiting for it would never end. Make the second "
                    "call after the first returns, or pass another cache_dir."
                )
            local.waiting += 1
        try:
            local.lock.acquire()
        finally:
            with _LOCALS_GUARD:
                local.waiting -= 1
        local.owner = me
        return local

    @staticmethod
    def _local_release(key: str, local: _Local) -> None:
        with _LOCALS_GUARD:
            local.owner = None
            local.lock.release()
            if local.waiting == 0 and _LOCALS.get(key) is local:
                del _LOCALS[key]

    def release(self) -> None:
        if self.file is None:
            return
        import fcntl

        fd, self.file = self.file, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)
        with _LOCALS_GUARD:
            local = _LOCALS.get(self._key)
        if local is not None:
            self._local_release(self._key, local)
