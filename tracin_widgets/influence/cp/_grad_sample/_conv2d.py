"""Per-example gradients of an ``nn.Conv2d`` (groups 1, numeric padding, zeros padding mode) from its input and
the loss gradient w.r.t. its output, as Opacus computes them."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def hookable_conv2d(m: nn.Module) -> bool:
    """Whether ``m`` is a Conv2d whose per-example gradients ``conv2d_sample_grads`` computes."""
    return isinstance(m, nn.Conv2d) and m.groups == 1 and not isinstance(m.padding, str) and m.padding_mode == "zeros"


def conv2d_row_floats(conv: nn.Conv2d, out_positions: int, has_bias: bool) -> int:
    """Floats per row that ``conv2d_sample_grads`` materialises: the gradient, and at most one im2col row."""
    c, o = conv.in_channels, conv.out_channels
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return o * c * k + (o if has_bias else 0) + c * k * out_positions


def _windows(conv: nn.Conv2d, inp: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """``(n, C_in, Ho, Wo, kh, kw)``: every output position's input window, a strided view of the padded input."""
    (k0, k1), (s0, s1), (d0, d1) = conv.kernel_size, conv.stride, conv.dilation
    p0, p1 = cast(tuple[int, int], conv.padding)  # the plan hooks no Conv2d with padding="same"/"valid"
    x = F.pad(inp, (p1, p1, p0, p0)) if (p0 or p1) else inp
    win = x.unfold(2, d0 * (k0 - 1) + 1, s0).unfold(3, d1 * (k1 - 1) + 1, s1)[..., ::d0, ::d1]
    return win[:, :, :ho, :wo]


def conv2d_tokens(conv: nn.Conv2d, inp: torch.Tensor, gout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Conv2d as a layer over tokens (its output positions): ``(a, b)``, ``a (n, Ho*Wo, C_in*kh*kw)`` the
    input windows (im2col), ``b (n, Ho*Wo, C_out)`` the output gradient; the weight gradient of row i is
    ``sum_t b_it a_it^T`` (``TokenBlock``)."""
    n, ho, wo = inp.shape[0], gout.shape[2], gout.shape[3]
    a = _windows(conv, inp, ho, wo).permute(0, 2, 3, 1, 4, 5).reshape(n, ho * wo, -1)
    return a, gout.flatten(2).transpose(1, 2).contiguous()


def conv2d_sample_grads(
    conv: nn.Conv2d, inp: torch.Tensor, gout: torch.Tensor, has_bias: bool, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Per-example gradients of a Conv2d's weight ``(n, numel)`` (and bias ``(n, out)``) from its input and
    output gradient, the weight's written into ``out`` when given (a reused buffer).

    On the CPU: when the output has fewer positions than channels, one bmm with the unfolded input (im2col,
    no larger than the gradient); otherwise one bmm per kernel offset over a strided view, written into the
    result in place. Elsewhere one einsum over a strided view of the input windows."""
    n = inp.shape[0]
    (k0, k1), (s0, s1), (d0, d1) = conv.kernel_size, conv.stride, conv.dilation
    p0, p1 = cast(tuple[int, int], conv.padding)  # the plan hooks no Conv2d with padding="same"/"valid"
    c, o, ho, wo = inp.shape[1], gout.shape[1], gout.shape[2], gout.shape[3]
    gw = inp.new_empty(n, o * c * k0 * k1) if out is None else out
    x = F.pad(inp, (p1, p1, p0, p0)) if (p0 or p1) else inp
    win = x.unfold(2, d0 * (k0 - 1) + 1, s0).unfold(3, d1 * (k1 - 1) + 1, s1)[..., ::d0, ::d1]  # a view
    win = win[:, :, :ho, :wo]  # (n, C_in, Ho, Wo, kh, kw)
    if inp.device.type == "cpu" and ho * wo < o:
        cols = win.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k0 * k1, ho * wo)  # im2col, smaller than gw
        if ho * wo == 1:  # an outer product per row
            torch.mul(gout.reshape(n, o, 1), cols.reshape(n, 1, -1), out=gw.view(n, o, c * k0 * k1))
        else:
            torch.bmm(gout.reshape(n, o, ho * wo), cols.transpose(1, 2), out=gw.view(n, o, c * k0 * k1))
    elif inp.device.type == "cpu":
        gf = gout.reshape(n, o, ho * wo)
        g5 = gw.view(n, o, c, k0, k1)
        for i in range(k0):
            for j in range(k1):
                xs = x[:, :, i * d0 : i * d0 + s0 * (ho - 1) + 1 : s0, j * d1 : j * d1 + s1 * (wo - 1) + 1 : s1]
                g5[:, :, :, i, j] = torch.bmm(gf, xs.reshape(n, c, ho * wo).transpose(1, 2))
    else:
        gw.view(n, o, c, k0, k1).copy_(torch.einsum("ncyxhw,noyx->nochw", win, gout))
    return (gw, gout.sum((2, 3))) if has_bias else (gw,)
