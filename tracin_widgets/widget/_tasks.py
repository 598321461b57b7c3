"""Background work for the explorer: a progress/cancel tracker and a latest-request-wins worker thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ._engine import Cancelled


class Progress:
    """The ``progress_callback(phase, done, total)`` handed to engines; also used for the explorer's own loops.

    Raises ``Cancelled`` when ``cancel_event`` is set. Publishes ``{"phase", "done", "total", "fraction", "eta_s"}``
    through ``publish`` at most every ``min_interval`` seconds (always at the start and end of a phase).
    """

    def __init__(
        self,
        publish: Callable[[dict], None],
        cancel_event: threading.Event,
        min_interval: float = 0.15,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.publish = publish
        self.cancel_event = cancel_event
        self.min_interval = min_interval
        self.clock = clock
        self._phase: str | None = None
        self._t0 = 0.0
        self._done0 = 0
        self._last = -1e9
        self._done_seen = 0
        self._lock = threading.Lock()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"cancelled during {phase!r}")
        now = self.clock()
        with self._lock:
            new_phase = phase != self._phase or done < self._done_seen  # a phase restarts when done goes back
            if new_phase:
                self._phase, self._t0, self._done0 = phase, now, done
            self._done_seen = done
            finished = total > 0 and done >= total
            if not (new_phase or finished or now - self._last >= self.min_interval):
                return
            self._last = now
            eta = None
            if total > 0 and done > self._done0 and now > self._t0:
                rate = (done - self._done0) / (now - self._t0)
                eta = max(0.0, (total - done) / rate)
            info = {
                "phase": str(phase),
                "done": int(done),
                "total": int(total),
                "fraction": float(min(1.0, done / total)) if total > 0 else 0.0,
                "eta_s": None if eta is None else round(eta, 1),
            }
        self.publish(info)


class LatestWorker:
    """Runs submitted jobs on one daemon thread; a job submitted while another waits replaces it.

    So a burst of clicks computes only the first and the last selection; anything in between is dropped.
    """

    def __init__(self, name: str):
        self.name = name
        self._cv = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        with self._cv:
            self._job = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._busy = True  # counted as busy from now on, so join() cannot slip in before the thread starts
                self._thread.start()
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                job, self._job = self._job, None
                if job is None:
                    self._busy = False
                    self._thread = None
                    self._cv.notify_all()
                    return
                self._busy = True
            try:
                job()
            except BaseException:  # pragma: no cover - jobs report their own errors
                pass

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no job is pending or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._busy or self._job is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
        return True
