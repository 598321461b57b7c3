"""Per-example gradient blocks and their algebra: a factorised ``nn.Linear`` (never materialised), a layer applied
to tokens kept as its inputs and output gradients (scored by the token-Gram trick), or materialised
``(n, numel)`` columns; dot products, squared norms and row-joins of blocks made by the same plan.

Every operation here allocates at most the blocks' own size (no squared copy of a dense block, no ``(n, F, O)``
outer product of a token block unless it is asked for)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import torch

GRAM_FLOATS = 1 << 24  # the most floats of one token-Gram product (test rows are taken in slices below it)
SQ_COLUMNS = 1 << 16  # wider dense blocks get their squared norms one row at a time


class FactoredBlock(NamedTuple):
    """A factorised ``nn.Linear``'s per-example gradients, never materialised: the weight gradient of row i is
    ``g[i] a[i]^T`` (plus ``g[i]`` for the bias when ``has_bias``)."""

    g: torch.Tensor  # (n, out): the loss gradient w.r.t. the layer's output
    a: torch.Tensor  # (n, in): the layer's input
    has_bias: bool  # the layer's bias is selected too

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.g, self.a)


class TokenBlock(NamedTuple):
    """A layer applied to ``T`` tokens per row: the weight gradient of row i is ``sum_t b[i, t] a[i, t]^T`` (not
    rank one), plus ``sum_t b[i, t]`` for the bias. With ``onehot`` (an embedding), ``a`` holds token indices and
    ``a[i, t]`` stands for the one-hot row of that index. Dot products use the token Gram matrices:
    ``<G_i, G_j> = sum_{t,s} (a_it . a_js + bias) (b_it . b_js)``, never the ``(out, in)`` gradients."""

    a: torch.Tensor  # (n, T, in) float, or (n, T) int64 with onehot
    b: torch.Tensor  # (n, T, out): the loss gradient w.r.t. the layer's output at each token (weighted for a bag)
    has_bias: bool
    onehot: bool

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.b,) if self.onehot else (self.a, self.b)


class DenseBlock(NamedTuple):
    """Materialised per-example gradients: the columns of ``parts`` (each ``(n, numel_k)``), side by side."""

    parts: tuple[torch.Tensor, ...]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.parts


Block = FactoredBlock | TokenBlock | DenseBlock  # one checkpoint's per-example gradients of a batch: a list of these


class Workspace:
    """Buffers for materialised per-example gradients, reused by the consecutive chunks and checkpoints of a
    training pass (each chunk's are dropped once scored): fresh memory costs a page fault per page at every
    allocation, several times the time of filling it."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, key: str, n: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """An ``(n, cols)`` buffer of ``like``'s dtype and device (its contents are overwritten by the caller)."""
        buf = self._bufs.get(key)
        if (
            buf is None
            or buf.shape[0] < n
            or buf.shape[1] != cols
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            self._bufs.pop(key, None)
            buf = self._bufs[key] = like.new_empty(n, cols)
        return buf[:n]


def _mm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y.T`` with the training rows ``x`` as the matrix product's rows: a row's values then do not depend
    on how many rows are computed with it (CPU BLAS kernels round alike for every row count but one, so a
    single row is computed twice)."""
    if x.shape[0] == 1:
        return (torch.cat([x, x]) @ y.T)[:1]
    return x @ y.T


def _a_gram(r: TokenBlock, t: TokenBlock, s: slice) -> torch.Tensor:
    """``(n_r T_r, m T_t)``: the inputs' dot products of every row of ``r`` and test rows ``s``, token by token."""
    if t.onehot:
        return (r.a.reshape(-1, 1) == t.a[s].reshape(1, -1)).to(t.b.dtype)
    aa = _mm(r.a.reshape(-1, r.a.shape[-1]), t.a[s].reshape(-1, t.a.shape[-1]))
    return aa.add_(1) if t.has_bias else aa


def _token_dot(r: TokenBlock, t: TokenBlock) -> torch.Tensor:
    (n_t, tt), (n_r, tr) = t.b.shape[:2], r.b.shape[:2]
    out = t.b.new_empty(n_r, n_t)
    step = max(1, GRAM_FLOATS // max(1, tt * n_r * tr))
    rb = r.b.reshape(n_r * tr, -1)
    for s0 in range(0, n_t, step):
        s = slice(s0, s0 + step)
        m = t.b[s].shape[0]
        bb = _mm(rb, t.b[s].reshape(m * tt, -1))
        out[:, s] = bb.mul_(_a_gram(r, t, s)).view(n_r, tr, m, tt).sum((1, 3))
    return out


def _token_sq(r: TokenBlock) -> torch.Tensor:
    n = r.b.shape[0]
    bb = torch.bmm(r.b, r.b.transpose(1, 2))
    if r.onehot:
        aa = (r.a.unsqueeze(2) == r.a.unsqueeze(1)).to(bb.dtype)
    else:
        aa = torch.bmm(r.a, r.a.transpose(1, 2))
        if r.has_bias:
            aa.add_(1)
    return bb.mul_(aa).reshape(n, -1).sum(1)


def _dense_sq(v: torch.Tensor) -> torch.Tensor:
    """Row squared norms without a squared copy of a wide ``v`` (one BLAS dot per row); a row's value does not
    depend on the rows computed with it."""
    if v.shape[1] <= SQ_COLUMNS:
        return v.pow(2).sum(1)
    return torch.stack([torch.dot(row, row) for row in v])


def _block_dot(r: Block, t: Block) -> torch.Tensor:
    """``(n_r, n_t)`` dot products of the per-example gradients of two blocks made by the same plan."""
    if isinstance(t, FactoredBlock):
        assert isinstance(r, FactoredBlock)
        aa = _mm(r.a, t.a)
        return _mm(r.g, t.g) * (aa + 1 if t.has_bias else aa)
    if isinstance(t, TokenBlock):
        assert isinstance(r, TokenBlock)
        return _token_dot(r, t)
    assert isinstance(r, DenseBlock)
    return sum_terms(_mm(x, y) for x, y in zip(r.parts, t.parts, strict=True))


def _block_sq(r: Block) -> torch.Tensor:
    """``(n,)`` squared norms of a block's per-example gradients."""
    if isinstance(r, FactoredBlock):
        a2 = r.a.pow(2).sum(1)
        return r.g.pow(2).sum(1) * (a2 + 1 if r.has_bias else a2)
    if isinstance(r, TokenBlock):
        return _token_sq(r)
    return sum_terms(_dense_sq(p) for p in r.parts)


def _pad_tokens(t: torch.Tensor, tokens: int) -> torch.Tensor:
    """``t`` (n, T, ...) with zero tokens appended up to ``tokens`` (a zero output gradient adds nothing)."""
    if t.shape[1] == tokens:
        return t
    pad = t.new_zeros(t.shape[0], tokens - t.shape[1], *t.shape[2:])
    return torch.cat([t, pad], 1)


def _block_cat(blocks: tuple[Block, ...]) -> Block:
    """The same block of consecutive row chunks, joined along the rows."""
    first = blocks[0]
    if isinstance(first, FactoredBlock):
        fs = [b for b in blocks if isinstance(b, FactoredBlock)]
        return FactoredBlock(torch.cat([b.g for b in fs]), torch.cat([b.a for b in fs]), first.has_bias)
    if isinstance(first, TokenBlock):
        ts = [b for b in blocks if isinstance(b, TokenBlock)]
        tokens = max(b.b.shape[1] for b in ts)
        a = torch.cat([_pad_tokens(b.a, tokens) for b in ts])
        return TokenBlock(a, torch.cat([_pad_tokens(b.b, tokens) for b in ts]), first.has_bias, first.onehot)
    ds = [b for b in blocks if isinstance(b, DenseBlock)]
    return DenseBlock(tuple(torch.cat(ps) for ps in zip(*(b.parts for b in ds), strict=True)))


def sum_terms(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors, in order (``sum()`` would start from the int 0)."""
    return functools.reduce(torch.add, terms)


def blocks_dot(tb: list[Block], rb: list[Block]) -> torch.Tensor:
    """``(n_t, n_r)`` dot products of the per-example gradients (all blocks of one checkpoint)."""
    return sum_terms(_block_dot(r, t) for t, r in zip(tb, rb, strict=True)).T.contiguous()


def blocks_sq(rb: list[Block]) -> torch.Tensor:
    """``(n,)`` squared norms of the per-example gradients (all blocks of one checkpoint)."""
    return sum_terms(_block_sq(r) for r in rb)


def blocks_cat(parts: list[list[Block]]) -> list[Block]:
    """The blocks of consecutive row chunks, joined along the rows."""
    if len(parts) == 1:
        return parts[0]
    return [_block_cat(blocks) for blocks in zip(*parts, strict=True)]


def blocks_sum(blocks: list[Block], device: torch.device) -> torch.Tensor:
    """The sum of every value of the blocks (NaN/inf anywhere makes it non-finite: one reduction to check)."""
    return sum((t.sum() for b in blocks for t in b.tensors()), torch.zeros((), device=device))


def blocks_nonfinite_rows(blocks: list[Block], n: int) -> torch.Tensor:
    """``(n,)`` bool: which rows have a non-finite value in any block."""
    return functools.reduce(
        torch.logical_or, [~torch.isfinite(t.reshape(n, -1)).all(1) for b in blocks for t in b.tensors()]
    )
