"""The explorer's memory stays within the engine's factors plus a constant: the score-row cache is bounded in bytes,
whatever the training set's size."""

from __future__ import annotations

import threading

import numpy as np
import torch

from tracin_widgets.widget import _engine
from tracin_widgets.widget._engine import EngineAdapter


class Rows:
    """An engine whose influence row is the query's value repeated n_train times."""

    def __init__(self, n: int):
        self.n = n
        self.progress_callback = None

    def influence(self, inputs, k=None, proponents=True):
        return torch.full((1, self.n), float(inputs[0][0]))

    def self_influence(self):
        return torch.zeros(self.n)


def test_the_score_cache_holds_at_most_its_byte_budget_at_any_size():
    for n in (1_000, 400_000, 4_000_000):
        eng = EngineAdapter(Rows(n), n, lambda *a: None, threading.Event())
        for q in range(40):
            eng.scores((torch.tensor([float(q)]), torch.zeros(1)), key=q)
        rows = list(eng._score_cache.values())
        held = sum(r.nbytes for r in rows)
        assert len(rows) == eng.score_cache_rows >= 2
        assert held <= max(_engine.SCORE_CACHE_BYTES, 2 * 8 * n)
        assert len(rows) == (32 if n == 1_000 else max(2, _engine.SCORE_CACHE_BYTES // (8 * n)))
        np.testing.assert_array_equal(eng.scores(None, key=39), np.full(n, 39.0))  # the newest are kept
