"""Per-example gradients of the affine parameters of a normalisation layer in closed form, from its input and the
loss gradient w.r.t. its output: ``y = x_hat * weight + bias``, so the weight gradient of row i is
``sum (grad_out_i * x_hat_i)`` and the bias gradient ``sum grad_out_i`` over every position but the parameter's.

``x_hat`` is recomputed from the input with the layer's own statistics: ``LayerNorm`` and ``GroupNorm`` normalise
each row on its own; a ``BatchNorm`` is hooked only with running statistics in eval mode (the engine computes in
eval mode), which are the checkpoint's buffers at the time of the hook."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._tokens import Call


def hookable_norm(m: nn.Module) -> bool:
    """Whether ``m`` is a normalisation layer with affine parameters whose rows are normalised on their own."""
    if isinstance(m, nn.LayerNorm):
        return m.elementwise_affine
    if isinstance(m, nn.GroupNorm):
        return m.affine
    if isinstance(m, _BatchNorm):
        return m.affine and m.track_running_stats and not m.training
    return False


def _x_hat(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(m, nn.LayerNorm):
        return F.layer_norm(x, m.normalized_shape, None, None, m.eps)
    if isinstance(m, nn.GroupNorm):
        return F.group_norm(x, m.num_groups, None, None, m.eps)
    assert isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
    return F.batch_norm(x, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)


def _reduce_dims(m: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The dimensions a parameter gradient sums over (all but the batch and the parameter's own)."""
    if isinstance(m, nn.LayerNorm):
        return tuple(range(1, x.dim() - len(m.normalized_shape)))
    return tuple(range(2, x.dim()))


def norm_sample_grads(m: nn.Module, calls: list[Call], n: int, has_bias: bool) -> tuple[torch.Tensor, ...]:
    """``(n, numel)`` per-example gradients of the weight (and bias) of a normalisation layer, summed over its
    calls of one forward."""
    gw: torch.Tensor | None = None
    gb: torch.Tensor | None = None
    for args, _, g in calls:
        x = args[0].detach()
        dims = _reduce_dims(m, x)
        w = g * _x_hat(m, x)
        w = (w.sum(dims) if dims else w).reshape(n, -1)
        gw = w if gw is None else gw + w
        if has_bias:
            b = (g.sum(dims) if dims else g).reshape(n, -1)
            gb = b if gb is None else gb + b
    assert gw is not None
    return (gw,) if gb is None else (gw, gb)


def norm_row_floats(m: nn.Module, input_floats: int, has_bias: bool) -> int:
    """Floats per row materialised: the parameters' gradients and one input-sized temporary."""
    assert isinstance(m.weight, torch.Tensor)
    return m.weight.numel() * (2 if has_bias else 1) + 2 * input_floats
