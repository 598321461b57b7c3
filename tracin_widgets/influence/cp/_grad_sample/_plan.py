"""Which selected parameters get their per-example gradients from forward hooks, and those gradients.

An ``nn.Linear`` that runs once per forward on a 2-D input is factorised (grad = g a^T, + g for its bias: dot
products are (g.g')(a.a' + 1) without materialising them); an ``nn.Conv2d`` that runs once per forward gets
materialised per-example gradients from its input and output gradient (``_conv2d``). Every other selected
parameter is left to ``vmap(grad)`` (``_vmap``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from ..._layers import resolve_module
from ._blocks import Block, DenseBlock, FactoredBlock
from ._conv2d import conv2d_sample_grads, hookable_conv2d


class HookedLayer(NamedTuple):
    """A selected layer whose per-example gradients come from a forward hook (its input and output gradient)."""

    name: str
    module: nn.Module  # an nn.Linear (factorised) or an nn.Conv2d
    has_bias: bool  # its bias is selected too


class Plan(NamedTuple):
    """How the selected parameters get their per-example gradients (made once, on the first batch)."""

    factored: list[HookedLayer]  # Linear layers run once per forward on a 2-D input: FactoredBlock
    conv: list[HookedLayer]  # Conv2d layers run once per forward: one DenseBlock from their hooks
    dense: list[str]  # every other selected parameter (by name): one DenseBlock from vmap(grad)

    def conv_names(self) -> list[str]:
        """The hooked Conv2d parameters, in the order of their DenseBlock's columns."""
        return [k for h in self.conv for k in [f"{h.name}.weight"] + ([f"{h.name}.bias"] if h.has_bias else [])]


def select_params(model: nn.Module, net: nn.Module, layers: Any) -> list[str]:
    """The names (in ``net``'s state dict) of the parameters of ``layers`` (names or modules of ``model``, which
    is ``net`` or a wrapper of it), or of every trainable parameter when None."""
    if layers is None:
        trainable = [n for n, p in net.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no parameter with requires_grad=True; pass layers=[...] explicitly.")
        return trainable
    if isinstance(layers, (str, nn.Module)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of layer names, e.g. ['fc2', 'fc3'], not {type(layers).__name__}.")
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: pass None to use every trainable parameter, or a list of layer names.")
    names: list[str] = []
    for layer in layers:
        lname, mod = resolve_module(model, layer, "layers")
        own = [f"{lname}.{n}" for n, _ in mod.named_parameters()]
        if not own:
            raise ValueError(f"layers: {lname!r} ({type(mod).__name__}) has no parameters; pick layers with weights.")
        names += [n for n in own if n not in names]
    return names


def make_plan(net: nn.Module, param_names: list[str], n: int, forward: Callable[[], Any]) -> Plan:
    """The plan for the parameters ``param_names`` of ``net``, from the layer input shapes that one
    ``forward()`` (a batch of ``n`` rows) shows: a layer is hooked when it runs exactly once on the whole batch."""
    selected = set(param_names)
    candidates = {
        name: m
        for name, m in net.named_modules()
        if (isinstance(m, nn.Linear) or hookable_conv2d(m)) and f"{name}.weight" in selected
    }
    seen: dict[str, list] = {name: [] for name in candidates}
    handles = [
        m.register_forward_hook(lambda mod, i, o, _n=name: seen[_n].append(tuple(i[0].shape)))
        for name, m in candidates.items()
    ]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    factored: list[HookedLayer] = []
    conv: list[HookedLayer] = []
    for name, m in candidates.items():
        shapes = seen[name]
        ndim = 4 if isinstance(m, nn.Conv2d) else 2
        if len(shapes) == 1 and len(shapes[0]) == ndim and shapes[0][0] == n:
            entry = HookedLayer(name, m, m.bias is not None and f"{name}.bias" in selected)
            (conv if ndim == 4 else factored).append(entry)
    hooked = factored + conv
    fparams = {f"{h.name}.weight" for h in hooked} | {f"{h.name}.bias" for h in hooked if h.has_bias}
    return Plan(factored, conv, [p for p in param_names if p not in fparams])


def hooked_blocks(plan: Plan, loss: Callable[[], torch.Tensor], n: int) -> list[Block]:
    """The blocks of the hooked layers: one ``FactoredBlock`` per factorised Linear, then one ``DenseBlock`` of
    every hooked Conv2d, from one ``loss()`` (the batch's forward and loss, ``n`` rows) and its backward."""
    hooked = plan.factored + plan.conv
    caps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor, _n: str) -> torch.Tensor:
        o = out if out.requires_grad else out.detach().requires_grad_(True)
        caps[_n] = (inp[0].detach(), o)
        return o

    handles = [h.module.register_forward_hook(lambda mod, i, o, _n=h.name: hook(mod, i, o, _n)) for h in hooked]
    try:
        with torch.enable_grad():
            total = loss()
            outs = [caps[h.name][1] for h in hooked]
            grads = torch.autograd.grad(total, outs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    blocks: list[Block] = []
    conv_rows = []
    for (name, mod, has_bias), g, o in zip(hooked, grads, outs, strict=True):
        g = torch.zeros_like(o) if g is None else g
        if isinstance(mod, nn.Conv2d):
            conv_rows.append(conv2d_sample_grads(mod, caps[name][0], g, has_bias))
        else:
            blocks.append(FactoredBlock(g.reshape(n, -1), caps[name][0].reshape(n, -1), has_bias))
    if conv_rows:
        blocks.append(DenseBlock(torch.cat(conv_rows, dim=1)))
    return blocks


def named_grads(plan: Plan, blocks: list[Block], m: int, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Per-example gradients ``(m, numel)`` of every selected parameter, by name, from one checkpoint's blocks
    (a factorised Linear's weight gradient is the outer product g a^T, row-major like the weight; ``sizes``: each
    parameter's numel)."""
    out: dict[str, torch.Tensor] = {}
    it = iter(blocks)
    for layer in plan.factored:
        blk = next(it)
        assert isinstance(blk, FactoredBlock)
        out[f"{layer.name}.weight"] = (blk.g.unsqueeze(2) * blk.a.unsqueeze(1)).reshape(m, -1)
        if layer.has_bias:
            out[f"{layer.name}.bias"] = blk.g
    for names in (plan.conv_names(), plan.dense):
        if not names:
            continue
        dense_blk = next(it)
        assert isinstance(dense_blk, DenseBlock)
        rows, off = dense_blk.v, 0
        for k in names:
            out[k] = rows[:, off : off + sizes[k]]
            off += sizes[k]
    return out
