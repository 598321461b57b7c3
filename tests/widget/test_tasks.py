"""Background helpers: the progress/cancel callback and the latest-request-wins worker."""

from __future__ import annotations

import threading

import pytest

from tracin_widgets.influence import Cancelled
from tracin_widgets.widget._tasks import LatestWorker, Progress


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_eta_throttling_and_cancel():
    out, clock, cancel = [], Clock(), threading.Event()
    p = Progress(out.append, cancel, min_interval=1.0, clock=clock)
    p("factors", 0, 100)  # a new phase is always published
    clock.t = 2.0
    p("factors", 20, 100)  # 10 examples/s -> 8 s left
    assert out[-1] == {"phase": "factors", "done": 20, "total": 100, "fraction": 0.2, "eta_s": 8.0}
    clock.t = 2.5
    p("factors", 25, 100)  # throttled
    assert out[-1]["done"] == 20
    p("factors", 100, 100)  # the end of a phase is always published
    assert out[-1]["fraction"] == 1.0 and out[-1]["eta_s"] == 0.0
    p("self influence", 0, -1)  # unknown total
    assert out[-1] == {"phase": "self influence", "done": 0, "total": -1, "fraction": 0.0, "eta_s": None}
    cancel.set()
    with pytest.raises(Cancelled, match="cancelled during 'self influence'"):
        p("self influence", 1, -1)


def test_latest_worker_drops_intermediate_jobs():
    worker = LatestWorker("test")
    ran, release, started = [], threading.Event(), threading.Event()

    def first():
        started.set()
        release.wait(10)
        ran.append("first")

    worker.submit(first)
    assert started.wait(10)
    for name in ("second", "third", "fourth"):
        worker.submit(lambda n=name: ran.append(n))
    release.set()
    assert worker.join(10)
    assert ran == ["first", "fourth"]
    worker.submit(lambda: ran.append("again"))  # the thread restarts after going idle
    assert worker.join(10) and ran[-1] == "again"


def test_latest_worker_join_times_out():
    worker, release = LatestWorker("test"), threading.Event()
    worker.submit(lambda: release.wait(10))
    assert worker.join(0.05) is False
    release.set()
    assert worker.join(10) is True
