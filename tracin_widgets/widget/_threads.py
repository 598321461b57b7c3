"""The torch thread policy of the explorer: how many threads an interactive query (a gallery, one prediction) uses,
scoped to the query, and what a background run uses.

An int, "auto" or None in ``QUERY_THREADS``: "auto" takes as many threads as there are idle cores right now (at
least one, at most torch's own count), None leaves torch's setting untouched. With the cores busy, a query's threads
wait for each other: on a loaded machine fewer threads answer sooner.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

QUERY_THREADS: int | str | None = "auto"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def idle_cores() -> int | None:
    """Cores that no other runnable thread wants right now: the usable cores minus the kernel's instantaneous count
    of runnable threads (Linux ``/proc/loadavg``, the caller excluded). None where that count is unknown."""
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, usable_cores() - max(0, runnable - 1))


def query_thread_count(policy: int | str | None) -> int | None:
    """The torch thread count of one interactive query under ``policy`` (see ``QUERY_THREADS``)."""
    if policy != "auto":
        return None if policy is None else int(policy)
    idle = idle_cores()
    return 1 if idle is None else max(1, min(background_threads(), idle))


_threads_guard = threading.Lock()
_threads_users = 0  # query_threads blocks open now, in any thread
_threads_saved = 0  # torch's thread count before the first of them
_threads_depth = threading.local()  # blocks open in this thread (nested ones restore nothing)


@contextmanager
def query_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (by default the count ``QUERY_THREADS`` gives now; None there
    changes nothing), then restore the count it found, even on error.

    torch's count is process-global (a new thread starts with it) while each OpenMP thread keeps the count it last
    set itself. Blocks open at the same time share one saved count, so a second one never saves the first one's
    ``n``; each thread restores its own count when its outermost block closes. A background run sets its own count
    when it starts (``Pipeline``), so one that starts during a query still uses every core."""
    global _threads_users, _threads_saved
    n = query_thread_count(QUERY_THREADS) if n is None else n
    if n is None:
        yield
        return
    depth = getattr(_threads_depth, "n", 0)
    with _threads_guard:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
        _threads_users += 1
        if depth == 0:
            torch.set_num_threads(n)
    _threads_depth.n = depth + 1
    try:
        yield
    finally:
        _threads_depth.n = depth
        with _threads_guard:
            _threads_users -= 1
            if depth == 0:
                torch.set_num_threads(_threads_saved)


def background_threads() -> int:
    """torch's thread count outside any query block: what a background run uses (all the cores by default)."""
    with _threads_guard:
        return _threads_saved if _threads_users else torch.get_num_threads()
