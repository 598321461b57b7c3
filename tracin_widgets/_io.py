"""File writing shared by the engine (its stores and caches) and the explorer (flags, HTML snapshots)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` all or nothing: ``write(file)`` into a temporary file of the same folder, flush and
    fsync it, then ``os.replace`` it over ``path`` (a crash leaves the old file or the new one, never half)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
