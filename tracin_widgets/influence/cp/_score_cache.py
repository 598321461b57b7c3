"""The query results TracInCP keeps for later calls, bounded in bytes (least recently used dropped first), and
the check that a whole score matrix fits in this machine's memory."""

from __future__ import annotations

from collections import OrderedDict

import torch

from .. import _memory
from .._store import human
from .._topk import TopKPair

Entry = torch.Tensor | TopKPair  # a score matrix (or its aggregate row), or a top-k of both directions


def entry_bytes(entry: Entry) -> int:
    return entry.numel() * entry.element_size() if isinstance(entry, torch.Tensor) else entry.nbytes


class ScoreCache(OrderedDict[tuple[str, bool], Entry]):
    """``{(test key, aggregate): entry}``, oldest first."""

    def find(self, key: str, k: int | None, aggregate: bool) -> tuple[Entry, bool] | None:
        """A kept result that answers this call, and whether it is the cache's own (to be copied before it is
        returned); None when a pass is needed. A top-k answers a ``k`` up to its own; a score matrix answers
        anything (its aggregate row too)."""
        for agg in (aggregate, False) if aggregate else (False,):
            entry = self.get((key, agg))
            if entry is None or (isinstance(entry, TopKPair) and (k is None or k > entry.k or agg != aggregate)):
                continue
            self.move_to_end((key, agg))
            if agg != aggregate:
                assert isinstance(entry, torch.Tensor)
                return entry.sum(0, keepdim=True), False
            return entry, True
        return None

    def put(self, key: tuple[str, bool], entry: Entry, budget: int) -> bool:
        """Keep ``entry`` within ``budget`` bytes (dropping the oldest); one larger than that is not kept.
        Returns whether it was kept."""
        if entry_bytes(entry) > budget:
            return False
        self[key] = entry
        self.move_to_end(key)
        while sum(entry_bytes(e) for e in self.values()) > budget:
            self.popitem(last=False)
        return True


def check_matrix_fits(rows: int, n_train: int | None, itemsize: int) -> None:
    """``k=None`` asks for the whole ``(rows, n_train)`` matrix: refuse it before the pass when it is larger than
    this machine's memory (the top-k needs only ``rows * k`` values)."""
    memory = _memory.host_memory()
    if n_train is None or memory is None:
        return
    need = rows * n_train * itemsize
    if need > memory:
        raise ValueError(
            f"influence(k=None) returns the full score matrix of {rows} test row(s) x {n_train} training rows "
            f"({human(need)}), more than this machine's memory ({human(memory)}). Pass k=... (e.g. k=100) for "
            "the most influential training examples of each test row (proponents and opponents, kept "
            "together), or fewer test rows per call."
        )
