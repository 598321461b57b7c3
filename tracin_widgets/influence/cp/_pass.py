"""TracInCP's gradient pass: per-checkpoint blocks of a chunk of rows, checked finite, and one pass over the
training data that gives every self-influence and hands each chunk's scores to a sink.

Memory is bounded by one chunk: the training rows of a batch are cut into chunks whose materialised per-example
gradients (one checkpoint at a time, with the temporaries that compute them) fit the budget
(``max_memory``, else ``max_grad_floats`` values but at most half the free memory), and whose forward and
backward fit the free memory; each chunk's gradients are scored against the test gradients, added into the
self-influence and dropped before the next checkpoint's. Only the test gradients are kept for a whole pass."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from .. import _memory
from .._base import TracInCPBase
from .._cache import hash_tensors
from .._data import batch_len, rows_getter, split_rows
from .._loss import total_loss
from .._topk import ScoreSink
from .._types import _Progress
from ._grad_sample import (
    Block,
    DenseBlock,
    Plan,
    Workspace,
    blocks_cat,
    blocks_dot,
    blocks_nonfinite_rows,
    blocks_sq,
    blocks_sum,
    dense_grads,
    dense_grads_loop,
    hooked_blocks,
    make_plan,
    named_grads,
)

PROBE_ROWS = (2, 3)  # the plan's two probe forwards: a hooked layer's inputs must follow the batch's rows


class BlockPass(TracInCPBase):
    """The per-example gradient machinery of ``TracInCP`` (which sets these attributes in its ``__init__``)."""

    _param_names: list[str]  # the selected parameters, by name in the computed module's state dict
    reduction_type: str  # how loss_fn reduces (``_loss.loss_mode``); test_reduction_type: test_loss_fn's
    test_reduction_type: str
    _plan: Plan | None  # made on the first batch
    _self_influence: torch.Tensor | None  # the training set's, once a pass has run
    _warned_loop: bool  # vmap failed on this model: the loop is used from then on
    max_memory: int | None  # bytes of per-example gradients one chunk may materialise (None: the default)

    cpu_chunk = 512  # rows per training batch on the CPU (merged loader batches; scores do not depend on it)
    gpu_rows = 2048  # small loader batches (workers) are merged up to this many rows on a GPU
    max_grad_floats = 1 << 27  # without max_memory: the values one chunk may materialise (512 MB in float32)

    # ------------------------------------------------------------------ plan
    def _make_plan(self, state: dict, batch: tuple, what: str) -> None:
        """Which selected layers get their gradients from hooks: two small probe forwards (rows of ``batch``)."""
        n = batch_len(batch)
        probes = []
        for k in PROBE_ROWS:
            feats = tuple(
                x[torch.arange(k, device=x.device) % n]
                if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n
                else x
                for x in batch[:-1]
            )
            probes.append((k, lambda f=feats: self._forward(state, f, what)))
        self._plan = make_plan(self._net, self._param_names, probes)

    def _ensure_plan(self, states: list[dict], batch: tuple, what: str) -> Plan:
        """Measure the activation memory of a row (once) and make the plan (once)."""
        self._measure_rows(states[0], batch, what)
        if self._plan is None:
            self._make_plan(states[0], batch, what)
        assert self._plan is not None
        return self._plan

    def gradient_paths(self) -> dict[str, str] | None:
        """How the per-example gradients of each selected layer are computed (factorised, token Gram, hooks,
        closed form, vmap), as the last query chose; None before the first pass."""
        return None if self._plan is None else self._plan.paths()

    # ------------------------------------------------------------------ per-example gradients
    def _blocks(
        self, state: dict, batch: tuple, mode: str, loss_fn: Any, what: str, ws: Workspace | None = None
    ) -> list[Block]:
        plan, n = self._ensure_plan([state], batch, what), batch_len(batch)
        blocks: list[Block] = []
        if plan.hooked:

            def loss() -> torch.Tensor:
                return total_loss(mode, loss_fn, self._forward(state, tuple(batch[:-1]), what), batch[-1], n)

            blocks += hooked_blocks(plan, loss, n, ws)
        if plan.dense:
            if self._warned_loop:  # vmap failed on this model before: straight to the loop
                dp = {k: state[k] for k in plan.dense}
                rest = {k: v for k, v in state.items() if k not in dp}
                parts = dense_grads_loop(self._net, dp, rest, plan.dense, batch, mode, loss_fn)
            else:
                parts = dense_grads(self._net, state, plan.dense, batch, mode, loss_fn, self._vmap_failed)
            blocks.append(DenseBlock(parts))
        return blocks

    def _vmap_failed(self, err: Exception) -> None:
        if not self._warned_loop:
            self._warn(
                f"torch.func.vmap could not run this model ({type(err).__name__}: {str(err)[:200]}); falling back "
                "to a slower per-example gradient loop.",
                stacklevel=6,
            )
            self._warned_loop = True

    def _merge_rows(self) -> int:
        return self.cpu_chunk if self.device.type == "cpu" else self.gpu_rows

    def _grad_budget(self, itemsize: int) -> int:
        """Bytes of per-example gradients one chunk may materialise (``_memory.chunk_budget``)."""
        return _memory.chunk_budget(self.device, self.max_memory, self.max_grad_floats * itemsize)

    def _row_chunk(self, n: int, states: list[dict]) -> int:
        """Rows per chunk of a batch of ``n``: the per-example gradients within the budget, the forward and
        backward within the free memory."""
        assert self._plan is not None
        state = states[0]
        itemsize = state[self._param_names[0]].element_size()
        per_row = max(1, self._plan.row_floats({k: state[k].numel() for k in self._plan.dense})) * itemsize
        cap = max(1, self._grad_budget(itemsize) // per_row)
        return min(n, cap, self._rows(self._merge_rows(), backward=True))

    def _chunks(self, batch: tuple, states: list[dict], what: str, offset: int) -> Iterator[tuple[int, tuple]]:
        """The row chunks of ``batch`` with their offsets (rows ``offset``.. of its source)."""
        self._ensure_plan(states, batch, what)
        n = batch_len(batch)
        chunk = self._row_chunk(n, states)
        for i, part in enumerate(split_rows(batch, n, chunk)):
            yield offset + i * chunk, part

    def _all_blocks(
        self, batch: tuple, states: list[dict], mode: str, loss_fn: Any, what: str, offset: int = 0
    ) -> list[list[Block]]:
        """Per-checkpoint blocks of ``batch``, kept (the test rows, a few training rows): chunks joined."""
        parts = [
            self._all_blocks_rows(part, states, mode, loss_fn, what, off)
            for off, part in self._chunks(batch, states, what, offset)
        ]
        return [blocks_cat([p[c] for p in parts]) for c in range(len(states))]

    def _all_blocks_rows(
        self, batch: tuple, states: list[dict], mode: str, loss_fn: Any, what: str, offset: int = 0
    ) -> list[list[Block]]:
        out, sums = [], []
        for state in states:
            blocks = self._blocks(state, batch, mode, loss_fn, what)
            sums.append(blocks_sum(blocks, self.device))
            out.append(blocks)
        self._check_chunk(torch.stack(sums), batch, states, mode, loss_fn, what, offset)
        return out

    def _check_chunk(
        self, sums: torch.Tensor, rows: tuple, states: list[dict], mode: str, loss_fn: Any, what: str, offset: int
    ) -> None:
        """One sync for the chunk: every gradient finite, else (the gradients recomputed) the rows named."""

        def locate() -> None:
            m = batch_len(rows)
            bad = torch.stack([blocks_nonfinite_rows(self._blocks(s, rows, mode, loss_fn, what), m) for s in states], 1)
            self._raise_nonfinite({"gradients": bad}, offset, what, rows_getter([rows], offset), False)

        self._check_all_finite(sums.reshape(1, -1), [f"gradients for the {what}"], locate)

    def _score_chunk(
        self,
        rows: tuple,
        states: list[dict],
        lrs: list[float],
        test_blocks: list[list[Block]] | None,
        what: str,
        offset: int,
        ws: Workspace | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(self-influence (m,), scores against the test rows (n_test, m) or None)`` of a chunk of training
        rows (``loss_fn``), one checkpoint's gradients at a time, each dropped once scored."""
        mode, loss_fn = self.reduction_type, self.loss_fn
        sq: torch.Tensor | None = None
        sc: torch.Tensor | None = None
        sums = []
        for c, (lr, state) in enumerate(zip(lrs, states, strict=True)):
            blocks = self._blocks(state, rows, mode, loss_fn, what, ws)
            sums.append(blocks_sum(blocks, self.device))
            term = lr * blocks_sq(blocks)
            sq = term if sq is None else sq + term
            if test_blocks is not None:
                dot = lr * blocks_dot(test_blocks[c], blocks)
                sc = dot if sc is None else sc + dot
            del blocks
        self._check_chunk(torch.stack(sums), rows, states, mode, loss_fn, what, offset)
        assert sq is not None
        return sq, sc

    # ------------------------------------------------------------------ passes
    def _pass(
        self, test_blocks: list[list[Block]] | None, show_progress: bool, phase: str, sink: ScoreSink | None = None
    ) -> torch.Tensor:
        """One pass over the training data: the self-influence (returned, ``(n_train,)``) and, with
        ``test_blocks``, each chunk's scores against them handed to ``sink`` (the matrix or a running top-k:
        nothing here grows with ``n_test * n_train``, nor with the rows of a batch beyond one chunk)."""
        states, lrs = self._checkpoint_states(show_progress)
        if test_blocks is None and self._plan is not None:
            self._plan.choose(0)
        self_parts = []
        ws = Workspace()  # one chunk's materialised gradients, reused by the next (dropped with the pass)
        prog = _Progress(phase, self._n_train(), show_progress, self.progress_callback)
        try:
            for offset, batch in self._train_batches(self._pass_rows(states[0], self._merge_rows(), backward=True)):
                if test_blocks is None and self._plan is None:
                    self._ensure_plan(states, batch, "training batch").choose(0)
                for off, part in self._chunks(batch, states, "training batch", offset):
                    sq, sc = self._score_chunk(part, states, lrs, test_blocks, "training batch", off, ws)
                    self_parts.append(sq.cpu())
                    if sc is not None and sink is not None:
                        sink.add(sc, off)
                prog.update(batch_len(batch))
        finally:
            prog.close()
        if not self_parts:
            raise ValueError("train_dataset is empty: there is nothing to compute influence against.")
        self_inf = torch.cat(self_parts)
        if self._self_influence is None:
            self._self_influence = self_inf
            self._cache_save(self._cache_file("self", self._key()), {"self": self_inf})
        return self_inf

    def _test_blocks(
        self, batches: list[tuple], states: list[dict], prog: _Progress | None = None
    ) -> list[list[Block]]:
        """Per-checkpoint blocks of every test row (``test_loss_fn``), the batches joined; the plan's choice
        (token Gram or materialised) made for this many test rows first."""
        self._ensure_plan(states, batches[0], "test batch").choose(sum(batch_len(b) for b in batches))
        parts, start = [], 0
        for b in batches:
            mode, loss_fn = self.test_reduction_type, self.test_loss_fn
            parts.append(self._all_blocks(b, states, mode, loss_fn, "test batch", start))
            start += batch_len(b)
            if prog is not None:
                prog.update(batch_len(b))
        return [blocks_cat([p[c] for p in parts]) for c in range(len(states))]

    def _key(self) -> str:
        return f"{','.join(self._param_names)}|{self.reduction_type}"

    def _test_key(self, batches: list[tuple]) -> str:
        h = hashlib.sha256()
        hash_tensors(batches, h)
        return h.hexdigest()

    def _named_grads(self, blocks: list[Block], m: int) -> dict[str, torch.Tensor]:
        """Per-example gradients ``(m, numel)`` of every selected parameter, by name (``named_grads``)."""
        assert self._plan is not None
        return named_grads(self._plan, blocks, m)
