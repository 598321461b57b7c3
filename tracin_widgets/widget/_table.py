"""The self-influence table (rows, sort order, filters), its statistics (histogram, ROC, flags) and the test strip:
pages of rows built from what ``Examples`` holds."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _codec, _stats
from ._examples import Examples
from ._protocols import DetailReply, DetailRequest, RowsReply, RowsRequest, StripPage
from ._suggest import NONE

FILTERED_CACHE = 4  # filtered orders of recent table queries (the unfiltered sort orders are all kept)


def order_dtype(n: int) -> type:
    """int32 indices where they fit: half the memory of int64 for each cached order."""
    return np.int32 if n < 2**31 else np.int64


def rank_order(scores: np.ndarray, rank: np.ndarray | None) -> np.ndarray:
    """Every training index in rank order: ``rank`` inverted (no argsort) when it ranks ``scores``, else sorted."""
    n = len(scores)
    if rank is not None and len(rank) == n:  # the rank already holds the sort: invert it, no new argsort
        by_rank: np.ndarray = np.empty(n, order_dtype(n))
        by_rank[np.asarray(rank) - 1] = np.arange(n, dtype=by_rank.dtype)
        return by_rank
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").astype(order_dtype(n))


class Table:
    """Builds the table's pages (``rows`` requests), the ``stats`` and the ``test_strip`` traits.

    The rank order never changes while the scores stay, so each sort key and direction is sorted once (argsort
    over all rows, kept as an int32 array) and a filter is a boolean mask over that order; the few most recent
    filtered orders are kept for paging. :meth:`forget_orders` drops them when what they sort or filter by changes.
    """

    def __init__(self, examples: Examples):
        self.examples = examples
        self._sorted: dict[tuple[str, bool], np.ndarray] = {}  # (sort, descending) -> every row, in that order
        self._orders: OrderedDict = OrderedDict()  # full query key -> the filtered order (LRU)
        self._generation = 0  # bumped by forget_orders: an order computed from older arrays is not stored
        self._score_stats: tuple | None = None  # (scores, truth, their charts): computed once per scores array

    def forget_orders(self, flagged_only: bool = False) -> None:
        """Drop cached orders: those that filter by the flags or the relabels (``flagged_only``) or all (new scores,
        predictions or suggestions)."""
        with self.examples.lock:
            self._generation += 1
            if flagged_only:
                self._orders = OrderedDict(
                    (k, v) for k, v in self._orders.items() if k[3] not in ("flagged", "relabelled")
                )
            else:
                self._orders = OrderedDict()
                self._sorted = {}

    def _sort(
        self, sort: str, descending: bool, scores: np.ndarray, rank: np.ndarray | None, key: Any, generation: int
    ) -> np.ndarray:
        """Every training index in ``sort`` order (cached; ``key``: the labels or predictions it sorts by). Ties are
        broken by rank. Stored only if no ``forget_orders`` came since ``generation``."""
        cached = self._sorted.get((sort, descending))
        if cached is not None:
            return cached
        n = len(scores)
        by_rank = self._sorted.get(("rank", False))
        if by_rank is None:
            by_rank = rank_order(scores, rank)
        if sort in ("rank", "score"):
            order = by_rank if (sort == "rank") != descending else by_rank[::-1]
        elif sort == "index":
            order = np.arange(n, dtype=order_dtype(n))
            order = order[::-1] if descending else order
        else:
            if key is None:
                what = "suggestions" if sort == "suggested" else "predictions"
                raise ValueError(f"cannot sort by {sort!r} before the {what} are computed.")
            k = np.asarray(key)[by_rank]
            if k.size and np.issubdtype(k.dtype, np.integer) and -(2**15) < k.min() and k.max() < 2**15:
                k = k.astype(np.int16)  # class indices: numpy's stable sort of 16-bit ints is a radix sort (4x faster)
            order = by_rank[np.argsort(-k if descending else k, kind="stable")]
        with self.examples.lock:
            if self._generation == generation:
                self._sorted[("rank", False)] = by_rank
                self._sorted[(sort, descending)] = order
        return order

    def order(self, key: tuple, flagged: Sequence[int], relabelled: Sequence[int] = ()) -> np.ndarray:
        """The table's rows for the query ``key`` = (sort, descending, label, only, score_range): the filtered
        training indices in that sort order (ties by rank), from the cached sort orders."""
        ex = self.examples
        with ex.lock:
            scores, rank = ex.self_infl, ex.rank
            labels, preds, truth = ex.train_labels, ex.train_preds, ex.truth
            suggested = None if ex.suggestions is None else ex.suggestions.labels
            generation = self._generation
            hit = self._orders.get(key)
            if hit is not None:
                self._orders.move_to_end(key)
                return hit
        sort, descending, label, only, score_range = key
        if sort not in _stats.SORT_KEYS:
            raise ValueError(f"sort must be one of {_stats.SORT_KEYS}, got {sort!r}.")
        if only not in _stats.ONLY_VALUES:
            raise ValueError(f"only must be one of {_stats.ONLY_VALUES}, got {only!r}.")
        if scores is None:
            raise ValueError("the table has no order before the self-influence scores are computed.")
        by: Any = {"label": labels, "pred": preds}.get(sort)
        if sort == "suggested" and suggested is not None:  # rows without a suggestion last, either way
            by = suggested if descending else np.where(suggested == NONE, np.iinfo(np.int16).max - 1, suggested)
        order = self._sort(sort, descending, scores, rank, by, generation)
        if label is None and only == "all" and score_range is None:
            return order
        mask = _stats.filter_mask(
            scores,
            labels=labels,
            preds=preds,
            label=label,
            only=only,
            flagged=flagged,
            is_mislabelled=truth,
            score_range=score_range,
            suggested=suggested,
            relabelled=relabelled,
        )
        out = order[mask[order]]
        with ex.lock:
            if self._generation == generation:
                self._orders[key] = out
            while len(self._orders) > FILTERED_CACHE:
                self._orders.popitem(last=False)
        return out

    @staticmethod
    def key(msg: Mapping[str, Any]) -> tuple:
        """A rows request's (sort, descending, label, only, score_range): the cache key of its order."""
        label, sr = msg.get("label"), msg.get("score_range")
        return (
            msg.get("sort", "rank"),
            bool(msg.get("descending", False)),
            None if label is None else int(label),
            msg.get("only", "all"),
            None if sr is None else tuple(float(v) for v in sr),
        )

    def rows(
        self,
        msg: RowsRequest,
        flagged: Sequence[int],
        relabels: Mapping[int, int] | None = None,
        names: Sequence[str] = (),
    ) -> RowsReply:
        """One page of the table: ``msg["limit"]`` rows (at most 500) from ``msg["offset"]`` in the requested order
        (``relabels``: the rows' new labels; ``names``: the class names of their badges)."""
        ex = self.examples
        relabels = relabels or {}
        rid: Any = msg.get("id")  # echoed back as the page sent it
        offset = max(0, int(msg.get("offset", 0)))
        limit = min(500, max(1, int(msg.get("limit", 50))))
        with ex.lock:
            scores, rank = ex.self_infl, ex.rank
            preds, probs = ex.train_preds, ex.train_probs
        if scores is None or rank is None:  # set together
            return RowsReply(kind="rows", id=rid, pending=True, total=0, offset=offset, rows=[])
        order = self.order(self.key(msg), flagged, list(relabels))
        rows = [
            ex.reviewed(
                _codec.item_row(
                    i,
                    ex.train_label(i),
                    score=scores[i],
                    rank=rank[i],
                    pred=None if preds is None else preds[i],
                    prob=None if probs is None else probs[i],
                    image=ex.image("train", i),
                ),
                relabels,
                names,
            )
            for i in order[offset : offset + limit].tolist()
        ]
        return RowsReply(kind="rows", id=rid, pending=False, total=int(len(order)), offset=offset, rows=rows)

    def detail(
        self,
        msg: DetailRequest,
        lock: threading.Lock,
        relabels: Mapping[int, int] | None = None,
        names: Sequence[str] = (),
    ) -> DetailReply:
        """One training example, larger (the row the page opened); ``lock`` guards the model's forward pass."""
        n_train, index = self.examples.n_train, msg.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(
                f"detail request: index must be an int training index in [0, {n_train}), got "
                f"{type(index).__name__} {index!r}: send the example's integer index."
            )
        if not 0 <= index < n_train:
            raise ValueError(
                f"detail request: index {index} is outside the training set [0, {n_train}): send the "
                "index of a training example."
            )
        row = self.examples.query_row("train", index, _codec.DETAIL_SIZE, lock)
        row = self.examples.reviewed(row, relabels or {}, names)
        rid: Any = msg.get("id")  # echoed back as the page sent it
        return DetailReply(kind="detail", id=rid, item={**row, "evidence": None})

    def stats(self, flagged: Sequence[int], previous: dict, flags_only: bool = False) -> dict:
        """The ``stats`` trait: flag metrics, and (once self-influence is known) its histogram, ROC and found curve.
        ``flags_only`` updates only the flag metrics of ``previous``."""
        ex = self.examples
        flags = _stats.flag_metrics(list(flagged), ex.n_train, ex.truth)
        if flags_only and previous:
            return {**previous, "flags": flags}
        with ex.lock:
            s, rank, truth, has_preds = ex.self_infl, ex.rank, ex.truth, ex.train_preds is not None
            cached = self._score_stats
            estimate = None if ex.suggestions is None else ex.suggestions.count
        out: dict[str, Any] = {
            "flags": flags,
            "has_preds": has_preds,
            "ready": s is not None,
            "estimated_mislabelled": estimate,
        }
        if s is None:
            return out
        if cached is not None and cached[0] is s and cached[1] is truth:  # the same arrays: the same charts
            return {**out, **cached[2]}
        charts: dict[str, Any] = {"histogram": _stats.histogram(s)}
        charts["score_min"], charts["score_max"] = float(np.min(s)), float(np.max(s))
        if truth is not None:  # both walk the rank order, inverted from the ranks: no new sort of the training set
            order = rank_order(s, rank)
            charts["roc"] = _stats.roc(s, truth, order=order)
            charts["found"] = _stats.found_vs_inspected(s, truth, order=order)
        with ex.lock:
            self._score_stats = (s, truth, charts)
        return {**out, **charts}

    def test_strip(self, page: int, page_size: int, misclassified_only: bool) -> StripPage:
        """The ``test_strip`` trait: one page of test examples (only misclassified ones when asked and known)."""
        ex = self.examples
        with ex.lock:
            preds, labels, probs = ex.test_preds, ex.test_labels, ex.test_probs
        filtered = bool(misclassified_only and preds is not None)
        pos = np.flatnonzero(preds != labels) if filtered else np.arange(len(ex.test_ids))
        size = max(1, int(page_size))
        n_pages = max(1, -(-len(pos) // size))
        page = min(max(0, int(page)), n_pages - 1)
        items = []
        for p in pos[page * size : (page + 1) * size].tolist():
            idx = int(ex.test_ids[p])
            items.append(
                _codec.item_row(
                    idx,
                    int(labels[p]) if labels is not None else ex.test_label(idx),
                    pred=None if preds is None else int(preds[p]),
                    prob=None if probs is None else probs[p],
                    image=ex.image("test", idx),
                )
            )
        return StripPage(
            page=page,
            n_pages=n_pages,
            total=int(len(pos)),
            page_size=size,
            filtered=filtered,
            has_preds=preds is not None,
            items=items,
        )
