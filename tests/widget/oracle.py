"""The tests' oracle of the self-influence table: its whole query logic (filter, then sort) computed afresh from the
arrays, with no cache. ``Table.order`` must give exactly these rows for every sort key, direction and filter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracin_widgets.widget._stats import ONLY_VALUES, SORT_KEYS, filter_mask


def table_order(
    scores: np.ndarray,
    *,
    sort: str = "rank",
    descending: bool = False,
    labels: np.ndarray | None = None,
    preds: np.ndarray | None = None,
    label: int | None = None,
    only: str = "all",
    flagged: Sequence[int] = (),
    is_mislabelled: np.ndarray | None = None,
    score_range: Sequence[float] | None = None,
    suggested: np.ndarray | None = None,
    relabelled: Sequence[int] = (),
) -> np.ndarray:
    """Training indices of the self-influence table, filtered and sorted (the table's whole query logic).

    ``sort="rank"`` ascending = most self-influential first (the TracIn reading order). Ties are broken by rank.
    ``only``: ``"all"``, ``"flagged"``, ``"disagree"`` (label != prediction), ``"mislabelled"`` (ground truth),
    ``"suggested"`` (``suggested`` >= 0) or ``"relabelled"`` (in ``relabelled``). ``sort="suggested"``: by suggested
    label, rows without one (-1) last in either direction.
    ``score_range``: ``[lo, hi]`` inclusive (a histogram bar).
    """
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {SORT_KEYS}, got {sort!r}.")
    if only not in ONLY_VALUES:
        raise ValueError(f"only must be one of {ONLY_VALUES}, got {only!r}.")
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    by_rank = np.argsort(-scores, kind="stable")  # rank order
    if sort in ("rank", "score"):
        order = by_rank if (sort == "rank") != descending else by_rank[::-1]
    elif sort == "index":
        order = np.arange(n)[::-1] if descending else np.arange(n)
    elif sort == "suggested":
        if suggested is None:
            raise ValueError("cannot sort by 'suggested' before the suggestions are computed.")
        pos_of = {int(i): p for p, i in enumerate(by_rank)}
        sign = -1 if descending else 1
        order = np.array(
            sorted(range(n), key=lambda i: (bool(suggested[i] < 0), sign * int(suggested[i]), pos_of[i])), dtype=int
        )
    else:
        key = labels if sort == "label" else preds
        if key is None:
            raise ValueError(f"cannot sort by {sort!r} before the predictions are computed.")
        k = np.asarray(key)[by_rank]
        pos = np.argsort(-k if descending else k, kind="stable")
        order = by_rank[pos]
    mask = filter_mask(
        scores,
        labels=labels,
        preds=preds,
        label=label,
        only=only,
        flagged=flagged,
        is_mislabelled=is_mislabelled,
        score_range=score_range,
        suggested=suggested,
        relabelled=relabelled,
    )
    return order[mask[order]]
