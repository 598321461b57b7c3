"""The controller stays small in time as well as in lines: one gallery request (the page's selection of a test
example) enters ``InfluenceExplorer`` at most twice, once with the request and once with the answer; the
galleries get what they need (the class names of the badges, ``k``, ``explain``) as data, not by calling back."""

from __future__ import annotations

import functools
import inspect
import threading

import pytest

from tracin_widgets.widget import InfluenceExplorer
from tracin_widgets.widget._host import ExplorerHost

from .conftest import train_digits


@pytest.fixture
def entries(monkeypatch):
    """Every entry into the controller (a call of a method of ``InfluenceExplorer`` or of its host, from outside
    them: calls they make to each other are not counted), by method name, in order."""
    seen: list[str] = []
    depth = threading.local()

    def counted(name, fn):
        @functools.wraps(fn)
        def method(*args, **kwargs):
            outer = getattr(depth, "n", 0)
            if outer == 0:
                seen.append(name)
            depth.n = outer + 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth.n = outer

        return method

    for cls in (InfluenceExplorer, ExplorerHost):
        for name, value in list(vars(cls).items()):
            if inspect.isfunction(value) and name != "__init__":
                monkeypatch.setattr(cls, name, counted(f"{cls.__name__}.{name}", value))
    return seen


def select(w: InfluenceExplorer, entries: list[str], index: int) -> list[str]:
    """The page selects test example ``index`` (one state update, as the page sends it); the entries it made."""
    w.wait(60)
    entries.clear()
    w.set_state({"selected_test": index, "query": {"source": "test", "index": index}})
    assert w._galleries.worker.join(60)
    assert w.gallery["query"] == {"source": "test", "index": index} and not w.gallery["error"], w.gallery
    assert len(w.gallery["proponents"]) == w.k
    return list(entries)


def test_a_gallery_request_enters_the_controller_at_most_twice(make, entries):
    w = make(k=30, class_names=["zero", "one", "two"])
    got = select(w, entries, 5)
    assert got == ["InfluenceExplorer.set_state", "ExplorerHost.show"]
    tiles = w.gallery["proponents"] + w.gallery["opponents"]
    named = [r["badge"] for r in tiles if r["badge"] and r["badge"].startswith("the checkpoints' average prediction")]
    assert named and all(("(zero)" in b or "(one)" in b or "(two)" in b) for b in named)  # the names, as data


def test_with_the_default_engine_too(tmp_path, entries):
    model, ckpts, train, test = train_digits(tmp_path, lr=0.5, epochs=2)
    w = InfluenceExplorer(model, ckpts, train, test, k=3, batch_size=64, class_names=[str(c) for c in range(10)])
    try:
        got = select(w, entries, 7)
        assert len(got) <= 2, got
    finally:
        w.close()
