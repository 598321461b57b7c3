"""What the explorer keeps of its flags beyond the ``flagged`` trait: the ``flags_path`` file (restored at start,
saved after every change) and the undo history of every change, from any view or from Python."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _flags

HISTORY = 1000  # changes kept for undo


class FlagStore:
    """The flags file and undo history of one explorer.

    ``path`` is checked and read at once (a corrupt file raises here and is left untouched): ``restored`` holds its
    indices. :meth:`changed` records a change (unless :meth:`undo` made it) and saves the new flags to ``path``.
    """

    def __init__(self, path: Any, n_train: int, lock: threading.RLock):
        self.path: Path | None = None if path is None else _flags.check_suffix(path, "flags_path")
        self.restored: list[int] = []
        if self.path is not None and self.path.exists():
            self.restored = _flags.read(self.path, n_train)
        self.lock = lock
        self._history: list[list[int]] = []
        self._undoing = False

    def changed(self, old: Sequence[int], new: Sequence[int]) -> None:
        """Record the change from ``old`` and save ``new`` (raises when the file cannot be written)."""
        if not self._undoing:
            with self.lock:
                self._history.append(list(old))
                del self._history[:-HISTORY]
        if self.path is not None:
            _flags.write(self.path, list(new))

    def undo(self, assign: Callable[[list[int]], None]) -> None:
        """Give the flags before the last change to ``assign`` (which sets the trait); nothing without history."""
        with self.lock:
            if not self._history:
                return
            prev = self._history.pop()
            self._undoing = True
        try:
            assign(prev)
        finally:
            self._undoing = False
