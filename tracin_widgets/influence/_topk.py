"""One running top-k for every engine: proponents by descending score, opponents by ascending score, and among
equal scores the lower training index first, whatever the chunks the scores arrive in (the result is the first
``k`` columns of a stable sort of the whole row). Also where TracInCP's pass puts its scores: the whole matrix or
a running top-k of both directions."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._types import KMostInfluentialResults

TopK = tuple[torch.Tensor, torch.Tensor]  # (values, indices), (n, k) each


def _chunk_topk(scores: torch.Tensor, k: int, largest: bool) -> TopK:
    """The top-k of each row of ``scores``, sorted, ties to the lower index (``torch.topk`` leaves ties in any
    order and, at the k-th value, may return any of the tied columns)."""
    kk = min(k, scores.shape[1])
    vals, idx = torch.topk(scores, kk, dim=1, largest=largest)
    idx = idx.sort(dim=1).values
    kth = vals[:, -1:]
    tied = (((scores >= kth) if largest else (scores <= kth)).sum(1) > kk).nonzero().flatten()
    if tied.numel():  # more columns reach the k-th value than there are places: keep the lowest tied ones
        sub, t = scores[tied], kth[tied]
        beyond, at = (sub > t) if largest else (sub < t), sub == t
        need = kk - beyond.sum(1, keepdim=True)
        idx[tied] = (beyond | (at & (at.cumsum(1) <= need))).nonzero()[:, 1].reshape(-1, kk)
    vals, pos = torch.sort(torch.gather(scores, 1, idx), dim=1, descending=largest, stable=True)
    return vals, torch.gather(idx, 1, pos)


def merge_topk(best: TopK | None, scores: torch.Tensor, offset: int, k: int, largest: bool) -> TopK:
    """Running top-k over column chunks of a score matrix, fed in column order (``offset``: the chunk's first
    column; ``best``: the top-k of the chunks before, or None). Ties go to the lower index, so the result is the
    first ``k`` columns of a stable sort of the whole row, whatever the chunks."""
    vals, idx = _chunk_topk(scores, k, largest)
    idx = idx + offset
    if best is not None:  # best holds lower indices than this chunk: the stable sort keeps them first among ties
        vals, idx = torch.cat([best[0], vals], dim=1), torch.cat([best[1], idx], dim=1)
        vals, pos = torch.sort(vals, dim=1, descending=largest, stable=True)
        vals, idx = vals[:, :k], torch.gather(idx, 1, pos[:, :k])
    return vals, idx


def finish_topk(best: TopK | None, n_test: int) -> KMostInfluentialResults:
    """A running top-k as the result type on the CPU (``(n_test, 0)`` when no chunk came)."""
    if best is None:
        return KMostInfluentialResults(torch.empty(n_test, 0, dtype=torch.int64), torch.empty(n_test, 0))
    vals, idx = best
    return KMostInfluentialResults(idx.to(torch.int64).cpu(), vals.cpu())


class TopKPair(NamedTuple):
    """The ``k`` proponents and opponents of a query, kept together: asking for the other direction, or for a
    smaller ``k``, reads them (a prefix of a sorted top-k is the smaller top-k)."""

    k: int
    pro: TopK  # descending
    opp: TopK  # ascending

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.pro, *self.opp))

    def get(self, k: int, proponents: bool) -> KMostInfluentialResults:
        vals, idx = self.pro if proponents else self.opp
        return KMostInfluentialResults(idx[:, :k].to(torch.int64).contiguous(), vals[:, :k].contiguous())


class ScoreSink:
    """Where a pass puts the scores ``(n_test, rows)`` of each training batch; with ``aggregate``, their sum over
    the test rows (the same sums as of the whole matrix: each column is summed on its own)."""

    def __init__(self, aggregate: bool) -> None:
        self.aggregate = aggregate

    def add(self, scores: torch.Tensor, offset: int) -> None:
        self._add(scores.sum(0, keepdim=True) if self.aggregate else scores, offset)

    def _add(self, scores: torch.Tensor, offset: int) -> None:
        raise NotImplementedError


class FullScores(ScoreSink):
    """``k=None``: the whole score matrix on the CPU, written in place when the training set's length is known
    (no list of parts joined at the end: one matrix at the peak, not two)."""

    def __init__(self, aggregate: bool, n_train: int | None) -> None:
        super().__init__(aggregate)
        self.n_train, self.rows = n_train, 0
        self.out: torch.Tensor | None = None
        self.parts: list[torch.Tensor] = []

    def _add(self, scores: torch.Tensor, offset: int) -> None:
        m = scores.shape[1]
        if self.out is None and not self.parts and self.n_train is not None:
            self.out = torch.empty(scores.shape[0], self.n_train, dtype=scores.dtype)
        if self.out is not None and offset + m <= self.out.shape[1]:
            self.out[:, offset : offset + m] = scores
        else:  # more rows than len(train_dataset) said, or no length: parts joined at the end
            if self.out is not None:
                self.parts.append(self.out[:, :offset])
                self.out = None
            self.parts.append(scores.cpu())
        self.rows = offset + m

    def result(self) -> torch.Tensor:
        if self.out is not None:
            return self.out if self.rows == self.out.shape[1] else self.out[:, : self.rows].clone()
        return torch.cat(self.parts, dim=1)


class RunningTopK(ScoreSink):
    """``k`` given: the running top-k proponents and opponents (on the compute device), never the matrix."""

    def __init__(self, aggregate: bool, k: int) -> None:
        super().__init__(aggregate)
        self.k = k
        self.pro: TopK | None = None
        self.opp: TopK | None = None

    def _add(self, scores: torch.Tensor, offset: int) -> None:
        self.pro = merge_topk(self.pro, scores, offset, self.k, True)
        self.opp = merge_topk(self.opp, scores, offset, self.k, False)

    def result(self) -> TopKPair:
        assert self.pro is not None and self.opp is not None  # the pass refuses an empty training set
        pro, opp = ((v.contiguous().cpu(), i.contiguous().cpu()) for v, i in (self.pro, self.opp))
        return TopKPair(self.k, pro, opp)


def topk_of(scores: torch.Tensor, k: int) -> TopKPair:
    """The top-k of a whole score matrix by the same rule as the running one (column chunks: bounded memory)."""
    acc = RunningTopK(False, k)
    step = max(k, (1 << 24) // max(1, scores.shape[0]))
    for s in range(0, scores.shape[1], step):
        acc.add(scores[:, s : s + step], s)
    return acc.result()
