"""Suggested labels, pure numpy: the checkpoints' average prediction of every training row against its label.

Per training row ``P̄`` is the mean over the checkpoints of the model's softmax probabilities. The suggested label is
``argmax(P̄)`` where it differs from the given label (``-1``: none); the number of rows with a suggestion estimates
how many labels are wrong. Measured on digits with 10% and 20% flipped labels (``benchmarks/review.py``): the rule
singles out flipped rows with a precision of about 0.9 and the count is within a few percent of the truth, where the
last checkpoint alone misses what the model has memorised by the end of training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

NONE = -1  # no suggestion


@dataclass(frozen=True)
class Suggestions:
    """What the checkpoints say about each training row (arrays of ``n_train`` rows, replaced whole, never edited):
    one scalar per row, so that a training set of millions of rows costs a few bytes per row.

    ``labels``: the suggested label (``NONE`` where the average prediction agrees with the given label);
    ``p_given`` / ``p_suggested``: ``P̄`` of the given / suggested label (NaN where there is no suggestion);
    ``checkpoints``: the checkpoints' names (file names), in the engine's order.
    """

    labels: np.ndarray  # (n,) int64
    p_given: np.ndarray  # (n,) float32
    p_suggested: np.ndarray  # (n,) float32
    checkpoints: tuple[str, ...]

    @property
    def count(self) -> int:
        """The number of rows with a suggestion: the estimate of how many labels are wrong."""
        return int(np.count_nonzero(self.labels != NONE))


def check_labels(labels: np.ndarray, width: int) -> str | None:
    """Why ``labels`` cannot be compared with ``width`` class probabilities (None when they can)."""
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return "the training labels are not one int class index per row"
    if labels.size and (labels.min() < 0 or labels.max() >= width):
        return f"the training labels are not all class indices in [0, {width})"
    return None


def from_checkpoints(probabilities: Iterable[tuple[str, np.ndarray]], labels: np.ndarray) -> Suggestions:
    """The suggestions from each checkpoint's ``(n, C)`` softmax probabilities (``(checkpoint name, probs)`` per
    checkpoint, in order; one array at a time is read)."""
    n = len(labels)
    rows = np.arange(n)
    total: np.ndarray | None = None
    names: list[str] = []
    for name, p in probabilities:
        p = np.asarray(p, dtype=np.float32)
        if p.ndim != 2 or len(p) != n:
            raise ValueError(f"checkpoint {name}: expected ({n}, classes) probabilities, got shape {p.shape}.")
        total = p.astype(np.float64) if total is None else total + p
        names.append(name)
    if total is None:
        raise ValueError("no checkpoint gave probabilities: the suggestions need at least one.")
    mean = total / len(names)
    best = mean.argmax(axis=1)
    has = best != labels
    return Suggestions(
        labels=np.where(has, best, NONE).astype(np.int64),
        p_given=mean[rows, labels].astype(np.float32),
        p_suggested=np.where(has, mean[rows, best], np.nan).astype(np.float32),
        checkpoints=tuple(names),
    )


def evidence(probs: np.ndarray, label: int, suggested: int) -> tuple[list[float], list[float] | None]:
    """One row's per-checkpoint probabilities ``(K, C)`` as the evidence of its suggestion: ``P_c(given)`` and
    ``P_c(suggested)`` (None without a suggestion)."""
    given = [float(v) for v in probs[:, label]]
    return given, None if suggested == NONE else [float(v) for v in probs[:, suggested]]


def badge(
    label: int | None, suggested: int | None, p_given: float, p_suggested: float, name: Callable[[int], str] = str
) -> str | None:
    """The tooltip of a badged tile, in words (None: no suggestion, no badge)."""
    if label is None or suggested is None or suggested == NONE:
        return None
    return (
        f"the checkpoints' average prediction is {name(suggested)} (p̄ {p_suggested:.2f}), not its label "
        f"{name(label)} (p̄ {p_given:.2f})"
    )
