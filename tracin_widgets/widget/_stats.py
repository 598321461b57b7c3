"""The explorer's statistics over the training set, pure numpy: top-k, ranks, the table's filters, the
self-influence histogram, ROC and found curve, and how the flags do against the ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._codec import as_numpy

SORT_KEYS = ("rank", "score", "index", "label", "pred", "suggested")
ONLY_VALUES = ("all", "flagged", "disagree", "mislabelled", "suggested", "relabelled")


def top_k(scores: np.ndarray, k: int, largest: bool = True) -> np.ndarray:
    """Indices of the k largest (or smallest) scores, best first, ties by index. O(n) selection + O(k log k) sort."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    key = -s if largest else s
    if k < n:
        part = np.argpartition(key, k - 1)[:k]
        cut = key[part].max()  # include every tie at the cut so the index tie-break is exact
        cand = np.flatnonzero(key <= cut)
    else:
        cand = np.arange(n)
    return cand[np.lexsort((cand, key[cand]))][:k].astype(np.int64)


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices in descending score order, ties broken by index (the rank order; int32 where it fits). The one
    argsort over the training set that the ranks, the table's rank order, the ROC and the found curve share."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order.astype(np.int32) if len(order) < 2**31 else order


def ranks_from_scores(scores: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each example in descending score order (ties broken by index); ``order``: the scores'
    :func:`rank_order` when already known."""
    order = rank_order(scores) if order is None else order
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


def filter_mask(
    scores: np.ndarray,
    *,
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
    """The table's filters as one boolean mask over the training set (see :func:`table_order`): ``only`` is one of
    ``ONLY_VALUES`` (``"suggested"``: rows with a suggested label, ``suggested`` holding -1 where there is none;
    ``"relabelled"``: the indices ``relabelled``)."""
    n = len(scores)
    mask = np.ones(n, dtype=bool)
    if label is not None:
        if labels is None:
            raise ValueError("cannot filter by class before the labels are known.")
        mask &= np.asarray(labels) == int(label)
    if only in ("flagged", "relabelled"):
        fm = np.zeros(n, dtype=bool)
        fl = np.asarray(list(flagged if only == "flagged" else relabelled), dtype=np.int64)
        fm[fl[(fl >= 0) & (fl < n)]] = True
        mask &= fm
    elif only == "suggested":
        if suggested is None:
            raise ValueError("cannot filter by suggested label before the suggestions are computed.")
        mask &= np.asarray(suggested) >= 0
    elif only == "disagree":
        if labels is None or preds is None:
            raise ValueError("cannot filter label != prediction before the predictions are computed.")
        mask &= np.asarray(labels) != np.asarray(preds)
    elif only == "mislabelled":
        if is_mislabelled is None:
            raise ValueError("only='mislabelled' needs is_mislabelled ground truth.")
        mask &= np.asarray(is_mislabelled, dtype=bool)
    if score_range is not None:
        lo, hi = float(score_range[0]), float(score_range[1])
        mask &= (scores >= lo) & (scores <= hi)
    return mask


# ---------------------------------------------------------------------------------------------------------------------
# charts
# ---------------------------------------------------------------------------------------------------------------------
def histogram(scores: np.ndarray, bins: int = 40) -> dict:
    """Histogram of self-influence scores, on a log10 axis when all scores are positive (they are heavy-tailed).

    Returns ``{"counts", "edges", "log"}``; ``edges`` are in score units (not log) so bars map back to a range.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {"counts": [], "edges": [], "log": False}
    log = bool(s.min() > 0 and s.max() / s.min() > 100)
    v = np.log10(s) if log else s
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    if log:
        edges = 10.0**edges
        edges[0], edges[-1] = s.min(), s.max()  # exact ends despite pow rounding
    return {"counts": counts.astype(int).tolist(), "edges": [float(e) for e in edges], "log": log}


def _thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[list[float], list[float]]:
    if len(x) > max_points:
        keep = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(int))
        x, y = x[keep], y[keep]
    return [round(float(v), 6) for v in x], [round(float(v), 6) for v in y]


def roc(
    scores: np.ndarray, is_mislabelled: np.ndarray, max_points: int = 256, order: np.ndarray | None = None
) -> dict | None:
    """ROC of self-influence as a mislabel detector: ``{"fpr", "tpr", "auc"}``, thinned for the wire.

    The points of scikit-learn's ``roc_curve`` (one per distinct score, collinear ones dropped) and its
    ``roc_auc_score`` (the trapezoid under them), computed in numpy from ``order`` (the scores' :func:`rank_order`,
    computed here when None): no second sort of the training set. None when the ground truth has a single class
    (ROC undefined).
    """
    y = np.asarray(is_mislabelled, dtype=bool)
    if y.all() or not y.any():
        return None
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("the ROC needs finite self-influence scores, but some are NaN or infinite.")
    order = rank_order(s) if order is None else order
    ss = s[order]
    last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]  # the last row of each distinct score
    tps = np.cumsum(y[order], dtype=np.int64)[last]
    fps = 1 + last - tps
    if len(fps) > 2:  # drop the points in the middle of a straight segment (roc_curve's drop_intermediate)
        keep = np.flatnonzero(np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True])
        fps, tps = fps[keep], tps[keep]
    fpr = np.r_[0, fps] / fps[-1]
    tpr = np.r_[0, tps] / tps[-1]
    fx, ty = _thin(fpr, tpr, max_points)
    return {"fpr": fx, "tpr": ty, "auc": float(np.trapezoid(tpr, fpr))}


def found_vs_inspected(
    scores: np.ndarray, is_mislabelled: np.ndarray, points: int = 101, order: np.ndarray | None = None
) -> dict | None:
    """Fraction of mislabelled examples found vs fraction inspected in descending self-influence order.

    The TracIn paper's evaluation. ``{"inspected": [...], "found": [...]}``, both in [0, 1], ``points`` samples
    at inspected = 0, 1/(points-1), ..., 1. None when nothing is mislabelled. ``order``: the scores'
    :func:`rank_order` when already known.
    """
    y = np.asarray(is_mislabelled, dtype=bool)
    n, total = len(y), int(y.sum())
    if total == 0 or n == 0:
        return None
    order = rank_order(scores) if order is None else order
    inspected = np.linspace(0.0, 1.0, points)
    m = np.round(inspected * n).astype(int)
    cum = np.cumsum(y[order], dtype=np.int64)  # cum[m - 1]: found after inspecting m examples
    found = np.where(m > 0, cum[np.maximum(m - 1, 0)], 0) / total
    return {"inspected": [round(float(v), 6) for v in inspected], "found": [round(float(v), 6) for v in found]}


def flag_metrics(flagged: Sequence[int], n_train: int, is_mislabelled: np.ndarray | None) -> dict:
    """How the user's flags do against the ground truth: counts, precision, recall, and the (inspected, found) point.

    Without ground truth only ``n_flagged`` / ``n_train`` are filled.
    """
    out: dict[str, Any] = {"n_flagged": len(flagged), "n_train": int(n_train)}
    if is_mislabelled is None:
        return out
    y = np.asarray(is_mislabelled, dtype=bool)
    fl = np.asarray(list(flagged), dtype=np.int64)
    hits = int(y[fl].sum()) if fl.size else 0
    total = int(y.sum())
    out.update(
        n_mislabelled=total,
        true_positives=hits,
        precision=(hits / len(fl)) if len(fl) else None,
        recall=(hits / total) if total else None,
        inspected=(len(fl) / n_train) if n_train else None,
    )
    return out


def mislabelled_mask(is_mislabelled: Any, n_train: int) -> np.ndarray:
    """Accept a boolean mask of length n_train (bool / 0-1 values) or a collection of mislabelled indices."""
    a = (
        as_numpy(is_mislabelled)
        if not isinstance(is_mislabelled, (set, frozenset))
        else np.array(sorted(is_mislabelled))
    )
    a = np.asarray(a).reshape(-1)
    if a.dtype == bool or (len(a) == n_train and np.isin(a, (0, 1)).all()):
        if len(a) != n_train:
            raise ValueError(f"is_mislabelled has {len(a)} entries but the training set has {n_train} examples.")
        return a.astype(bool)
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError("is_mislabelled must be a boolean mask of length n_train or a list of training indices.")
    idx = a.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_train):
        raise ValueError(f"is_mislabelled holds indices outside [0, {n_train}).")
    mask = np.zeros(n_train, dtype=bool)
    mask[idx] = True
    return mask
