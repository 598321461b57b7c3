"""Per-example gradients of any other selected parameter: ``torch.func.vmap(grad(...))`` over the rows, and a
loop over the rows for the models vmap cannot run (data-dependent control flow, ``.item()``, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..._data import batch_len
from ..._loss import total_loss


def dense_grads(
    net: nn.Module,
    state: dict[str, torch.Tensor],
    dense: list[str],
    batch: tuple,
    mode: str,
    loss_fn: Any,
    on_fallback: Callable[[Exception], None],
) -> tuple[torch.Tensor, ...]:
    """``(n, numel)`` per-example gradients of each parameter of ``dense`` (in that order) of the loss of each
    row of ``batch`` (the rows of one chunk at once), ``net`` run with the weights ``state``. When vmap cannot
    run the model, ``on_fallback`` gets the error and the rows are looped over."""
    dp = {k: state[k] for k in dense}
    rest = {k: v for k, v in state.items() if k not in dp}
    n_feat = len(batch) - 1

    def loss_one(params: dict[str, torch.Tensor], *ex: Any) -> torch.Tensor:
        feats = tuple(x.unsqueeze(0) if isinstance(x, torch.Tensor) else x for x in ex[:n_feat])
        lab = ex[-1].unsqueeze(0) if isinstance(ex[-1], torch.Tensor) else ex[-1]
        out = functional_call(net, {**rest, **params}, feats)
        return total_loss(mode, loss_fn, out, lab, 1)

    in_dims = (None,) + tuple(0 if isinstance(x, torch.Tensor) else None for x in batch)
    try:
        g = vmap(grad(loss_one), in_dims=in_dims)(dp, *batch)
    except (RuntimeError, NotImplementedError) as e:
        if "could not take" in str(e):
            raise
        on_fallback(e)
        return dense_grads_loop(net, dp, rest, dense, batch, mode, loss_fn)
    return tuple(g[k].reshape(g[k].shape[0], -1) for k in dense)


def dense_grads_loop(
    net: nn.Module,
    dp: dict[str, torch.Tensor],
    rest: dict[str, torch.Tensor],
    dense: list[str],
    batch: tuple,
    mode: str,
    loss_fn: Any,
) -> tuple[torch.Tensor, ...]:
    """``dense_grads`` one row at a time (``dp``: the weights of ``dense``; ``rest``: every other weight)."""
    params = {k: v.detach().requires_grad_(True) for k, v in dp.items()}
    n = batch_len(batch)
    out = tuple(dp[k].new_empty(n, dp[k].numel()) for k in dense)
    for i in range(n):
        feats = tuple(x[i : i + 1] if isinstance(x, torch.Tensor) else x for x in batch[:-1])
        lab = batch[-1][i : i + 1]
        with torch.enable_grad():
            y = functional_call(net, {**rest, **params}, feats)
            loss = total_loss(mode, loss_fn, y, lab, 1)
            gs = torch.autograd.grad(loss, [params[k] for k in dense], allow_unused=True)
        for col, g in zip(out, gs, strict=True):
            if g is None:
                col[i] = 0
            else:
                col[i] = g.reshape(-1)
    return out
