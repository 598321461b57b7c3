"""Per-example gradients of an ``nn.Conv2d`` (groups 1, numeric padding, zeros padding mode) from its input and
the loss gradient w.r.t. its output, as Opacus computes them, without an im2col copy on the CPU."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


def hookable_conv2d(m: nn.Module) -> bool:
    """Whether ``m`` is a Conv2d whose per-example gradients ``conv2d_sample_grads`` computes."""
    return isinstance(m, nn.Conv2d) and m.groups == 1 and not isinstance(m.padding, str) and m.padding_mode == "zeros"


def conv2d_row_floats(conv: nn.Conv2d, out_positions: int, has_bias: bool) -> int:
    """Floats per row that ``conv2d_sample_grads`` materialises: the gradient, and at most one im2col row."""
    c, o = conv.in_channels, conv.out_channels
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return o * c * k + (o if has_bias else 0) + c * k * out_positions


def conv2d_sample_grads(
    conv: nn.Conv2d, inp: torch.Tensor, gout: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, ...]:
    """Per-example gradients of a Conv2d's weight ``(n, numel)`` (and bias ``(n, out)``) from its input and
    output gradient.

    The input windows are a strided *view* contracted with the output gradient (one bmm per kernel offset on
    the CPU, written into the result in place; one einsum elsewhere)."""
    n = inp.shape[0]
    (k0, k1), (s0, s1), (d0, d1) = conv.kernel_size, conv.stride, conv.dilation
    p0, p1 = cast(tuple[int, int], conv.padding)  # the plan hooks no Conv2d with padding="same"/"valid"
    x = torch.nn.functional.pad(inp, (p1, p1, p0, p0)) if (p0 or p1) else inp
    ho, wo = gout.shape[2], gout.shape[3]
    if inp.device.type == "cpu":
        # one bmm per kernel offset: several times faster than one big einsum on CPUs
        c, o = x.shape[1], gout.shape[1]
        gf = gout.reshape(n, o, ho * wo)
        gw = x.new_empty(n, o, c, k0, k1)
        for i in range(k0):
            for j in range(k1):
                xs = x[:, :, i * d0 : i * d0 + s0 * (ho - 1) + 1 : s0, j * d1 : j * d1 + s1 * (wo - 1) + 1 : s1]
                gw[:, :, :, i, j] = torch.bmm(gf, xs.reshape(n, c, ho * wo).transpose(1, 2))
        gw = gw.reshape(n, -1)
    else:
        win = x.unfold(2, d0 * (k0 - 1) + 1, s0).unfold(3, d1 * (k1 - 1) + 1, s1)[..., ::d0, ::d1]  # a view
        win = win[:, :, :ho, :wo]  # (n, C_in, Ho, Wo, kh, kw)
        gw = torch.einsum("ncyxhw,noyx->nochw", win, gout).reshape(n, -1)
    return (gw, gout.sum((2, 3))) if has_bias else (gw,)
