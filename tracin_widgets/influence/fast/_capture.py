"""The factors ``(a, g)`` of a batch at every checkpoint: the hooked layer's input and the loss gradient w.r.t.
the model output, from a forward per checkpoint (split into chunks the memory takes) or, on a GPU, one forward
vmapped over all checkpoints; with the layer check and the non-finite checks that name the rows.

The rows per forward are measured once per feature shape for queries (a warm query does not read the free
memory again); a training pass measures them once per batch, as its own kept factors fill the memory.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from .._base import TracInCPBase, _Progress
from .._batch import Batch, pick_output, rows_getter
from .._layers import trace_output_module
from .._loss import total_loss
from .._ops import FastCpuOps


class _Stacked(NamedTuple):
    """The checkpoint states stacked along a new first dimension, for one vmapped forward over all of them."""

    states: list[dict[str, torch.Tensor]]  # the states they were stacked from (identity marks them current)
    params: dict[str, torch.Tensor]  # name -> (n_checkpoints, *shape)


class _PoolWatch(FastCpuOps):
    """``FastCpuOps`` that notes whether the forward asked for a pooling kernel it can replace."""

    seen = False

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self._pools:
            self.seen = True
        return super().__torch_function__(func, types, args, kwargs)


def _shapes(batch: Batch) -> tuple:
    if batch.key is not None:
        return batch.key
    return tuple((k, type(x)) for k, x in (batch.kwargs.items() if batch.keyword else enumerate(batch.args)))


class FactorCapture(TracInCPBase):
    """(a, g) per batch for ``TracInCPFast`` (the hooked layer is ``self._final_fc_layer``)."""

    _final_fc_layer: nn.Module
    final_fc_layer_name: str
    reduction_type: str
    test_reduction_type: str
    cpu_chunk = 512  # rows per forward on the CPU (cache-friendlier than 2048; scores do not depend on it)
    gpu_rows = 16384  # rows per forward on a GPU (fewer launches)
    vmap_min_rows = 1024  # a vmapped forward runs all checkpoints on max(this, gpu_rows // n_checkpoints) rows

    def _init_capture(self) -> None:
        self._stacked: _Stacked | None = None
        self._query_rows: dict[tuple, int] = {}  # rows per forward of a query, by feature shapes
        self._pool_calls: bool | None = None  # CPU: does the model's forward call a pool FastCpuOps replaces?
        self._reset_capture()

    def _reset_capture(self) -> None:
        """A new layer: check it again, and ask again whether its forward can be vmapped."""
        self._layer_checked = False
        self._vmap_ok: bool | None = None  # GPU: may all checkpoints run in one vmapped forward?
        self._last_test: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (key, A, G) of the last test batch

    def _check_layer(self, state: dict, batch: Batch) -> None:
        self._layer_checked = True
        with torch.no_grad():
            producers, records = trace_output_module(
                self._net, lambda: pick_output(batch.call_with(self._net, state), self.output_key, "training batch")
            )
        if isinstance(self._final_fc_layer, nn.Linear) and any(m is self._final_fc_layer for _, m in producers):
            return
        linear = [n for n, m in producers if isinstance(m, nn.Linear)]
        called = [n for n, m, _ in records if isinstance(m, nn.Linear)]
        true = linear[-1] if linear else (called[-1] if called else None)
        where = f"; the output comes from {true!r}" if true else ""
        fix = f" Pass final_fc_layer={true!r} for exact last-layer TracIn." if true else ""
        self._warn(
            f"final_fc_layer {self.final_fc_layer_name!r} ({type(self._final_fc_layer).__name__}) is not the "
            f"model's final linear layer{where}. {type(self).__name__} hooks this module's input and "
            "differentiates the loss w.r.t. the model output (as Captum does), so the scores are not exact "
            f"last-layer gradients.{fix}",
            stacklevel=8,  # the user's fit() (or first query)
        )

    def _forward_rows(self, state: dict, batch: Batch, what: str, cache: dict[tuple, int]) -> int:
        """Rows per forward for ``batch``'s feature shapes (measured on the first batch of those shapes)."""
        key = _shapes(batch)
        rows = cache.get(key)
        if rows is None:
            self._measure_rows(state, batch, what)  # a bad batch gets the clear error here
            rows = cache[key] = self._rows(self.cpu_chunk if self.device.type == "cpu" else self.gpu_rows)
        return rows

    def _batch_factors(
        self, states: list[dict], batch: Batch, n: int, rows: int, mode: str, loss_fn: Any, what: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, A)``, each ``(n, C, d)``: the factors of ``batch`` at every checkpoint of ``states``, ``rows`` at
        a time (a batch that is not row-aligned at once)."""
        net = self._net
        if n > rows and batch.aligned:
            parts = [self._chunk_factors(states, b, mode, loss_fn, what, net) for b in batch.split(rows)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self._chunk_factors(states, batch, mode, loss_fn, what, net)

    def _cpu_ops(self) -> Any:
        """The exact CPU kernels (``FastCpuOps``) when the model's forward calls one they replace (learnt on the
        first forward); without, no per-call dispatch for every other op."""
        if self.device.type != "cpu" or self._pool_calls is False:
            return contextlib.nullcontext()
        return FastCpuOps() if self._pool_calls else _PoolWatch()

    def _output_and_input(self, net: nn.Module, state: dict, batch: Batch, what: str) -> tuple[Any, Any]:
        """The model's outputs on ``batch`` with ``state`` and the hooked layer's input; an error (or an output that
        is not a batch) is raised by ``_forward`` again, with the message that names the batch."""
        captured: list[torch.Tensor] = []
        handle = self._final_fc_layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
        ops = self._cpu_ops()
        try:
            try:
                with torch.no_grad(), ops:
                    out = functional_call(net, state, batch.args, batch.kwargs)
                if not isinstance(out, torch.Tensor):
                    out = pick_output(out, self.output_key, what)
            except Exception:
                out = None
            if isinstance(ops, _PoolWatch):
                self._pool_calls = ops.seen
            if not isinstance(out, torch.Tensor) or out.dim() == 0:
                captured.clear()
                with torch.no_grad(), self._cpu_ops():
                    out = self._forward(state, batch, what)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(
                f"final_fc_layer {self.final_fc_layer_name!r} ran {len(captured)} times in one forward pass; "
                "it must run exactly once (pass the model's last fully-connected layer)."
            )
        return out, captured[0]

    def _chunk_factors(
        self, states: list[dict], batch: Batch, mode: str, loss_fn: Any, what: str, net: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, A)`` of one chunk at every checkpoint: a no-grad forward each, then one backward through the
        checkpoints' summed losses (independent: each output's gradient is its own loss's, exactly)."""
        outs, inputs = [], []
        for state in states:
            out, a = self._output_and_input(net, state, batch, what)
            outs.append(out.detach().requires_grad_(True))
            inputs.append(a)
        n = outs[0].shape[0]
        with torch.enable_grad():
            total = None
            for o in outs:
                loss = total_loss(mode, loss_fn, o, batch.labels, n)
                total = loss if total is None else total + loss
            assert total is not None
            gs = torch.autograd.grad(total, outs)
        return torch.stack([g.reshape(n, -1) for g in gs], 1), torch.stack([a.reshape(n, -1) for a in inputs], 1)

    def _use_vmap(self) -> bool:
        """All checkpoints in one vmapped forward: on a GPU, for a model small enough that a vmapped forward
        takes its full share of the merge target (launch-bound: one grouped launch per layer pays). A large
        model's forwards are compute-bound and memory caps their rows: cuDNN's own kernels per checkpoint are
        faster than grouped ones (ResNet-50, see benchmarks/RESULTS.md). On the CPU the loop is faster."""
        if self.device.type != "cuda":
            return False
        C = max(1, len(self.checkpoints))
        want = max(self.vmap_min_rows, self.gpu_rows // C)
        return self._rows(want, copies=C) >= want

    def _vmapped_factors(
        self, states: list[dict], batch: Batch, mode: str, loss_fn: Any
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """GPU: every checkpoint in one ``vmap``-ed forward (one grouped launch per layer instead of one per
        checkpoint; 87 -> 50 ms for the tutorial's 6 x 50k on an H200). ``None`` when the model cannot be
        vmapped (random ops, data-dependent control flow, ...): the caller then loops over checkpoints."""
        if self._vmap_ok is False:
            return None
        if self._stacked is None or self._stacked.states is not states:
            self._stacked = _Stacked(states, {k: torch.stack([st[k] for st in states]) for k in states[0]})
        stacked, model, layer, key = self._stacked.params, self._net, self._final_fc_layer, self.output_key

        def one(params: dict[str, torch.Tensor], part: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            captured: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda m, i, o: captured.append(i[0]))
            try:
                out = pick_output(functional_call(model, params, part.args, part.kwargs), key, "batch")
            finally:
                handle.remove()
            if len(captured) != 1 or not isinstance(out, torch.Tensor) or out.dim() == 0:
                raise RuntimeError("not vmappable here")  # the per-checkpoint loop says what is wrong
            return out, captured[0]

        C = len(states)
        G_parts, A_parts = [], []
        try:
            rows = self._rows(max(self.vmap_min_rows, self.gpu_rows // C), copies=C)  # bounded by memory
            for part in batch.split(rows):
                m = part.n
                # PyTorch's precision settings apply, as in the per-checkpoint loop and a plain forward
                with torch.no_grad():
                    out, a = vmap(functools.partial(one, part=part))(stacked)
                outs = [out[c].detach().requires_grad_(True) for c in range(C)]
                with torch.enable_grad():  # the checkpoints' losses are independent: one backward for all
                    total = functools.reduce(torch.add, [total_loss(mode, loss_fn, o, part.labels, m) for o in outs])
                    gs = torch.autograd.grad(total, outs)
                G_parts.append(torch.stack([g.reshape(m, -1) for g in gs], 1))
                A_parts.append(a.reshape(C, m, -1).transpose(0, 1))
        except Exception:  # a vmap limitation or a bad batch: the per-checkpoint loop decides
            if not self._vmap_ok:
                self._vmap_ok = False
            return None
        self._vmap_ok = True
        return torch.cat(G_parts), torch.cat(A_parts)

    def _factors_of(
        self,
        batches: list[Batch],
        states: list[dict],
        mode: str,
        loss_fn: Any,
        what: str,
        check: bool = True,
        offset: int = 0,
        complete: bool = True,
        prog: _Progress | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of ``batches`` (rows ``offset``.. of their source; ``complete``: all of its rows). A training
        batch measures its rows per forward again (the pass's own factors fill the memory); a query's are
        measured once per feature shape."""
        A_parts, G_parts = [], []
        cache = {} if what.startswith("train") else self._query_rows
        for batch in batches:
            n = batch.n
            rows = self._forward_rows(states[-1], batch, what, cache)
            both = self._vmapped_factors(states, batch, mode, loss_fn) if len(states) > 1 and self._use_vmap() else None
            if both is not None:
                G, A = both
            else:
                G, A = self._batch_factors(states, batch, n, rows, mode, loss_fn, what)
            G_parts.append(G)
            A_parts.append(A)
            if prog is not None:
                prog.update(n)
        A, G = (A_parts[0], G_parts[0]) if len(A_parts) == 1 else (torch.cat(A_parts), torch.cat(G_parts))
        if check:
            self._check_factors(A, G, what, offset, lambda: rows_getter(batches, offset), complete)
        return A, G

    def _check_factors(
        self,
        A: torch.Tensor,
        G: torch.Tensor,
        what: str,
        offset: int = 0,
        rows_of: Callable[[], Callable[[int], Any]] | None = None,
        complete: bool = True,
    ) -> None:
        """One sync; on failure name the rows whose factors are not finite (``rows_of()``: the function giving
        row i's data; default the training set's)."""
        sums = torch.stack([G.sum((0, 2)), A.sum((0, 2))])
        if bool(torch.isfinite(sums).all()):
            return

        def locate() -> None:
            masks = {
                "loss gradients": ~torch.isfinite(G).all(2),
                f"inputs of final_fc_layer {self.final_fc_layer_name!r}": ~torch.isfinite(A).all(2),
            }
            self._raise_nonfinite(masks, offset, what, rows_of() if rows_of else self._train_row, complete)

        self._check_all_finite(sums, [f"loss gradients for the {what}", f"layer inputs for the {what}"], locate)

    def _test_factors(
        self,
        inputs: Any,
        loss: str = "test",
        batches: list[Any] | None = None,  # of Batch, from _test_batches
        show_progress: bool = False,
        phase: str = "test factors",
        callback: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of ``inputs`` (a batch or a DataLoader); ``batches`` = the same, already checked and moved.
        ``show_progress``: a tqdm bar over the rows; ``callback``: report the phase to ``progress_callback``
        too (a pass over a DataLoader; per-query steps stay off the callback)."""
        batches = self._test_batches(inputs, loss=loss, show_progress=show_progress) if batches is None else batches
        key = _content_key(loss, batches)
        last = self._last_test
        if key is not None and last is not None and last[0] == key:
            return last[1], last[2]  # the same test rows again (proponents, then opponents): no forward
        At, Gt = self._test_factors_of(batches, loss, show_progress, phase, callback)
        self._last_test = (key, At, Gt) if key is not None else None
        return At, Gt

    def _test_factors_of(
        self, batches: list[Any], loss: str, show_progress: bool, phase: str, callback: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._computing():
            states, _ = self._checkpoint_states(show_progress)
            report = self.progress_callback if callback else None
            prog = None
            if show_progress or report is not None:
                prog = _Progress(phase, sum(b.n for b in batches), show_progress, report)
            try:
                if loss == "test":
                    return self._factors_of(
                        batches, states, self.test_reduction_type, self.test_loss_fn, "test batch", prog=prog
                    )
                return self._factors_of(batches, states, self.reduction_type, self.loss_fn, "batch", prog=prog)
            finally:
                if prog is not None:
                    prog.close()


#: Test batches up to this many bytes are recognised by content, so the same rows asked again reuse their factors.
TEST_KEY_BYTES = 1 << 24


def _content_key(loss: str, batches: list[Any]) -> tuple | None:
    """A key equal for two lists of test batches exactly when their tensors are equal (shape, dtype, bytes): CPU
    tensors up to ``TEST_KEY_BYTES`` in all; None (no reuse) for anything else."""
    parts: list[Any] = [loss]
    total = 0
    for b in batches:
        values = [*b.args, *b.kwargs.values(), b.labels] if isinstance(b, Batch) else list(b)
        for v in values:
            if not isinstance(v, torch.Tensor) or v.device.type != "cpu":
                return None
            total += v.numel() * v.element_size()
            if total > TEST_KEY_BYTES:
                return None
            t = v.detach().contiguous()
            parts.append(
                (
                    tuple(t.shape),
                    str(t.dtype),
                    hashlib.blake2b(t.reshape(-1).view(torch.uint8).numpy().data, digest_size=16).digest()
                    if t.numel()
                    else b"",
                )
            )
    return tuple(parts)
