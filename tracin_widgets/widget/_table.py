"""The self-influence table (rows, sort order, filters), its statistics (histogram, ROC, flags) and the test strip:
pages of rows built from what ``Examples`` holds."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _payload
from ._examples import Examples
from ._protocols import DetailReply, DetailRequest, RowsReply, RowsRequest, StripPage

ORDER_CACHE = 32  # sort orders of recent table queries


class Table:
    """Builds the table's pages (``rows`` requests), the ``stats`` and the ``test_strip`` traits.

    Sort orders are cached by query; :meth:`forget_orders` drops them when what they sort by changes.
    """

    def __init__(self, examples: Examples):
        self.examples = examples
        self._orders: dict = {}

    def forget_orders(self, flagged_only: bool = False) -> None:
        """Drop cached orders: those that filter by the flags (``flagged_only``) or all (new scores or predictions)."""
        with self.examples.lock:
            if flagged_only:
                self._orders = {k: v for k, v in self._orders.items() if k[3] != "flagged"}
            else:
                self._orders = {}

    def rows(self, msg: RowsRequest, flagged: Sequence[int]) -> RowsReply:
        """One page of the table: ``msg["limit"]`` rows (at most 500) from ``msg["offset"]`` in the requested order."""
        ex = self.examples
        rid = msg.get("id")
        offset = max(0, int(msg.get("offset", 0)))
        limit = min(500, max(1, int(msg.get("limit", 50))))
        with ex.lock:
            scores, rank = ex.self_infl, ex.rank
            labels, preds, probs = ex.train_labels, ex.train_preds, ex.train_probs
        if scores is None:
            return RowsReply(kind="rows", id=rid, pending=True, total=0, offset=offset, rows=[])
        label, sr = msg.get("label"), msg.get("score_range")
        key = (
            msg.get("sort", "rank"),
            bool(msg.get("descending", False)),
            None if label is None else int(label),
            msg.get("only", "all"),
            None if sr is None else tuple(float(v) for v in sr),
        )
        order = self._orders.get(key)
        if order is None:
            order = _payload.table_order(
                scores,
                sort=key[0],
                descending=key[1],
                labels=labels,
                preds=preds,
                label=key[2],
                only=key[3],
                flagged=flagged,
                is_mislabelled=ex.truth,
                score_range=key[4],
            )
            with ex.lock:
                if len(self._orders) > ORDER_CACHE:
                    self._orders.clear()
                self._orders[key] = order
        rows = [
            _payload.item_row(
                i,
                ex.train_label(i),
                score=scores[i],
                rank=rank[i],
                pred=None if preds is None else preds[i],
                prob=None if probs is None else probs[i],
                image=ex.image("train", i),
            )
            for i in order[offset : offset + limit].tolist()
        ]
        return RowsReply(kind="rows", id=rid, pending=False, total=int(len(order)), offset=offset, rows=rows)

    def detail(self, msg: DetailRequest, lock: threading.Lock) -> DetailReply:
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
        item = self.examples.query_row("train", index, _payload.DETAIL_SIZE, lock)
        return DetailReply(kind="detail", id=msg.get("id"), item=item)

    def stats(self, flagged: Sequence[int], previous: dict, flags_only: bool = False) -> dict:
        """The ``stats`` trait: flag metrics, and (once self-influence is known) its histogram, ROC and found curve.
        ``flags_only`` updates only the flag metrics of ``previous``."""
        ex = self.examples
        flags = _payload.flag_metrics(list(flagged), ex.n_train, ex.truth)
        if flags_only and previous:
            return {**previous, "flags": flags}
        with ex.lock:
            s, has_preds = ex.self_infl, ex.train_preds is not None
        out: dict[str, Any] = {"flags": flags, "has_preds": has_preds, "ready": s is not None}
        if s is not None:
            out["histogram"] = _payload.histogram(s)
            out["score_min"], out["score_max"] = float(np.min(s)), float(np.max(s))
            if ex.truth is not None:
                out["roc"] = _payload.roc(s, ex.truth)
                out["found"] = _payload.found_vs_inspected(s, ex.truth)
        return out

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
                _payload.item_row(
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
