"""Per-example gradient blocks and their algebra: a factorised ``nn.Linear`` (never materialised) or a dense
``(n, numel)`` matrix; dot products, squared norms and row-joins of blocks made by the same plan."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import torch


class FactoredBlock(NamedTuple):
    """A factorised ``nn.Linear``'s per-example gradients, never materialised: the weight gradient of row i is
    ``g[i] a[i]^T`` (plus ``g[i]`` for the bias when ``has_bias``)."""

    g: torch.Tensor  # (n, out): the loss gradient w.r.t. the layer's output
    a: torch.Tensor  # (n, in): the layer's input
    has_bias: bool  # the layer's bias is selected too

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.g, self.a)


class DenseBlock(NamedTuple):
    """Materialised per-example gradients ``(n, numel)`` of some selected parameters, concatenated."""

    v: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.v,)


Block = FactoredBlock | DenseBlock  # one checkpoint's per-example gradients of a batch: a list of these


def _block_dot(t: Block, r: Block) -> torch.Tensor:
    """``(n_t, n_r)`` dot products of the per-example gradients of two blocks made by the same plan."""
    if isinstance(t, FactoredBlock):
        assert isinstance(r, FactoredBlock)
        aa = t.a @ r.a.T
        return (t.g @ r.g.T) * (aa + 1 if t.has_bias else aa)
    assert isinstance(r, DenseBlock)
    return t.v @ r.v.T


def _block_sq(r: Block) -> torch.Tensor:
    """``(n,)`` squared norms of a block's per-example gradients."""
    if isinstance(r, FactoredBlock):
        a2 = r.a.pow(2).sum(1)
        return r.g.pow(2).sum(1) * (a2 + 1 if r.has_bias else a2)
    return r.v.pow(2).sum(1)


def _block_cat(blocks: tuple[Block, ...]) -> Block:
    """The same block of consecutive row chunks, joined along the rows."""
    first = blocks[0]
    if isinstance(first, FactoredBlock):
        fs = [b for b in blocks if isinstance(b, FactoredBlock)]
        return FactoredBlock(torch.cat([b.g for b in fs]), torch.cat([b.a for b in fs]), first.has_bias)
    return DenseBlock(torch.cat([b.v for b in blocks if isinstance(b, DenseBlock)]))


def sum_terms(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors, in order (``sum()`` would start from the int 0)."""
    return functools.reduce(torch.add, terms)


def blocks_dot(tb: list[Block], rb: list[Block]) -> torch.Tensor:
    """``(n_t, n_r)`` dot products of the per-example gradients (all blocks of one checkpoint)."""
    return sum_terms(_block_dot(t, r) for t, r in zip(tb, rb, strict=True))


def blocks_sq(rb: list[Block]) -> torch.Tensor:
    """``(n,)`` squared norms of the per-example gradients (all blocks of one checkpoint)."""
    return sum_terms(_block_sq(r) for r in rb)


def blocks_cat(parts: list[list[Block]]) -> list[Block]:
    """The blocks of consecutive row chunks, joined along the rows."""
    return [_block_cat(blocks) for blocks in zip(*parts, strict=True)]


def blocks_sum(blocks: list[Block], device: torch.device) -> torch.Tensor:
    """The sum of every value of the blocks (NaN/inf anywhere makes it non-finite: one reduction to check)."""
    return sum((t.sum() for b in blocks for t in b.tensors()), torch.zeros((), device=device))


def blocks_nonfinite_rows(blocks: list[Block], n: int) -> torch.Tensor:
    """``(n,)`` bool: which rows have a non-finite value in any block."""
    return functools.reduce(
        torch.logical_or, [~torch.isfinite(t.reshape(n, -1)).all(1) for b in blocks for t in b.tensors()]
    )
