"""Per-example gradients of layers applied to tokens, from one forward and one backward (as Opacus computes them):

* an ``nn.Linear`` on ``(n, ..., in)`` inputs (or called several times per forward): the weight gradient of row
  i is ``sum_t b_it a_it^T`` over its tokens (exact; not rank one), its bias gradient ``sum_t b_it``;
* an ``nn.Embedding``: the gradient of row i scatter-adds ``b_it`` into the row of token ``t``'s index
  (``padding_idx`` tokens add nothing);
* an ``nn.EmbeddingBag`` on 2-D inputs (``mode`` sum or mean, optional ``per_sample_weights``): the same with
  each index weighted as the bag weights it.

Each gives a ``TokenBlock`` (inputs and output gradients, scored by the token-Gram trick) which ``densify``
turns into materialised ``(n, numel)`` gradients (one bmm, or one scatter-add) when that is cheaper
(``token_costs``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._blocks import DenseBlock, TokenBlock
from ._conv2d import conv2d_row_floats

Call = tuple[tuple, dict, torch.Tensor]  # one call of a hooked module: positional inputs, keyword inputs, grad_out


def hookable_embedding(m: nn.Module) -> bool:
    """An Embedding (or sum/mean EmbeddingBag) whose per-example gradients are scatter-adds: no ``max_norm``
    (it rewrites the weight in the forward), no ``scale_grad_by_freq`` (a batch-dependent scaling)."""
    if isinstance(m, nn.Embedding):
        return m.max_norm is None and not m.scale_grad_by_freq
    if isinstance(m, nn.EmbeddingBag):
        return m.max_norm is None and not m.scale_grad_by_freq and m.mode in ("sum", "mean")
    return False


def bag_weights(m: nn.EmbeddingBag, call_args: tuple, call_kwargs: dict) -> torch.Tensor | None:
    """The ``(n, L)`` weight of each index of a 2-D EmbeddingBag call in its bag's output (padding 0, ``mean``:
    1/count, times ``per_sample_weights``); None when the call is not a 2-D input without offsets."""
    idx = call_args[0]
    offsets = call_args[1] if len(call_args) > 1 else call_kwargs.get("offsets")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or offsets is not None:
        return None
    psw = call_args[2] if len(call_args) > 2 else call_kwargs.get("per_sample_weights")
    keep = torch.ones_like(idx, dtype=torch.bool) if m.padding_idx is None else idx != m.padding_idx
    w = keep.to(m.weight.dtype) if psw is None else psw * keep
    if m.mode == "mean":
        w = w / keep.sum(1, keepdim=True).clamp_min(1).to(w.dtype)
    return w


def tokens_of_call(m: nn.Module, args: tuple, kwargs: dict, n: int) -> int | None:
    """Tokens per row that one call of ``m`` (with these inputs) contributes, or None when the call's input is
    not batch-first with ``n`` rows (the layer then goes to vmap)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != n:
        return None
    if isinstance(m, nn.Linear):
        return int(x[:1].numel() // max(1, x.shape[-1])) if x.dim() >= 2 else None
    if isinstance(m, nn.EmbeddingBag):
        return int(x.shape[1]) if bag_weights(m, args, kwargs) is not None else None
    return int(x[:1].numel())


def token_block(m: nn.Module, calls: list[Call], n: int, has_bias: bool) -> TokenBlock:
    """The ``TokenBlock`` of a Linear / Embedding / EmbeddingBag from its calls of one forward (tokens of every
    call side by side)."""
    a_parts, b_parts = [], []
    for args, kwargs, g in calls:
        x = args[0].detach()
        if isinstance(m, nn.Linear):
            a_parts.append(x.reshape(n, -1, x.shape[-1]))
            b_parts.append(g.reshape(n, -1, g.shape[-1]))
        elif isinstance(m, nn.EmbeddingBag):
            w = bag_weights(m, args, kwargs)
            assert w is not None  # the plan hooks only 2-D bags
            a_parts.append(x)
            b_parts.append(w.detach().unsqueeze(2) * g.unsqueeze(1))
        else:
            idx = x.reshape(n, -1)
            b = g.reshape(n, idx.shape[1], -1)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                b = b.masked_fill((idx == m.padding_idx).unsqueeze(2), 0)
            a_parts.append(idx)
            b_parts.append(b)
    a = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, 1)
    b = b_parts[0] if len(b_parts) == 1 else torch.cat(b_parts, 1)
    return TokenBlock(a, b, has_bias and isinstance(m, nn.Linear), not isinstance(m, nn.Linear))


def _weight(m: nn.Module) -> torch.Tensor:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w


def densify(m: nn.Module, blk: TokenBlock, buffer: Callable[[int], torch.Tensor] | None = None) -> DenseBlock:
    """The materialised per-example gradients of a ``TokenBlock``: ``(n, out*in)`` by one bmm (and the bias
    ``(n, out)``), or ``(n, num_embeddings*dim)`` by one scatter-add; the weight's written into
    ``buffer(columns)`` when given (a reused buffer)."""
    n = blk.b.shape[0]
    numel = _weight(m).numel()
    w = blk.b.new_empty(n, numel) if buffer is None else buffer(numel)
    if not blk.onehot:
        torch.bmm(blk.b.transpose(1, 2), blk.a, out=w.view(n, blk.b.shape[2], blk.a.shape[2]))
        return DenseBlock((w, blk.b.sum(1)) if blk.has_bias else (w,))
    v, d = _weight(m).shape
    rows = (torch.arange(n, device=blk.a.device) * v).unsqueeze(1) + blk.a
    w.zero_().view(n * v, d).index_add_(0, rows.reshape(-1), blk.b.reshape(-1, d))
    return DenseBlock((w,))


def token_costs(m: nn.Module, tokens: int, n_test: int) -> tuple[int, int, int, int]:
    """``(gram_flops, dense_flops, gram_floats, dense_floats)`` per training row of scoring this layer against
    ``n_test`` test rows (and its own self-influence) by the token-Gram trick or by materialised gradients,
    and the floats per row each holds. The Gram trick wins when ``T^2 (in + out)`` is small against ``in * out``
    (few tokens, large layers) and the test rows are few. A Conv2d's tokens are its output positions, its
    inputs the input windows (``in = C_in * kh * kw``)."""
    t = max(1, tokens)
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        f, o = (m.in_features, m.out_features) if isinstance(m, nn.Linear) else (_weight(m)[0].numel(), m.out_channels)
        kept = t * (f + o)
        dense = t * f * o + (n_test + 1) * f * o
        dense_floats = kept + f * o + o if isinstance(m, nn.Linear) else conv2d_row_floats(m, t, True)
        return (n_test + 1) * t * t * (f + o), dense, kept + 2 * t * t, dense_floats
    v, d = _weight(m).shape
    kept = t * (d + 1)
    return (n_test + 1) * t * t * (d + 1), t * d + (n_test + 1) * v * d, kept + 2 * t * t, kept + v * d


def check_token_inputs(m: Any, calls: list[Call], n: int) -> bool:
    """Whether every call of this forward is batch-first with ``n`` rows (as the plan saw)."""
    return all(tokens_of_call(m, args, kwargs, n) is not None for args, kwargs, _ in calls)
