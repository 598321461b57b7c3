"""EngineAdapter: how an engine answers is chosen by what it can do, never by its class name; numpy comes out."""

from __future__ import annotations

import threading

import numpy as np

from tracin_widgets.widget._engine import EngineAdapter, answers_top_k_from_an_index

from .conftest import FakeSource


class IndexedSource(FakeSource):
    """A neighbour-index engine under another class name: its k=None scores are projections, never to be used."""

    def __init__(self, train_x):
        super().__init__(train_x)
        self.nearest_neighbors = object()
        self.k_asked: list = []

    def influence(self, inputs, k=None, proponents=True):
        if k is None:
            raise AssertionError("a neighbour-index engine was asked for all scores")
        self.k_asked.append((k, proponents))
        return super().influence(inputs, k, proponents)


def adapter(source):
    return EngineAdapter(source, len(source.X), lambda *a: None, threading.Event())


def test_a_neighbour_index_engine_is_asked_for_its_k_best_whatever_its_class_name(make, data):
    source = IndexedSource(data["x_train"])
    assert answers_top_k_from_an_index(source) and not answers_top_k_from_an_index(FakeSource(data["x_train"]))
    w = make(engine=source, k=4)
    scores = data["x_test"][0] @ data["x_train"].T
    assert [r["index"] for r in w.gallery["proponents"]] == np.argsort(-scores, kind="stable")[:4].tolist()
    assert [r["index"] for r in w.gallery["opponents"]] == np.argsort(scores, kind="stable")[:4].tolist()
    assert source.k_asked == [(4, True), (4, False)]


def test_top_k_gives_numpy_and_caches_the_score_row_of_a_query(data):
    source = FakeSource(data["x_train"])
    a = adapter(source)
    batch = (data["train"].tensors[0][:0], None)  # unused by the cached call below
    query = (data["test"].tensors[0][:1], data["test"].tensors[1][:1])
    (pro, pro_s), (opp, opp_s) = a.top_k(query, 3, key=("test", 0))
    scores = data["x_test"][0] @ data["x_train"].T
    assert isinstance(pro, np.ndarray) and pro_s.dtype == np.float64
    assert pro.tolist() == np.argsort(-scores, kind="stable")[:3].tolist()
    np.testing.assert_allclose(opp_s, np.sort(scores)[:3])
    (pro5, _), _ = a.top_k(batch, 5, key=("test", 0))  # same query, larger k: from the cache
    assert source.influence_calls == 1 and pro5.tolist() == np.argsort(-scores, kind="stable")[:5].tolist()
