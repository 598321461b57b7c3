"""The one Python -> JS codec of the explorer: pure functions on numpy (torch tensors are accepted duck-typed).

Nothing here imports anywidget, ipywidgets or torch. Images travel as ``{"data": bytes, "shape": [h, w, c]}``
(uint8, row-major HWC, c in {1, 3, 4}); inside traits ipywidgets ships the bytes as binary buffers, inside custom
messages :func:`pack_buffers` swaps them for ``{"buffer": i}`` references plus a buffer list.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._protocols import Row

THUMB_SIZE = 64  # longest side of gallery / table thumbnails (smaller images are sent as they are)
DETAIL_SIZE = 256  # longest side of the details view image
SORT_KEYS = ("rank", "score", "index", "label", "pred")
ONLY_VALUES = ("all", "flagged", "disagree", "mislabelled")


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, duck-typed
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "dim")


def as_hwc(x: Any) -> np.ndarray:
    """A CHW / HW / HWC image (tensor or array, any float or int dtype) as a float HWC array.

    Torch tensors are read as CHW (torch's convention) unless only their last axis looks like channels;
    numpy arrays as HWC unless only their first axis does. A flat vector of a square length (e.g. sklearn's
    64-pixel digits) becomes a square grayscale image.
    """
    torch_like = _is_torch(x)
    a = _to_numpy(x)
    if a.dtype == bool:
        a = a.astype(np.float32)
    a = np.squeeze(a) if a.ndim > 3 else a
    if a.ndim == 1:
        side = math.isqrt(a.size)
        if side * side == a.size and side > 0:
            a = a.reshape(side, side)
        else:
            a = a.reshape(1, -1)
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"cannot turn an array of shape {a.shape} into an image; pass to_image=<tensor -> HxWxC>.")
    first, last = a.shape[0] in (1, 3, 4), a.shape[-1] in (1, 3, 4)
    chw = first and (torch_like or not last)
    if chw:
        a = np.moveaxis(a, 0, -1)
    return a


def minmax_image(x: Any) -> np.ndarray:
    """The default ``to_image``: per-image min-max scaling to uint8 HxWxC (works for normalised inputs)."""
    a = as_hwc(x).astype(np.float64)
    lo, hi = float(np.nanmin(a)) if a.size else 0.0, float(np.nanmax(a)) if a.size else 0.0
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        scaled = np.zeros_like(a)
    else:
        scaled = (a - lo) / (hi - lo)
    return np.ascontiguousarray(np.clip(np.round(np.nan_to_num(scaled) * 255), 0, 255).astype(np.uint8))


def coerce_image(img: Any) -> np.ndarray:
    """Validate what a ``to_image`` hook returned: HxWxC/HxW, uint8 or float in [0, 1] -> uint8 HxWxC."""
    a = _to_numpy(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"to_image must return an HxWxC (C in 1, 3, 4) or HxW array, got shape {tuple(a.shape)}.")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise ValueError(f"to_image must return uint8 or floats in [0, 1], got dtype {a.dtype}.")
    a = np.nan_to_num(a.astype(np.float64))
    return np.ascontiguousarray(np.clip(np.round(a * 255), 0, 255).astype(np.uint8))


def resize_max(img: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink (never enlarge) a uint8 HxWxC image so that its longest side is at most ``max_side``.

    Integer factors use block means (good for photos); the remainder uses nearest sampling.
    """
    h, w = img.shape[:2]
    side = max(h, w)
    if side <= max_side:
        return img
    f = math.ceil(side / max_side)
    hh, ww = (h // f) * f, (w // f) * f
    if hh and ww:
        blocks = img[:hh, :ww].reshape(hh // f, f, ww // f, f, img.shape[2]).astype(np.float32)
        img = np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        rows = np.minimum((np.arange(max(1, round(h * s))) / s).astype(int), h - 1)
        cols = np.minimum((np.arange(max(1, round(w * s))) / s).astype(int), w - 1)
        img = img[rows][:, cols]
    return np.ascontiguousarray(img)


def encode_image(x: Any, to_image: Callable[[Any], Any] | None = None, max_side: int = THUMB_SIZE) -> dict:
    """A dataset feature tensor -> ``{"data": bytes, "shape": [h, w, c]}`` (uint8 HWC, longest side <= max_side)."""
    img = coerce_image(to_image(x)) if to_image is not None else minmax_image(x)
    img = resize_max(img, max_side)
    return {"data": img.tobytes(), "shape": [int(s) for s in img.shape]}


def decode_image(payload: dict) -> np.ndarray:
    """Inverse of :func:`encode_image` (tests, debugging)."""
    return np.frombuffer(bytes(payload["data"]), dtype=np.uint8).reshape(payload["shape"])


def pack_buffers(obj: Any) -> tuple[Any, list[bytes]]:
    """Replace every ``{"data": bytes, "shape": ...}`` image inside ``obj`` by ``{"buffer": i, "shape": ...}``.

    For custom messages (``Widget.send(content, buffers)``), which do not extract nested buffers themselves.
    """
    buffers: list[bytes] = []

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            if "data" in o and isinstance(o["data"], (bytes, bytearray, memoryview)):
                buffers.append(bytes(o["data"]))
                return {**{k: v for k, v in o.items() if k != "data"}, "buffer": len(buffers) - 1}
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        return o

    return walk(obj), buffers


# ---------------------------------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def item_row(
    index: int,
    label: int | None,
    *,
    score: float | None = None,
    pred: int | None = None,
    prob: float | None = None,
    rank: int | None = None,
    image: dict | None = None,
    badge: str | None = None,
) -> Row:
    """One tile / table row (``_protocols.Row``). Keys are stable: the JS reads exactly these."""
    return {
        "index": int(index),
        "label": None if label is None else int(label),
        "pred": None if pred is None else int(pred),
        "prob": _num(prob),
        "score": _num(score),
        "rank": None if rank is None else int(rank),
        "badge": badge,
        "image": image,
    }


BADGE_TOP_PERCENT = 5
"""A gallery tile gets a badge when its self-influence rank is in this top percentage of the training set."""


def badge_rank_cutoff(n_train: int, percent: float = BADGE_TOP_PERCENT) -> int:
    """The largest self-influence rank (1 = highest) inside the top ``percent`` % of ``n_train`` examples."""
    return max(1, math.ceil(n_train * percent / 100)) if n_train > 0 else 0


def training_badge(
    label: int | None,
    pred: int | None,
    rank: int | None,
    n_train: int,
    name: Callable[[int], str] = str,
) -> str | None:
    """Why a training example deserves a second look, in words (None: no reason).

    About the example itself, whatever the query: its label differs from the model's own prediction for it, and/or
    its self-influence (how much it pulls on its own loss; high for mislabelled or unusual examples) is in the top
    ``BADGE_TOP_PERCENT`` %. ``name`` turns a class index into its displayed name.
    """
    reasons = []
    if label is not None and pred is not None and label != pred:
        reasons.append(f"its label {name(label)} differs from the model's prediction for it ({name(pred)})")
    if rank is not None and n_train > 0 and rank <= badge_rank_cutoff(n_train):
        reasons.append(f"its self-influence is in the top {BADGE_TOP_PERCENT}% (rank {rank:,} of {n_train:,})")
    return "; ".join(reasons) if reasons else None


def topk_rows(
    indices: Sequence[int],
    scores: Sequence[float],
    labels: Callable[[int], int | None],
    *,
    image: Callable[[int], dict],
    rank: np.ndarray | None = None,
    preds: np.ndarray | None = None,
    name: Callable[[int], str] = str,
) -> list[Row]:
    """Gallery rows for one query from the engine's (indices, scores) of that query, with each training example's
    badge (``training_badge``: from its own label, prediction and self-influence rank)."""
    rows = []
    for i, s in zip(
        np.asarray(indices).reshape(-1).tolist(), np.asarray(scores, dtype=np.float64).reshape(-1), strict=False
    ):
        lab = labels(i)
        pred = None if preds is None else int(preds[i])
        r = None if rank is None else int(rank[i])
        n_train = 0 if rank is None else len(rank)
        rows.append(
            item_row(
                i,
                lab,
                score=s,
                pred=pred,
                rank=r,
                image=image(i),
                badge=training_badge(lab, pred, r, n_train, name),
            )
        )
    return rows


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
) -> np.ndarray:
    """The table's filters as one boolean mask over the training set (see :func:`table_order`)."""
    n = len(scores)
    mask = np.ones(n, dtype=bool)
    if label is not None:
        if labels is None:
            raise ValueError("cannot filter by class before the labels are known.")
        mask &= np.asarray(labels) == int(label)
    if only == "flagged":
        fm = np.zeros(n, dtype=bool)
        fl = np.asarray(list(flagged), dtype=np.int64)
        fm[fl[(fl >= 0) & (fl < n)]] = True
        mask &= fm
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
) -> np.ndarray:
    """Training indices of the self-influence table, filtered and sorted (the table's whole query logic).

    ``sort="rank"`` ascending = most self-influential first (the TracIn reading order). Ties are broken by rank.
    ``only``: ``"all"``, ``"flagged"``, ``"disagree"`` (label != prediction) or ``"mislabelled"`` (ground truth).
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
    )
    return order[mask[order]]


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
        _to_numpy(is_mislabelled)
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
