"""Which selected parameters get their per-example gradients from forward hooks, and those gradients.

From one forward and one backward per batch (no vmap):
* an ``nn.Linear`` run once per forward on a 2-D input is factorised (grad = g a^T, + g for its bias: dot
  products are (g.g')(a.a' + 1) without materialising them);
* an ``nn.Linear`` on ``(n, ..., in)`` inputs or run several times, an ``nn.Embedding`` and a 2-D sum/mean
  ``nn.EmbeddingBag`` keep their tokens' inputs and output gradients (``_tokens``), scored by the token-Gram
  trick or materialised, whichever costs less for the query (``Plan.choose``);
* an ``nn.Conv2d`` gets materialised per-example gradients from its input and output gradient (``_conv2d``);
* ``LayerNorm``, ``GroupNorm`` and eval-mode ``BatchNorm`` affine parameters come in closed form (``_norm``).
A layer is hooked only when every call of it is batch-first on two probe forwards (2 and 3 rows) and its weight
belongs to no other module (tied weights). Every other selected parameter is left to ``vmap(grad)`` (``_vmap``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ..._layers import resolve_module
from ._blocks import Block, DenseBlock, FactoredBlock, TokenBlock, Workspace
from ._conv2d import conv2d_sample_grads, conv2d_tokens, hookable_conv2d
from ._norm import hookable_norm, norm_row_floats, norm_sample_grads
from ._tokens import Call, check_token_inputs, densify, hookable_embedding, token_block, token_costs, tokens_of_call

PATHS = {
    "linear": "factorised Linear (g a^T, never materialised)",
    "gram": "{} over {} tokens (token Gram, never materialised)",
    "dense": "{} over {} tokens (materialised from hooks)",
    "conv2d": "Conv2d (materialised from hooks)",
    "conv2d-gram": "Conv2d over {} output positions (token Gram, never materialised)",
    "norm": "{} affine (closed form from hooks)",
}


class HookedLayer(NamedTuple):
    """A selected layer whose per-example gradients come from forward hooks (its inputs and output gradients)."""

    name: str
    module: nn.Module
    kind: str  # "linear" (factorised), "tokens" (Linear over tokens, Embedding, EmbeddingBag), "conv2d", "norm"
    has_bias: bool  # its bias is selected too
    size: int  # per row: tokens ("tokens"), output positions ("conv2d"), input floats ("norm"); 1 otherwise
    broadcast: bool = False  # an Embedding looked up once for every row (BERT's position ids): expanded first

    def param_names(self) -> list[str]:
        return [f"{self.name}.weight"] + ([f"{self.name}.bias"] if self.has_bias else [])


@dataclasses.dataclass
class Plan:
    """How the selected parameters get their per-example gradients (made once, on the first batch)."""

    hooked: list[HookedLayer]  # in module order; one block each
    dense: list[str]  # every other selected parameter (by name): one DenseBlock from vmap(grad)
    gram: set[str] = dataclasses.field(default_factory=set)  # "tokens" layers scored by the Gram trick now

    def choose(self, n_test: int) -> None:
        """For a query of ``n_test`` test rows (0: self-influence only), score each "tokens" layer by the
        token-Gram trick or by materialised gradients, whichever costs fewer flops (``_tokens.token_costs``)."""
        self.gram = {
            h.name
            for h in self.hooked
            if h.kind in ("tokens", "conv2d") and _gram_wins(h.module, h.size, max(0, n_test))
        }

    def row_floats(self, sizes: dict[str, int]) -> int:
        """Floats one row's per-example gradients materialise at once (one checkpoint, with the temporaries that
        compute them); ``sizes``: each parameter's numel."""
        total = 0
        for h in self.hooked:
            if h.kind == "linear":
                assert isinstance(h.module, nn.Linear)
                total += h.module.in_features + h.module.out_features
            elif h.kind in ("tokens", "conv2d"):
                _, _, gram, dense = token_costs(h.module, h.size, 0)
                total += gram if h.name in self.gram else dense
            else:
                total += norm_row_floats(h.module, h.size, h.has_bias)
        return total + 2 * sum(sizes.get(k, 0) for k in self.dense)  # vmap's gradients and their copy

    def paths(self) -> dict[str, str]:
        """How each selected layer's (or parameter's) per-example gradients are computed, in words."""
        out: dict[str, str] = {}
        for h in self.hooked:
            kind = type(h.module).__name__
            key = ("gram" if h.name in self.gram else "dense") if h.kind == "tokens" else h.kind
            if h.kind == "conv2d" and h.name in self.gram:
                key = "conv2d-gram"
            out[h.name] = PATHS[key].format(*((h.size,) if key == "conv2d-gram" else (kind, h.size)))
        for k in self.dense:
            out[k] = "torch.func.vmap(grad)"
        return out


def _gram_wins(m: nn.Module, tokens: int, n_test: int) -> bool:
    gram, dense, _, _ = token_costs(m, tokens, n_test)
    return gram < dense


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


def _candidate_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear) or hookable_embedding(m):
        return "tokens"
    if hookable_conv2d(m):
        return "conv2d"
    if hookable_norm(m):
        return "norm"
    return None


def _shared_weights(net: nn.Module) -> set[int]:
    """ids of the parameters held by more than one module (tied weights: a hook sees only one of the uses)."""
    owners: dict[int, set[int]] = {}
    for m in net.modules():
        for p in m._parameters.values():
            if p is not None:
                owners.setdefault(id(p), set()).add(id(m))
    return {k for k, v in owners.items() if len(v) > 1}


def _broadcast(m: nn.Module, seen: list[tuple[int, list]]) -> bool:
    """An Embedding whose every call on the probes looks up one row of indices for the whole batch (shape
    ``(1, T)``; broadcast over the rows afterwards, as BERT's and GPT-2's position embeddings)."""
    return isinstance(m, nn.Embedding) and all(
        k > 1 and calls and all(a and isinstance(a[0], torch.Tensor) and a[0].shape[0] == 1 for a, _, _ in calls)
        for k, calls in seen
    )


def _layer_kind(m: nn.Module, kind: str, seen: list[tuple[int, list]]) -> tuple[str, int, bool] | None:
    """The hook kind, per-row size and broadcast flag of a candidate from its calls on the probes (the same on
    both), or None (vmap): every call batch-first (or a broadcast Embedding), a Conv2d on 4-D inputs."""
    if _broadcast(m, seen):
        counts = {sum(int(a[0].numel()) for a, _, _ in calls) for _, calls in seen}
        return ("tokens", counts.pop(), True) if len(counts) == 1 else None
    sizes = []
    for k, calls in seen:
        if not calls or not all(a and isinstance(a[0], torch.Tensor) and a[0].shape[0] == k for a, _, _ in calls):
            return None
        if kind == "tokens":
            toks = [tokens_of_call(m, a, kw, k) for a, kw, _ in calls]
            if any(t is None for t in toks):
                return None
            linear = isinstance(m, nn.Linear) and len(calls) == 1 and calls[0][0][0].dim() == 2
            sizes.append(("linear", 1) if linear else ("tokens", sum(t for t in toks if t is not None)))
        elif kind == "conv2d":
            if any(a[0].dim() != 4 for a, _, _ in calls):
                return None
            sizes.append(("conv2d", sum(p for _, _, p in calls)))
        else:
            sizes.append(("norm", sum(int(a[0][:1].numel()) for a, _, _ in calls)))
    return (*sizes[0], False) if all(s == sizes[0] for s in sizes) else None


def _expanding(layers: list[HookedLayer], n: int) -> list:
    """Forward hooks that expand the broadcast Embeddings' outputs to ``n`` rows (removable handles)."""
    return [h.module.register_forward_hook(lambda mod, a, o: o.expand(n, *o.shape[1:])) for h in layers if h.broadcast]


def _broadcast_ok(layers: list[HookedLayer], probe: tuple[int, Callable[[], Any]], want: Any) -> bool:
    """Whether the model gives the same outputs with the broadcast Embeddings expanded to the batch's rows."""
    handles = _expanding(layers, probe[0])
    try:
        with torch.no_grad():
            got = probe[1]()
    except Exception:  # the model cannot take an expanded lookup: those layers go to vmap
        return False
    finally:
        for h in handles:
            h.remove()
    return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, 1e-6, 1e-7)


def make_plan(net: nn.Module, param_names: list[str], probes: Sequence[tuple[int, Callable[[], Any]]]) -> Plan:
    """The plan for the parameters ``param_names`` of ``net``, from the layer inputs that the probe forwards
    (``(rows, forward)``: two row counts) show."""
    selected, shared = set(param_names), _shared_weights(net)
    candidates: dict[str, tuple[nn.Module, str]] = {}
    for name, m in net.named_modules():
        kind = _candidate_kind(m)
        weight = getattr(m, "weight", None)
        if kind is not None and f"{name}.weight" in selected and id(weight) not in shared:
            candidates[name] = (m, kind)
    seen: dict[str, list[tuple[int, list]]] = {name: [] for name in candidates}

    def record(mod: nn.Module, args: tuple, kwargs: dict, out: Any, _n: str) -> None:
        positions = int(out[:1, 0].numel()) if isinstance(out, torch.Tensor) and out.dim() == 4 else 1
        seen[_n][-1][1].append((args, kwargs, positions))

    handles = [
        m.register_forward_hook(lambda mod, a, kw, o, _n=name: record(mod, a, kw, o, _n), with_kwargs=True)
        for name, (m, _) in candidates.items()
    ]
    outs = []
    try:
        for k, forward in probes:
            for name in candidates:
                seen[name].append((k, []))
            with torch.no_grad():
                outs.append(forward())
    finally:
        for h in handles:
            h.remove()
    hooked: list[HookedLayer] = []
    for name, (m, kind) in candidates.items():
        found = _layer_kind(m, kind, seen[name])
        if found is not None:
            bias = getattr(m, "bias", None) is not None and f"{name}.bias" in selected
            hooked.append(HookedLayer(name, m, found[0], bias, found[1], found[2]))
    if any(h.broadcast for h in hooked) and not _broadcast_ok(hooked, probes[0], outs[0]):
        hooked = [h for h in hooked if not h.broadcast]
    fparams = {k for h in hooked for k in h.param_names()}
    return Plan(hooked, [p for p in param_names if p not in fparams])


def _layer_block(h: HookedLayer, calls: list[Call], n: int, gram: bool, ws: Workspace | None) -> Block:
    if not all(isinstance(a[0], torch.Tensor) and a[0].shape[0] == n for a, _, _ in calls) or (
        h.kind == "tokens" and not check_token_inputs(h.module, calls, n)
    ):
        raise ValueError(
            f"layers: {h.name!r} ({type(h.module).__name__}) was called on inputs whose first dimension is not "
            f"the batch's {n} rows in this batch, unlike the first batch: TracInCP needs batch-first layers. "
            "Leave this layer out of layers=[...]."
        )
    if h.kind == "linear":
        (args, _, g), *_ = calls
        return FactoredBlock(g.reshape(n, -1), args[0].detach().reshape(n, -1), h.has_bias)
    if h.kind == "tokens":
        blk = token_block(h.module, calls, n, h.has_bias)
        return blk if gram else densify(h.module, blk, None if ws is None else lambda c: ws.get(h.name, n, c, blk.b))
    if h.kind == "conv2d" and gram:
        assert isinstance(h.module, nn.Conv2d)
        toks = [conv2d_tokens(h.module, a[0].detach(), g) for a, _, g in calls]
        a, b = (torch.cat(ts, 1) if len(ts) > 1 else ts[0] for ts in zip(*toks, strict=True))
        return TokenBlock(a, b, h.has_bias, False)
    if h.kind == "conv2d":
        assert isinstance(h.module, nn.Conv2d)
        out = None if ws is None else ws.get(h.name, n, h.module.weight.numel(), calls[0][2])
        parts = [
            conv2d_sample_grads(h.module, a[0].detach(), g, h.has_bias, out if i == 0 else None)
            for i, (a, _, g) in enumerate(calls)
        ]
        return DenseBlock(tuple(sum(ps) if len(ps) > 1 else ps[0] for ps in zip(*parts, strict=True)))
    return DenseBlock(norm_sample_grads(h.module, calls, n, h.has_bias))


def hooked_blocks(plan: Plan, loss: Callable[[], torch.Tensor], n: int, ws: Workspace | None = None) -> list[Block]:
    """One block per hooked layer (in ``plan.hooked`` order) from one ``loss()`` (the batch's forward and loss,
    ``n`` rows) and its backward; materialised gradients written into ``ws``'s buffers when given (blocks that
    are dropped before the next call). Each hooked call's output gets a zero probe added: its gradient is the loss
    gradient w.r.t. that output, whatever in-place operations follow."""
    calls: dict[str, list[tuple[tuple, dict, torch.Tensor]]] = {h.name: [] for h in plan.hooked}

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor, h: HookedLayer) -> torch.Tensor:
        if h.broadcast:  # one lookup for every row: each row's copy gets its own gradient
            args, out = (args[0].expand(n, *args[0].shape[1:]), *args[1:]), out.expand(n, *out.shape[1:])
        probe = torch.zeros_like(out, requires_grad=True)
        calls[h.name].append((args, kwargs, probe))
        return out + probe

    handles = [
        h.module.register_forward_hook(lambda mod, a, kw, o, h=h: hook(mod, a, kw, o, h), with_kwargs=True)
        for h in plan.hooked
    ]
    try:
        with torch.enable_grad():
            total = loss()
            probes = [p for h in plan.hooked for _, _, p in calls[h.name]]
            grads = list(torch.autograd.grad(total, probes, allow_unused=True))
    finally:
        for hd in handles:
            hd.remove()
    del total
    blocks: list[Block] = []
    for h in plan.hooked:
        got = []
        for args, kwargs, p in calls.pop(h.name):
            g = grads.pop(0)
            got.append((args, kwargs, torch.zeros_like(p) if g is None else g))
        blocks.append(_layer_block(h, got, n, h.name in plan.gram, ws))
        del got
    return blocks


def named_grads(plan: Plan, blocks: list[Block], m: int) -> dict[str, torch.Tensor]:
    """Per-example gradients ``(m, numel)`` of every selected parameter, by name, from one checkpoint's blocks
    (a factorised Linear's weight gradient is the outer product g a^T, row-major like the weight)."""
    out: dict[str, torch.Tensor] = {}
    for h, blk in zip(plan.hooked, blocks, strict=False):
        if isinstance(blk, FactoredBlock):
            out[f"{h.name}.weight"] = (blk.g.unsqueeze(2) * blk.a.unsqueeze(1)).reshape(m, -1)
            if h.has_bias:
                out[f"{h.name}.bias"] = blk.g
            continue
        dense = densify(h.module, blk) if isinstance(blk, TokenBlock) else blk
        assert isinstance(dense, DenseBlock)
        out.update(zip(h.param_names(), dense.parts, strict=True))
    if plan.dense:
        rest = blocks[len(plan.hooked)]
        assert isinstance(rest, DenseBlock)
        out.update(zip(plan.dense, rest.parts, strict=True))
    return out
