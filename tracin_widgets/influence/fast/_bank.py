"""Where the training-set factors live: on the compute device, in host memory, or in the ``cache_dir`` store.

A ``FactorBank`` holds the factors ``(A, G)`` of every training row and checkpoint (or the store they are read
from block by block), the norms written with them (self-influence without reading them again), their dims,
checkpoint count and dtypes, and the one place that decides where they go. Everything that reads the factors
(the queries, the embeddings, the training predictions) asks the bank for blocks, rows or the last checkpoint's
``G``: only the bank knows whether those come from memory or from disk.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import torch

from .._base import same_device
from .._memory import free_memory
from .._store import DEVICE_COMFORT, FactorStore, dtype_name, human, placement, stream_rows


class Factors(NamedTuple):
    """The training set's factors, one row per example and checkpoint."""

    A: torch.Tensor  # (N, C, da): the inputs of final_fc_layer
    G: torch.Tensor  # (N, C, dg): the loss gradients w.r.t. the model output


def _mm32_supported(device: torch.device) -> bool:
    """Whether ``_mm32`` runs on ``device``: CUDA with torch >= 2.8 (``torch.mm(..., out_dtype=)``)."""
    return device.type == "cuda" and _mm_out_dtype()


@functools.cache
def _mm_out_dtype() -> bool:
    """Whether this torch has ``torch.mm(..., out_dtype=)`` (asked once, on the meta device)."""
    half = torch.empty(1, 1, device="meta", dtype=torch.bfloat16)
    try:
        torch.mm(half, half, out_dtype=torch.float32)  # type: ignore[call-overload]
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def _mm32(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """``train @ test.T`` of two half-precision matrices, accumulated and returned in float32: (m, n)."""
    return torch.mm(train, test.T, out_dtype=torch.float32)  # type: ignore[call-overload]


def _row_norms(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``(n, C, 2)``: ``|g|^2`` and ``|a|^2`` of each row and checkpoint (self-influence is ``sum_c lr_c`` of their
    product), written with the factors so that self-influence never reads them again."""
    return torch.stack([G.pow(2).sum(-1), A.pow(2).sum(-1)], -1)


class _Kept:
    """The factor rows a pass keeps in memory, on ``device``: written into tensors of all ``n`` rows when ``n``
    is known (no second copy from concatenating the blocks at the end), else collected and concatenated."""

    def __init__(self, n: int | None, device: torch.device) -> None:
        self.n, self.device = n, device
        self.full: tuple[torch.Tensor, ...] | None = None
        self.parts: list[tuple[torch.Tensor, ...]] = []

    def add(self, offset: int, *blocks: torch.Tensor) -> None:
        rows = blocks[0].shape[0]
        if self.n is not None and offset + rows > self.n:  # more rows than the dataset's length said
            self.parts = [tuple(f[:offset] for f in self.full)] if self.full is not None else []
            self.n = self.full = None
        if self.n is None:
            self.parts.append(tuple(b.to(self.device) for b in blocks))
            return
        if self.full is None:
            self.full = tuple(torch.empty(self.n, *b.shape[1:], dtype=b.dtype, device=self.device) for b in blocks)
        for f, b in zip(self.full, blocks, strict=True):
            f[offset : offset + rows].copy_(b)

    def result(self, rows: int) -> tuple[torch.Tensor, ...]:
        if self.full is not None:
            return tuple(f[:rows] for f in self.full)
        return tuple(torch.cat(p) for p in zip(*self.parts, strict=True))


class FactorBank:
    """The training-set factors and where they live: ``placement`` is ``"device"`` (on the compute device),
    ``"host"`` (in host memory, copied to the device block by block for each query) or ``"stream"`` (read from
    the store block by block); None while a pass is still filling the bank.

    ``factors``: the ``(A, G)`` tensors in memory (None when streamed); ``store``: the store they are streamed
    from (None in memory); ``norms``: ``(N, C, 2)`` ``|g|^2, |a|^2`` per row and checkpoint, written with the
    factors (78 GB of host-resident float32 factors at ImageNet's size: self-influence 7.3 s on an H100 from the
    factors, 0.027 s from the norms); None when they are kept as computed in memory (read off the factors).
    """

    def __init__(
        self, device: torch.device, max_memory: int | None, factor_dtype: torch.dtype | None, block_bytes: int
    ) -> None:
        self.device, self.max_memory, self.block_bytes = device, max_memory, block_bytes
        self.requested_dtype = factor_dtype  # the engine's factor_dtype argument (None: as computed)
        self.factors: Factors | None = None
        self.store: FactorStore | None = None
        self.norms: torch.Tensor | None = None
        self.placement: str | None = None
        self.dims: tuple[int, int] = (0, 0)  # dim(a), dim(g)
        self.n_ckpts = 0
        self.compute_dtype = torch.get_default_dtype()  # of the factors as computed (the queries' dtype)
        self.factor_dtype = torch.get_default_dtype()  # of the factors as kept
        self.warned_host = False
        self._on_device = False  # the factors in memory are on the compute device

    # ------------------------------------------------------------------ what the bank holds
    def set_dims(self, da: int, dg: int, compute_dtype: torch.dtype) -> None:
        self.dims, self.compute_dtype = (da, dg), compute_dtype
        self.factor_dtype = self.requested_dtype or compute_dtype

    @property
    def streamed(self) -> bool:
        """Whether the factors are read from the store block by block (never all in memory)."""
        return self.factors is None

    @property
    def as_computed(self) -> bool:
        """Whether the factors are kept in the dtype they were computed in (no half-precision ``factor_dtype``)."""
        return self.factor_dtype == self.compute_dtype

    @property
    def n_rows(self) -> int:
        if self.factors is not None:
            return int(self.factors.A.shape[0])
        assert self.store is not None
        return self.store.rows

    def nbytes(self, rows: int | None = None) -> int:
        """Bytes of the training-set factors of ``rows`` rows (default: all; known once their dims are)."""
        rows = self.n_rows if rows is None else rows
        da, dg = self.dims
        return rows * self.n_ckpts * (da + dg) * torch.empty((), dtype=self.factor_dtype).element_size()

    def target(self, where: str) -> torch.device:
        """The device factors placed ``where`` are kept on."""
        return self.device if where == "device" else torch.device("cpu")

    def resident(self) -> Factors | None:
        """The factors when they are on the compute device as computed (read there as they are), else None."""
        f = self.factors
        return f if f is not None and f.A.dtype == self.compute_dtype and self.placement != "host" else None

    # ------------------------------------------------------------------ where they go
    def place(self, rows: int | None, has_store: bool) -> str:
        """Where factors of ``rows`` rows go: "device", "host" or "stream" (``_store.placement``); "stream"
        without a store means they do not fit (the caller says why)."""
        if rows is None:  # a dataset without a length: decided when the factors are complete
            return "device" if self.device.type == "cpu" else "host"
        return placement(self.nbytes(rows), self.device, self.max_memory, has_store)

    def host_note(self, rows: int) -> str | None:
        """The warning that factors of ``rows`` rows stay in host memory (once per bank; None after that)."""
        if self.warned_host:
            return None
        self.warned_host = True
        nbytes, free = self.nbytes(rows), free_memory(self.device)
        full = self.factor_dtype not in (torch.bfloat16, torch.float16)  # not half precision yet
        fits = full and nbytes / 2 <= DEVICE_COMFORT * free
        hint = (
            "factor_dtype=torch.bfloat16 halves them" + (" and keeps them on the GPU" if fits else "")
            if full
            else "a GPU with more free memory keeps them there"
        )
        return (
            f"the training factors take {human(nbytes)} ({dtype_name(self.factor_dtype)}), more than "
            f"{DEVICE_COMFORT:.0%} of {self.device}'s free memory ({human(free)}): they are kept in host memory "
            f"and every query copies them to {self.device} (seconds a query: 7.3 s for 78 GB on an H100, 22 ms "
            f"with them on the GPU); {hint}."
        )

    def cast(self, A: torch.Tensor, G: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors in ``factor_dtype``; float16 overflowing (beyond +-65504) is an error, not an inf."""
        if self.factor_dtype == A.dtype:
            return A, G
        A, G = A.to(self.factor_dtype), G.to(self.factor_dtype)
        if self.factor_dtype == torch.float16 and not bool(torch.isfinite(A).all() & torch.isfinite(G).all()):
            raise ValueError(
                f"factor_dtype=torch.float16 cannot hold the factors of training rows from {offset} on (values "
                "beyond +-65504): use factor_dtype=torch.bfloat16 (the range of float32) or torch.float32."
            )
        return A, G

    # ------------------------------------------------------------------ filling it
    def keep(self, where: str, A: torch.Tensor, G: torch.Tensor, norms: torch.Tensor | None) -> FactorBank:
        """Hold ``A``, ``G`` (and their norms) in memory, placed ``where``."""
        self.placement, self.factors, self.norms = where, Factors(A, G), norms
        self._on_device = same_device(A.device, self.device)
        return self

    def keep_store(self, store: FactorStore) -> FactorBank:
        """Stream the factors from ``store`` (complete)."""
        self.placement, self.store, self.norms = "stream", store, store.norms()
        return self

    def describe(self, store: FactorStore) -> None:
        """Take the dims, checkpoint count and dtypes of the factors in ``store``."""
        self.dims, self.n_ckpts = (store.da, store.dg), store.C
        self.factor_dtype, self.compute_dtype = store.dtype, store.norm_dtype

    def adopt(self, store: FactorStore, where: str) -> FactorBank:
        """Use a complete store (``describe``\\ d): loaded ``where`` ("device" or "host"), or streamed."""
        if where == "stream":
            return self.keep_store(store)
        target = self.target(where)
        A = torch.empty(store.rows, store.C, store.da, dtype=store.dtype, device=target)
        G = torch.empty(store.rows, store.C, store.dg, dtype=store.dtype, device=target)
        for s, a, g in store.blocks(stream_rows(store.row_bytes, None), pin=target.type == "cuda"):
            A[s : s + a.shape[0]].copy_(a)
            G[s : s + g.shape[0]].copy_(g)
        return self.keep(where, A, G, store.norms() if store.dtype != store.norm_dtype else None)

    # ------------------------------------------------------------------ reading it
    def blocks(
        self, step: int, span: tuple[int, int] | None = None, native: bool = False
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(start, A, G)`` chunks of at most ``step`` training rows (of rows ``span=(start, stop)``, default
        all) on the compute device, in the dtype the factors were computed in (``native``: as kept), from memory
        or read from the store block by block."""
        dt = self.factor_dtype if native else self.compute_dtype
        lo, hi = span if span is not None else (0, None)
        if self.factors is None:
            return self._stream_blocks(step, lo, hi, dt)
        A, G = self.factors
        if not self._on_device or A.dtype != dt:  # copied to the device or converted: bounded blocks
            row = A.shape[1] * (A.shape[2] + G.shape[2]) * torch.empty((), dtype=dt).element_size()
            step = min(step, max(1, self.block_bytes // max(1, row)))
        end = A.shape[0] if hi is None else hi
        dev = self.device
        if end - lo <= step:  # one block (a warm query on a small training set): no generator
            return iter([(lo, A[lo:end].to(dev, dt), G[lo:end].to(dev, dt))] if end > lo else [])
        return self._memory_blocks(lo, end, step, dt)

    def _memory_blocks(
        self, lo: int, end: int, step: int, dt: torch.dtype
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        assert self.factors is not None
        A, G = self.factors
        for s in range(lo, end, step):
            e = min(s + step, end)
            yield s, A[s:e].to(self.device, dt), G[s:e].to(self.device, dt)

    def _stream_blocks(
        self, step: int, lo: int, hi: int | None, dt: torch.dtype
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        assert self.store is not None
        dev = self.device
        rows = stream_rows(self.store.row_bytes, self.max_memory)
        for s, A, G in self.store.blocks(rows, pin=dev.type == "cuda", start=lo, stop=hi):
            A, G = A.to(dev, non_blocking=True), G.to(dev, non_blocking=True)
            for j in range(0, A.shape[0], step):
                yield s + j, A[j : j + step].to(dt), G[j : j + step].to(dt)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors of training rows ``idx`` (any shape), on the compute device, in the computation dtype."""
        if self.factors is not None:
            A, G = self.factors
            i = idx.to(A.device)
            return A[i].to(self.device, self.compute_dtype), G[i].to(self.device, self.compute_dtype)
        assert self.store is not None
        A, G = self.store.gather(idx)
        return A.to(self.device, self.compute_dtype), G.to(self.device, self.compute_dtype)

    def last_G(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, G (n, dg))``: the last checkpoint's loss gradients, on the CPU as kept, ``rows`` at a time (a
        store reads only that checkpoint's ``G`` file)."""
        if self.factors is not None:
            G = self.factors.G
            for s in range(0, G.shape[0], rows):
                yield s, G[s : s + rows, -1].cpu()
            return
        assert self.store is not None
        yield from self.store.last_G(rows)

    def row_norms(self, span: tuple[int, int] | None = None) -> Iterator[torch.Tensor]:
        """``(n, C, 2)`` norms of the training rows ``span`` (default all): the norms written with the factors
        (exact also for half-precision ones), else block by block from the factors (no temporaries the size of
        the factors)."""
        if self.norms is not None:
            yield self.norms if span is None else self.norms[span[0] : span[1]]
            return
        step = max(1, self.block_bytes // max(1, self.nbytes(1)))
        for _, A, G in self.blocks(step, span):
            yield _row_norms(A, G)
