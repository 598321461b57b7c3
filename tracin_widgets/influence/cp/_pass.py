"""TracInCP's gradient pass: per-checkpoint blocks of a batch (in row chunks that fit), checked finite, and one
pass over the training data that gives every self-influence and hands each batch's scores to a sink."""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import torch

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
    blocks_cat,
    blocks_dot,
    blocks_nonfinite_rows,
    blocks_sq,
    blocks_sum,
    dense_grads,
    hooked_blocks,
    make_plan,
    named_grads,
    sum_terms,
)


class BlockPass(TracInCPBase):
    """The per-example gradient machinery of ``TracInCP`` (which sets these attributes in its ``__init__``)."""

    _param_names: list[str]  # the selected parameters, by name in the computed module's state dict
    reduction_type: str  # how loss_fn reduces (``_loss.loss_mode``); test_reduction_type: test_loss_fn's
    test_reduction_type: str
    _plan: Plan | None  # made on the first batch
    _self_influence: torch.Tensor | None  # the training set's, once a pass has run
    _warned_loop: bool

    # ------------------------------------------------------------------ parameters
    def _make_plan(self, state: dict, batch: tuple, what: str) -> None:
        """Which selected Linear and Conv2d layers get their gradients from hooks (run once, on a whole batch)."""
        forward = functools.partial(self._forward, state, tuple(batch[:-1]), what)
        self._plan = make_plan(self._net, self._param_names, batch_len(batch), forward)

    # ------------------------------------------------------------------ per-example gradients
    def _blocks(self, state: dict, batch: tuple, mode: str, loss_fn: Any, what: str) -> list[Block]:
        if self._plan is None:
            self._make_plan(state, batch, what)
        assert self._plan is not None
        plan, n = self._plan, batch_len(batch)
        blocks: list[Block] = []
        if plan.factored or plan.conv:

            def loss() -> torch.Tensor:
                return total_loss(mode, loss_fn, self._forward(state, tuple(batch[:-1]), what), batch[-1], n)

            blocks += hooked_blocks(plan, loss, n)
        if plan.dense:
            blocks.append(
                DenseBlock(dense_grads(self._net, state, plan.dense, batch, mode, loss_fn, self._vmap_failed))
            )
        return blocks

    def _vmap_failed(self, err: Exception) -> None:
        if not self._warned_loop:
            self._warn(
                f"torch.func.vmap could not run this model ({type(err).__name__}: {str(err)[:200]}); falling back "
                "to a slower per-example gradient loop.",
                stacklevel=6,
            )
            self._warned_loop = True

    cpu_chunk = 512  # rows per forward/backward on the CPU (scores do not depend on it)
    gpu_rows = 2048  # small loader batches (workers) are merged up to this many rows on a GPU
    max_grad_floats = 1 << 27  # cap on materialised per-example gradient floats per chunk (512 MB)

    def _merge_rows(self) -> int:
        return self.cpu_chunk if self.device.type == "cpu" else self.gpu_rows

    def _row_chunk(self, n: int) -> int:
        assert self._plan is not None
        conv, dense = self._plan.conv, self._plan.dense
        names = [f"{h.name}.weight" for h in conv] + [f"{h.name}.bias" for h in conv if h.has_bias] + list(dense)
        sizes = dict((k, v.numel()) for k, v in self._net.state_dict().items())
        per_row = max(1, sum(sizes.get(k, 0) for k in names))
        cap = max(1, self.max_grad_floats // per_row)
        return min(n, cap, self._rows(self._merge_rows(), backward=True))  # activation memory bounds the rows

    def _ensure_plan(self, states: list[dict], batch: tuple, what: str) -> None:
        """Measure the activation memory of a row and make the plan (on at most the rows one forward takes)."""
        self._measure_rows(states[0], batch, what)
        if self._plan is None:
            n = batch_len(batch)
            self._make_plan(states[0], split_rows(batch, n, self._rows(self._merge_rows(), backward=True))[0], what)

    def _all_blocks(
        self, batch: tuple, states: list[dict], mode: str, loss_fn: Any, what: str, offset: int = 0
    ) -> list[list[Block]]:
        """Per-checkpoint blocks of ``batch`` (rows ``offset``.. of its source, for error messages)."""
        self._ensure_plan(states, batch, what)
        n = batch_len(batch)
        chunk = self._row_chunk(n)
        if chunk < n:
            parts = [
                self._all_blocks_rows(b, states, mode, loss_fn, what, offset + i * chunk)
                for i, b in enumerate(split_rows(batch, n, chunk))
            ]
            return [blocks_cat([p[c] for p in parts]) for c in range(len(states))]
        return self._all_blocks_rows(batch, states, mode, loss_fn, what, offset)

    def _all_blocks_rows(
        self, batch: tuple, states: list[dict], mode: str, loss_fn: Any, what: str, offset: int = 0
    ) -> list[list[Block]]:
        out, sums = [], []
        for state in states:
            blocks = self._blocks(state, batch, mode, loss_fn, what)
            sums.append(blocks_sum(blocks, self.device))
            out.append(blocks)

        def locate() -> None:
            bad = torch.stack([blocks_nonfinite_rows(blocks, batch_len(batch)) for blocks in out], 1)
            self._raise_nonfinite({"gradients": bad}, offset, what, rows_getter([batch], offset), False)

        self._check_all_finite(torch.stack(sums).reshape(1, -1), [f"gradients for the {what}"], locate)
        return out

    # ------------------------------------------------------------------ passes
    def _pass(
        self, test_blocks: list[list[Block]] | None, show_progress: bool, phase: str, sink: ScoreSink | None = None
    ) -> torch.Tensor:
        """One pass over the training data: the self-influence (returned, ``(n_train,)``) and, with
        ``test_blocks``, each training batch's scores against them handed to ``sink`` (the matrix or a running
        top-k: nothing here grows with ``n_test * n_train``)."""
        states, lrs = self._checkpoint_states(show_progress)
        self_parts = []
        prog = _Progress(phase, self._n_train(), show_progress, self.progress_callback)
        try:
            for offset, batch in self._train_batches(self._pass_rows(states[0], self._merge_rows(), backward=True)):
                per_ckpt = self._all_blocks(batch, states, self.reduction_type, self.loss_fn, "training batch", offset)
                sq = sum_terms(lr * blocks_sq(b) for lr, b in zip(lrs, per_ckpt, strict=True))
                self_parts.append(sq.cpu())
                if test_blocks is not None and sink is not None:
                    sc = sum_terms(lr * blocks_dot(tb, b) for lr, tb, b in zip(lrs, test_blocks, per_ckpt, strict=True))
                    sink.add(sc, offset)
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
        """Per-checkpoint blocks of every test row (``test_loss_fn``), the batches joined."""
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
        return named_grads(self._plan, blocks, m, {k: v.numel() for k, v in self._net.state_dict().items()})
