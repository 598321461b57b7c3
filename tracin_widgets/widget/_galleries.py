"""The galleries: the k proponents and k opponents of one query (a test or training example), computed on a worker
thread. The newest request always wins: a stale answer is dropped, never shown over a newer selection."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from . import _codec, _data
from ._engine import Cancelled, EngineAdapter
from ._examples import Examples
from ._host import Host
from ._protocols import Gallery, Row
from ._tasks import LatestWorker


class Galleries:
    """Gallery requests of one explorer.

    A request carries everything it needs as data (the query, ``k``, ``explain``, the class names of the badges), so
    computing it never calls back into the explorer; its answer is shown with ``host.show(gallery=...)`` (under
    ``lock``, only for the newest request), its error reported with ``host.fail``. ``fitted`` is set once the engine
    may be queried; ``in_flight()`` counts a computation as in flight for the ``with`` block (a Cancel reaches it).
    ``explain``: ``"label"`` explains the score of the query's own label, ``"prediction"`` that of the model's
    prediction for it (the same galleries, computed once, when the two agree).
    """

    def __init__(
        self,
        examples: Examples,
        engine: EngineAdapter,
        *,
        lock: threading.RLock,
        fitted: threading.Event,
        in_flight: Callable[[], AbstractContextManager[Any]],
        host: Host,
    ):
        self.examples = examples
        self.engine = engine
        self.lock = lock
        self.fitted = fitted
        self.in_flight = in_flight
        self.host = host
        self.generation = 0  # id of the newest request
        self.worker = LatestWorker("tracin-gallery")

    def new_request(self) -> int:
        """A new request id: every request made before it is now stale."""
        with self.lock:
            self.generation += 1
            return self.generation

    def request(
        self, q: dict, k: int, explain: str, names: Sequence[str], relabels: Mapping[int, int] | None = None
    ) -> int | None:
        """Ask for the galleries of query ``q`` on the worker thread; the request id (None for no query, which
        still makes every earlier request stale). ``relabels``: the tiles' new labels."""
        gen = self.new_request()
        if not q:
            return None
        self.worker.submit(functools.partial(self._run, q, k, gen, explain, list(names), dict(relabels or {})))
        return gen

    def _run(self, q: dict, k: int, gen: int, explain: str, names: list[str], relabels: dict[int, int]) -> None:
        with self.in_flight():
            self.compute(q, k, gen, explain, names, relabels)

    def check_query(self, q: dict) -> tuple[str, int]:
        src, idx = q.get("source"), q.get("index")
        if src not in ("test", "train") or not isinstance(idx, int) or isinstance(idx, bool):
            raise ValueError(f"query must be {{'source': 'test' | 'train', 'index': int}}, got {q!r}.")
        ex = self.examples
        n = ex.n_train if src == "train" else (len(ex.test) if ex.test is not None else 0)
        if not 0 <= idx < n:
            raise ValueError(f"query index {idx} is outside the {src} set [0, {n}).")
        return str(src), idx

    def compute(
        self,
        q: dict,
        k: int,
        gen: int,
        explain: str = "label",
        names: Sequence[str] = (),
        relabels: Mapping[int, int] | None = None,
    ) -> bool:
        """Compute the galleries of query ``q``; show them only if no newer request came meanwhile. True if shown."""
        relabels = relabels or {}
        try:
            if gen != self.generation:
                return False
            payload = self._payload(q, k, gen, explain, names, relabels)
            if payload is None:
                return False
        except Exception as e:
            if gen != self.generation:
                return False
            payload = self._failed(q, k, gen, explain, e)
        with self.lock:  # badged against the arrays as they are now, under the lock the pipeline's redraw takes
            if gen != self.generation:  # a newer selection won: never overwrite it with this stale answer
                return False
            if payload["proponents"] or payload["opponents"]:
                payload = self.rebadge(payload, names, relabels)
            self.host.show(gallery=payload)
        return True

    def _failed(self, q: dict, k: int, gen: int, explain: str, e: Exception) -> Gallery:
        if isinstance(e, Cancelled):
            again = "select it again to compute" if self.host.status == "ready" else "press Resume to compute"
            error = f"Cancelled: {again}."
        else:
            self.host.fail(e, "gallery")
            error = f"{type(e).__name__}: {e}"
        return Gallery(
            query=dict(q),
            k=k,
            request=gen,
            item=None,
            proponents=[],
            opponents=[],
            error=error,
            explain="prediction" if explain == "prediction" else "label",
            explained_label=None,
            same_label=False,
        )

    def rebadge(
        self, gallery: Gallery, names: Sequence[str] = (), relabels: Mapping[int, int] | None = None
    ) -> Gallery:
        """``gallery`` with each tile's prediction, self-influence rank, suggested label, badge and new label from
        the arrays and relabels now (the first galleries come before the training predictions, self-influence and
        suggestions): no engine call. ``names``: the class names of the badges' words."""
        ex = self.examples
        with self.lock:
            rank, preds = ex.rank, ex.train_preds
        relabels = relabels or {}

        def again(row: Row) -> Row:
            i = row["index"]
            pred = row["pred"] if preds is None else int(preds[i])
            r = row["rank"] if rank is None else int(rank[i])
            return ex.reviewed({**row, "pred": pred, "rank": r}, relabels, names)

        item = gallery["item"]
        if item is not None and gallery["query"].get("source") == "train":
            item = ex.reviewed(item, relabels, names)
        return {
            **gallery,
            "item": item,
            "proponents": [again(r) for r in gallery["proponents"]],
            "opponents": [again(r) for r in gallery["opponents"]],
        }

    def explained_batch(self, src: str, idx: int, item: Row, explain: str) -> tuple[tuple, int | None]:
        """The query as a batch of one whose label is the one explained, and that label (None: not a class index)."""
        features = self.examples.item(src, idx)
        label, pred = item["label"], item["pred"]
        if explain == "prediction":
            if pred is None:
                raise ValueError(f"the model's prediction for {src} example {idx} is not known: explain='label'.")
            if pred != label:
                features = (*features[:-1], pred)
            return _data.collate_one(features), pred
        return _data.collate_one(features), label

    def _payload(
        self, q: dict, k: int, gen: int, explain: str, names: Sequence[str], relabels: Mapping[int, int]
    ) -> Gallery | None:
        src, idx = self.check_query(q)
        self.fitted.wait()
        if gen != self.generation:
            return None
        ex = self.examples
        item = ex.query_row(src, idx, _codec.DETAIL_SIZE, self.engine.lock)
        if src == "train":
            item = ex.reviewed(item, relabels, names)
        batch, target = self.explained_batch(src, idx, item, explain)
        key = (src, idx, target)  # label == prediction: one cached score row serves both choices
        (pro, pro_scores), (opp, opp_scores) = self.engine.top_k(batch, min(k, ex.n_train), key=key)
        with self.lock:
            rank, preds = ex.rank, ex.train_preds

        def rows(indices: np.ndarray, scores: np.ndarray) -> list[Row]:
            return _codec.topk_rows(
                indices,
                scores,
                ex.train_label,
                image=lambda i: ex.image("train", i),
                rank=rank,
                preds=preds,
                review=lambda row: ex.reviewed(row, relabels, names),
            )

        return Gallery(
            query={"source": "test" if src == "test" else "train", "index": idx},
            k=k,
            request=gen,
            item=item,
            proponents=rows(pro, pro_scores),
            opponents=rows(opp, opp_scores),
            error=None,
            explain="prediction" if explain == "prediction" else "label",
            explained_label=target,
            same_label=item["pred"] is not None and item["pred"] == item["label"],
        )
