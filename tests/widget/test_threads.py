"""Interactive queries run on one torch thread (a busy laptop's cores), scoped: torch's process-global count comes back
after each query, even on error, and the background run keeps every core even when it starts during a query."""

from __future__ import annotations

import threading

import pytest
import torch

from tracin_widgets.widget import _threads
from tracin_widgets.widget._engine import EngineAdapter
from tracin_widgets.widget._threads import background_threads, query_threads

from .conftest import FakeSource


@pytest.fixture
def three_threads():
    """torch at 3 threads for the test (a count that is neither the query's 1 nor a 2-core machine's default)."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_the_count_is_restored_after_the_block_even_on_error(three_threads):
    with query_threads(1):
        assert torch.get_num_threads() == 1
        with query_threads(1):  # nested: the inner block restores nothing
            pass
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
    with pytest.raises(RuntimeError, match="boom"), query_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 3
    assert in_new_thread(torch.get_num_threads) == 3  # the global count too


def test_blocks_open_in_two_threads_restore_the_count_found_before_the_first(three_threads):
    entered, leave = threading.Event(), threading.Event()

    def other():
        with query_threads(1):
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(10)
    assert in_new_thread(background_threads) == 3  # not the open block's 1
    seen = in_new_thread(lambda: _run_block())  # a thread that starts now sees the global 1 ...
    assert seen == (1, 3)  # ... and restores the count found before the first block, not that 1
    leave.set()
    t.join()
    assert torch.get_num_threads() == 3 and in_new_thread(torch.get_num_threads) == 3


def _run_block():
    with query_threads(1):
        inside = torch.get_num_threads()
    return inside, torch.get_num_threads()


def test_a_query_runs_on_query_threads_and_gives_the_count_back(three_threads, data, monkeypatch):
    seen = []

    class Counting(FakeSource):
        def influence(self, inputs, k=None, proponents=True):
            seen.append(torch.get_num_threads())
            return super().influence(inputs, k, proponents)

    eng = EngineAdapter(Counting(data["x_train"]), len(data["x_train"]), lambda *a: None, threading.Event())
    monkeypatch.setattr(_threads, "QUERY_THREADS", 1)
    eng.top_k((torch.from_numpy(data["x_test"][:1]).float(), torch.zeros(1, dtype=torch.long)), 3, key="q")
    assert seen == [1] and torch.get_num_threads() == 3
    monkeypatch.setattr(_threads, "QUERY_THREADS", None)  # None: torch's own setting, untouched
    eng.top_k((torch.from_numpy(data["x_test"][1:2]).float(), torch.zeros(1, dtype=torch.long)), 3, key="r")
    assert seen == [1, 3]


def test_the_background_run_keeps_every_core_when_it_starts_during_a_query(three_threads, make, fake):
    counts = {}
    real = fake.self_influence

    def self_influence():
        counts["self"] = torch.get_num_threads()
        return real()

    fake.self_influence = self_influence
    entered, leave = threading.Event(), threading.Event()

    def query():
        with query_threads(1):
            entered.set()
            leave.wait(10)

    t = threading.Thread(target=query)
    t.start()
    assert entered.wait(10)
    try:
        w = make(wait=False)  # its run's thread starts while the global count is the query's 1
        w.wait(30)
    finally:
        leave.set()
        t.join()
    assert w.status == "ready" and counts["self"] == 3


@pytest.mark.parametrize(("idle", "want"), [(0, 1), (1, 1), (2, 2), (8, 3), (None, 1)])
def test_auto_uses_the_idle_cores_at_least_one_at_most_torchs_count(three_threads, monkeypatch, idle, want):
    monkeypatch.setattr(_threads, "idle_cores", lambda: idle)
    assert _threads.query_thread_count("auto") == want
    assert _threads.query_thread_count(2) == 2 and _threads.query_thread_count(None) is None
    monkeypatch.setattr(_threads, "QUERY_THREADS", "auto")
    with query_threads():
        assert torch.get_num_threads() == want
    assert torch.get_num_threads() == 3


def test_idle_cores_reads_the_runnable_count(monkeypatch, tmp_path):
    monkeypatch.setattr(_threads, "usable_cores", lambda: 4)
    real_open = open

    def fake_open(path, *a, **kw):
        if path == "/proc/loadavg":
            f = tmp_path / "loadavg"
            f.write_text("3.00 2.00 1.00 3/300 12345\n")  # this thread and two others
            return real_open(f, *a, **kw)
        return real_open(path, *a, **kw)

    monkeypatch.setattr("builtins.open", fake_open)
    assert _threads.idle_cores() == 2
