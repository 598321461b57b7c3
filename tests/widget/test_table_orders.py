"""The table's cached sort orders: every sort key, direction and filter gives the same rows as a fresh
``table_order`` (the oracle); a new filter or page never sorts again; flags and new arrays are never served stale."""

from __future__ import annotations

import itertools
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from tracin_widgets.widget import _stats
from tracin_widgets.widget._table import Table

from .oracle import table_order


def examples(n: int = 500, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=n), 1)  # many ties: the tie-breaking must match too
    labels = rng.integers(0, 4, n)
    preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))
    suggested = np.where(rng.random(n) < 0.2, (labels + 1) % 4, -1)
    return SimpleNamespace(
        suggestions=SimpleNamespace(labels=suggested, count=int((suggested >= 0).sum())),
        train_probs=None,
        train_label=lambda i: int(labels[i]),
        image=lambda split, i: None,
        reviewed=lambda row, relabels, names: row,
        lock=threading.RLock(),
        self_infl=scores,
        rank=_stats.ranks_from_scores(scores),
        train_labels=labels,
        train_preds=preds,
        truth=rng.random(n) < 0.1,
    )


KEYS = list(
    itertools.product(
        _stats.SORT_KEYS,
        (False, True),
        (None, 2),
        _stats.ONLY_VALUES,
        (None, (-0.5, 0.8)),
    )
)


def fresh(ex: SimpleNamespace, key: tuple, flagged: list[int]) -> np.ndarray:
    sort, descending, label, only, score_range = key
    return table_order(
        ex.self_infl,
        sort=sort,
        descending=descending,
        labels=ex.train_labels,
        preds=ex.train_preds,
        label=label,
        only=only,
        flagged=flagged,
        is_mislabelled=ex.truth,
        score_range=score_range,
        suggested=None if ex.suggestions is None else ex.suggestions.labels,
    )


def test_cached_orders_equal_a_fresh_sort_for_every_key_direction_and_filter():
    ex = examples()
    table = Table(ex)
    flagged = [3, 17, 250, 499, 0]
    for _ in range(2):  # the second round is served from the caches
        for key in KEYS:
            np.testing.assert_array_equal(table.order(key, flagged), fresh(ex, key, flagged), err_msg=str(key))


def test_a_new_filter_or_page_does_not_sort_again(monkeypatch):
    ex = examples()
    table = Table(ex)
    for sort, descending in itertools.product(_stats.SORT_KEYS, (False, True)):
        table.order((sort, descending, None, "all", None), [])

    def no_sort(*a, **kw):
        raise AssertionError("sorted again")

    monkeypatch.setattr(np, "argsort", no_sort)
    for key in KEYS:
        table.order(key, [1, 2])
    reply = table.rows({"kind": "rows", "id": 1, "offset": 50, "limit": 5, "sort": "label", "only": "disagree"}, [])
    monkeypatch.undo()
    want = fresh(ex, ("label", False, None, "disagree", None), [])
    assert [r["index"] for r in reply["rows"]] == want[50:55].tolist() and reply["total"] == len(want)


def test_new_flags_and_new_arrays_are_never_served_stale():
    ex = examples()
    table = Table(ex)
    key = ("rank", False, None, "flagged", None)
    assert table.order(key, [5, 6]).tolist() == fresh(ex, key, [5, 6]).tolist()
    table.forget_orders(flagged_only=True)  # what the explorer does when the flags change
    np.testing.assert_array_equal(table.order(key, [7]), fresh(ex, key, [7]))
    by_pred = ("pred", True, None, "disagree", None)
    table.order(by_pred, [])
    new = examples(seed=1)
    ex.self_infl, ex.rank, ex.train_preds = new.self_infl, new.rank, new.train_preds
    table.forget_orders()  # new scores and predictions
    for k in (key, by_pred, ("score", True, 1, "all", None)):
        np.testing.assert_array_equal(table.order(k, [7]), fresh(ex, k, [7]))


def test_cached_orders_are_int32_arrays_not_python_objects():
    ex = examples()
    table = Table(ex)
    table.order(("label", True, None, "all", None), [])
    assert all(isinstance(o, np.ndarray) and o.dtype == np.int32 for o in table._sorted.values())


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (("nope", False, None, "all", None), "sort must be one of"),
        (("rank", False, None, "nope", None), "only must be one of"),
    ],
)
def test_bad_keys_are_refused(key, match):
    with pytest.raises(ValueError, match=match):
        Table(examples()).order(key, [])


def test_sorting_by_prediction_before_the_predictions_is_refused():
    ex = examples()
    ex.train_preds = None
    with pytest.raises(ValueError, match="cannot sort by 'pred' before the predictions are computed"):
        Table(ex).order(("pred", False, None, "all", None), [])
    with pytest.raises(ValueError, match="cannot filter label != prediction before the predictions"):
        Table(ex).order(("rank", False, None, "disagree", None), [])


@pytest.mark.parametrize("top", [3, 2**15 - 1, 2**15, 40_000])
def test_sorts_by_class_equal_a_fresh_sort_whatever_the_class_indices(top):
    """Class indices that fit 16 bits are sorted as int16 (a radix sort), others as they are: the same rows."""
    ex = examples()
    rng = np.random.default_rng(top)
    ex.train_labels = rng.integers(0, top + 1, len(ex.self_infl))
    ex.train_labels[:3] = [0, top, top]
    table = Table(ex)
    for key in [("label", d, None, "all", None) for d in (False, True)] + [("pred", True, 2, "disagree", None)]:
        np.testing.assert_array_equal(table.order(key, []), fresh(ex, key, []), err_msg=str(key))
