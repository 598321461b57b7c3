"""File writing shared by the engine (its stores and caches) and the explorer (flags, HTML snapshots)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_UMASK_GUARD = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (``/proc/self/status``); elsewhere set
    and restored at once under a lock (``os.umask`` has no read-only form)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_GUARD:
        old = os.umask(0o022)
        os.umask(old)
    return old


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` all or nothing: ``write(file)`` into a temporary file of the same folder, flush and
    fsync it, then ``os.replace`` it over ``path`` (a crash leaves the old file or the new one, never half).

    The file gets the mode of the regular file it replaces, else that of any new file (``0o666`` less the
    umask: readable by whoever may read the user's other files), not the temporary file's private ``0o600``.
    A link at ``path`` is replaced itself, never written through."""
    try:
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    except FileNotFoundError:
        mode = None
    if mode is None:
        mode = 0o666 & ~umask()
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
