"""``EngineAdapter``: the one place that knows how an influence engine gives the explorer what it shows.

Builds the default engine (``TracInCPFast``) or checks the user's, calls it under the engine lock with the
explorer's progress callback installed (so Cancel works), and turns its answers into numpy: top-k proponents and
opponents of a query (with a cache of recent score rows) and the self-influence of the training set. Whether an
engine is asked for a full score row or for its k best is decided by what it can do, never by its class name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..influence import Cancelled, TracInCPFast, find_final_linear_layer
from ..influence._data import usable_cores
from . import _data, _payload
from ._protocols import CheckpointTerm, InfluenceSource

SCORE_CACHE = 32  # influence rows of recent queries (n_train float64 each) ...
SCORE_CACHE_BYTES = 32 * 2**20  # ... within this many bytes (at least 2 rows): a constant, whatever n_train
# torch threads of an interactive query: "auto" (as many as there are idle cores right now, at least one and at most
# torch's own count), an int, or None (torch's setting, untouched). A warm query at 10k is ~20 ms on a quiet 2-core
# machine with torch's 2 threads, but with the cores busy its threads wait for each other (100-370 ms against 35-75 ms
# on one thread); benchmarks/bench_widget.py --parts load measures the policies side by side.
QUERY_THREADS: int | str | None = "auto"
TopK = tuple[np.ndarray, np.ndarray]  # (indices (k,) int64, scores (k,) float64)
ProgressFn = Callable[[str, int, int], None]


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


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a numpy array."""
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=dtype)


def answers_top_k_from_an_index(source: Any) -> bool:
    """True for engines that find the k most influential examples through a nearest-neighbour index
    (``TracInCPFastRandProj``, ours or Captum's): their ``influence(k=None)`` scores are projections, so they are
    asked for their k proponents and k opponents instead of a full score row."""
    return getattr(source, "nearest_neighbors", None) is not None


class EngineAdapter:
    """How the explorer uses any influence engine (see ``InfluenceSource``).

    ``progress`` gets every progress update of the engine (and raises ``Cancelled`` to abort it); ``cancel`` is the
    explorer's cancel event, checked before each engine call. ``lock`` is held during every engine call and every
    prediction batch: one user of the model at a time.
    """

    def __init__(self, source: InfluenceSource | None, n_train: int, progress: ProgressFn, cancel: threading.Event):
        self.source = source
        self.n_train = n_train
        self.lock = threading.Lock()
        self._progress = progress
        self._cancel = cancel
        self._user_progress: ProgressFn | None = None
        self._score_cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()
        self.score_cache_rows = max(2, min(SCORE_CACHE, SCORE_CACHE_BYTES // max(1, 8 * n_train)))

    @classmethod
    def create(
        cls,
        engine: Any,
        *,
        model: Any,
        checkpoints: Any,
        train_dataset: Any,
        checkpoints_load_func: Callable | None,
        final_fc_layer: Any,
        loss_fn: Any,
        cache_dir: Any,
        batch_size: int,
        device: Any,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> EngineAdapter:
        """The user's ``engine`` (checked), or a ``TracInCPFast`` built from the other arguments."""
        adapter = cls(None, len(train_dataset), progress, cancel)
        if engine is not None:
            config = (
                ("checkpoints_load_func", checkpoints_load_func),
                ("final_fc_layer", final_fc_layer),
                ("loss_fn", loss_fn),
                ("cache_dir", cache_dir),
            )
            given = [n for n, v in config if v is not None]
            if given:
                raise ValueError(
                    f"engine= was given together with {', '.join(given)}: these configure the default engine only. "
                    "Pass them to the engine you construct instead."
                )
            if not isinstance(engine, InfluenceSource):
                raise TypeError(
                    "engine must have influence(inputs, k, proponents) and self_influence() (TracInCP, TracInCPFast "
                    f"or TracInCPFastRandProj), got {type(engine).__name__}."
                )
            adapter.source = engine
            return adapter
        if checkpoints is None:
            raise TypeError("InfluenceExplorer() needs checkpoints (a list of paths or a directory), or engine=.")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if final_fc_layer is None:
            batch = _data.collate_one(_data.check_item(train_dataset[0], "train_dataset[i]"))
            dev = _data.model_device(model, device)
            example = tuple(b.to(dev) if isinstance(b, torch.Tensor) else b for b in batch[:-1])
            final_fc_layer = find_final_linear_layer(model, example)[0]
        adapter.source = TracInCPFast(
            model,
            final_fc_layer,
            train_dataset,
            checkpoints,
            checkpoints_load_func=checkpoints_load_func,
            loss_fn=loss_fn if loss_fn is not None else nn.CrossEntropyLoss(reduction="sum"),
            batch_size=batch_size,
            device=device,
            progress_callback=adapter.progress_callback,
            cache_dir=cache_dir,
        )
        return adapter

    @property
    def name(self) -> str:
        return type(self.source).__name__

    def progress_callback(self, phase: str, done: int, total: int) -> None:
        """What the engine calls: the explorer's progress (which may raise ``Cancelled``), then the user's own."""
        self._progress(phase, done, total)
        if self._user_progress is not None:
            self._user_progress(phase, done, total)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Call the engine holding the engine lock, with our progress callback (and any of the user's) installed."""
        src = self.source
        with self.lock:
            if self._cancel.is_set():
                raise Cancelled("cancelled")
            swap = hasattr(src, "progress_callback") and src.progress_callback != self.progress_callback
            if swap:
                old = src.progress_callback
                self._user_progress = old
                src.progress_callback = self.progress_callback
            try:
                return fn()
            finally:
                if swap:
                    src.progress_callback = old
                    self._user_progress = None

    def fit(self) -> None:
        """Precompute the training factors, if the engine can (``fit()``); others compute them lazily."""
        fit = getattr(self.source, "fit", None)
        if callable(fit):
            self.call(fit)

    def self_influence(self) -> np.ndarray:
        """Self-influence of every training example, ``(n_train,)`` float64."""
        scores = to_numpy(self.call(lambda: self.source.self_influence()), np.float64).reshape(-1)
        self._check_length(scores, "self_influence()")
        return scores

    def top_k(self, batch: tuple, k: int, key: Hashable | None = None) -> tuple[TopK, TopK]:
        """(indices, scores) of the k proponents (descending) and k opponents (ascending) of one query.

        One ``influence(batch, k=None)`` call (one pass over the training factors) gives both; engines that answer
        from a neighbour index are asked for their k proponents and opponents instead. Score rows are cached by
        ``key`` (the query), so going back or changing k costs no engine call.
        """
        if answers_top_k_from_an_index(self.source):
            out = []
            for proponents in (True, False):
                with query_threads():
                    res = self.call(lambda p=proponents: self.source.influence(batch, k=k, proponents=p))
                out.append((to_numpy(res[0]).reshape(-1), to_numpy(res[1], np.float64).reshape(-1)))
            return out[0], out[1]
        scores = self.scores(batch, key)
        pro = _payload.top_k(scores, k, largest=True)
        opp = _payload.top_k(scores, k, largest=False)
        return (pro, scores[pro]), (opp, scores[opp])

    def scores(self, batch: tuple, key: Hashable | None = None) -> np.ndarray:
        """The ``(n_train,)`` float64 influence of every training example on the query ``batch`` (cached by key)."""
        with self._cache_lock:
            scores = self._score_cache.get(key) if key is not None else None
            if scores is not None:
                self._score_cache.move_to_end(key)
                return scores
        with query_threads():
            scores = to_numpy(self.call(lambda: self.source.influence(batch, k=None)), np.float64).reshape(-1)
        self._check_length(scores, "influence()")
        if key is not None:
            with self._cache_lock:
                self._score_cache[key] = scores
                while len(self._score_cache) > self.score_cache_rows:
                    self._score_cache.popitem(last=False)
        return scores

    def checkpoint_terms(self, batch: tuple, train_index: int) -> list[CheckpointTerm]:
        """Each checkpoint's term of the influence of training example ``train_index`` on the query ``batch``, from
        the engine's ``influence_by_checkpoint`` (the file's name, its learning rate, the term).

        Raises NotImplementedError for an engine without ``influence_by_checkpoint`` (Captum's classes, others).
        """
        src = self.source
        split = getattr(src, "influence_by_checkpoint", None)
        if not callable(split):
            raise NotImplementedError(
                f"{self.name} cannot split its scores by checkpoint (it has no influence_by_checkpoint): use "
                "tracin_widgets.influence's TracInCP, TracInCPFast or TracInCPFastRandProj for the breakdown."
            )
        terms = to_numpy(self.call(lambda: split(batch, [int(train_index)])), np.float64).reshape(-1)
        rates = getattr(src, "learning_rates", None)
        lrs = list(self.call(rates)) if callable(rates) else [None] * len(terms)
        paths = [str(p) for p in getattr(src, "checkpoints", [])]
        if len(paths) != len(terms):
            paths = [f"checkpoint {c + 1}" for c in range(len(terms))]
        return [
            CheckpointTerm(checkpoint=Path(p).name, lr=None if lr is None else float(lr), contribution=float(v))
            for p, lr, v in zip(paths, lrs, terms, strict=True)
        ]

    def _check_length(self, scores: np.ndarray, what: str) -> None:
        if len(scores) != self.n_train:
            raise ValueError(
                f"the engine's {what} returned {len(scores)} scores but train_dataset has {self.n_train} "
                "examples: the engine must be built on the same training set."
            )
