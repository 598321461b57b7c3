"""TracInCPFast and TracInCPFastRandProj: last-layer TracIn from cached rank-one factors.

For the hooked layer, the gradient of example i's loss w.r.t. the layer weight is g_i a_i^T, with a_i the
layer's input and g_i the loss gradient w.r.t. the model output (Captum's semantics). So

    influence(t, i) = sum_c lr_c (g_t . g_i)(a_t . a_i),      self(i) = sum_c lr_c |g_i|^2 |a_i|^2.

One pass over the training data computes (a, g) for every checkpoint (each checkpoint loaded once);
after it every query is a couple of matrix products.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from . import _cache
from ._base import (
    Checkpoints,
    Inputs,
    KMostInfluentialResults,
    ProgressCallback,
    TracInCPBase,
    _Progress,
    check_k,
    check_proponents,
    check_train_indices,
    locked,
    merge_topk,
    same_device,
    sqrt_lr,
)
from ._data import batch_len, rows_getter, split_rows, tensor_fast_path
from ._distributed import (
    agree,
    all_equal,
    all_ok,
    call_key,
    gather_columns,
    join_shards,
    process_group,
    row_range,
    shard_target,
)
from ._embeddings import EmbeddingFile, EmbeddingWriter, embedding_tag
from ._layers import resolve_module, trace_output_module
from ._loss import loss_mode, total_loss
from ._memory import free_memory
from ._model import inner_module, model_lock
from ._nearest_neighbors import AnnoyNearestNeighbors, NearestNeighbors
from ._ops import FastCpuOps
from ._store import (
    DEVICE_COMFORT,
    FactorStore,
    StoreLock,
    StoreWriter,
    check_factor_dtype,
    dtype_name,
    human,
    lock_store,
    parse_max_memory,
    placement,
    store_error,
    store_folder,
    stream_rows,
)
from ._store import FORMAT as STORE_FORMAT


class Factors(NamedTuple):
    """The training set's factors, one row per example and checkpoint."""

    A: torch.Tensor  # (N, C, da): the inputs of final_fc_layer
    G: torch.Tensor  # (N, C, dg): the loss gradients w.r.t. the model output


class _Stacked(NamedTuple):
    """The checkpoint states stacked along a new first dimension, for one vmapped forward over all of them."""

    states: list[dict[str, torch.Tensor]]  # the states they were stacked from (identity marks them current)
    params: dict[str, torch.Tensor]  # name -> (n_checkpoints, *shape)


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


def _has_rows(x: Any, n: int) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n


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


class TracInCPFast(TracInCPBase):
    """TracIn on the last fully-connected layer with the rank-one trick, with Captum 0.9's ``TracInCPFast`` API.

    The loss gradient w.r.t. ``final_fc_layer``'s weight is ``g a^T`` (``a``: the layer's input, ``g``: the loss
    gradient w.r.t. the model output), so ``influence(t, i) = sum_c lr_c (g_t . g_i)(a_t . a_i)`` over the
    checkpoints ``c``. One pass over the training data keeps ``a`` and ``g`` of every checkpoint (the
    "factors"); after it every query is a couple of matrix products. Like Captum, the layer's bias gradient is
    left out and ``final_fc_layer``'s *input* is hooked while the loss gradient is taken w.r.t. the *model
    output*; a ``TracInWarning`` says so when ``final_fc_layer`` is not the linear layer that produces the
    output.

    Args:
        model: the trained ``nn.Module`` (an ``nn.DataParallel`` / ``DistributedDataParallel`` wrapper is fine: the
            module inside is computed on). It is called as ``model(*batch[:-1])`` and must return a tensor whose
            first dimension is the batch. Scores are computed in eval mode, and after every call the model is as
            it was given (weights, train/eval flags, ``requires_grad``, device).
        final_fc_layer: the model's last fully-connected layer, as the module (``model.fc3``) or its name
            (``"fc3"``); ``find_final_linear_layer(model, x)`` finds it. It must run exactly once per forward
            pass. An unknown name is a ``ValueError`` suggesting close ones.
        train_dataset: the training data: a ``Dataset`` whose items are ``(*features, label)``, or a ``DataLoader``
            of such batches that yields every row once, in order (no shuffling sampler, no ``drop_last``). Other
            forms (a tuple ``(X, Y)``, dict items) are a ``TypeError`` at construction saying how to wrap them.
        checkpoints: the checkpoint files: a list of paths (natural-sorted, as Captum), one file, or a folder
            (every regular, non-hidden file in it, whatever its extension). Each is loaded once per instance.
        checkpoints_load_func: ``f(model, path) -> lr``: loads the checkpoint at ``path`` into ``model`` and
            returns its learning rate (a finite number >= 0; checked as each loads). Default None: a state dict,
            or a dict holding one under ``"model_state_dict"`` / ``"state_dict"`` (learning rate from its
            ``"learning_rate"`` or ``"lr"`` entry, else 1.0), loaded with ``torch.load(weights_only=weights_only)``.
        loss_fn: the training loss ``loss_fn(outputs, labels)`` with ``reduction="sum"`` or ``"mean"`` (the
            gradient is then multiplied back by the batch size, as Captum); required (None is a ``ValueError``).
            A loss without a ``reduction`` attribute is assumed to sum, with a ``TracInWarning``.
        batch_size: rows per batch when ``train_dataset`` is a Dataset (ignored for a DataLoader). Default None
            means 512 (Captum's default is 1). Scores do not depend on it: the rows per forward pass follow
            the measured activation memory.
        test_loss_fn: the loss of the test examples in ``influence``, with the same rules (default None:
            ``loss_fn``). ``self_influence(inputs)`` uses ``loss_fn``.
        vectorize: accepted for Captum compatibility (Captum's jacobian switch); the gradients here need no
            jacobian, so it changes nothing (default False).
        device: where to compute: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` (default None: the
            model's device). Checked against this machine at construction (a missing GPU is a ``ValueError``);
            the model is moved there for each call and back afterwards, and batches are moved for you.
        num_workers: ``DataLoader`` workers reading ``train_dataset`` (not used when it is a DataLoader). Default
            None: none on the CPU, for a ``TensorDataset`` (sliced directly) or a recognised torchvision CIFAR
            dataset (read vectorised); on a GPU up to one per spare core (at most 16), trimmed to
            ``sqrt(read time / 20 ms)`` after timing a few items. Scores do not depend on it.
        progress_callback: ``f(phase: str, done: int, total: int)``, called as each phase of a long computation
            advances (``total`` is -1 when unknown). Raising from it (e.g. ``tracin_widgets.influence.Cancelled``)
            aborts cleanly: the model is restored and nothing partial is used as complete (a ``cache_dir`` store
            keeps the blocks written so far, and the next call resumes from them). Default None.
        cache_dir: a folder where the training-set factors (shared by ``TracInCPFast`` and
            ``TracInCPFastRandProj``) are written during the pass, as a store (a folder of plain row-major files
            and a ``manifest.json``, see ``influence/_store.py``), and reused by later instances (default None:
            kept in memory only). An interrupted pass (an exception, ``Cancelled``, Ctrl-C, a killed job) resumes
            from the last block written; a second process writing the same store is refused. A store is reused
            only when the loss (type and settings), the layers, the checkpoint files' contents and learning rates,
            ``checkpoints_load_func``, the model's architecture and precision, the device type, ``data_version``
            and the training data are all the same. A folder that cannot be written gives a ``TracInWarning``
            before the pass (results stay in memory); the checkpoints folder itself is a ``ValueError``.
            Under ``torchrun`` (a ``torch.distributed`` default process group, or torchrun's ``WORLD_SIZE``,
            ``RANK`` and ``LOCAL_RANK`` environment, in which case the default group is initialised here with
            backend ``"nccl"`` on a CUDA device, ``"gloo"`` on the CPU; give each rank its own GPU with
            ``device=f"cuda:{LOCAL_RANK}"``) the pass is split by rank over contiguous row ranges, each rank
            writing its rows into its own shard next to the store (reading only those rows where the data can be
            read by index: a Dataset, or a plain batched ``DataLoader`` over one; an ``IterableDataset`` is read
            from its start); rank 0 joins the shards into the store (the same files as one process writes) and
            every rank then reads all of it. ``cache_dir`` is then
            required, a folder every rank shares: None is a ``ValueError`` (every rank computing everything
            would multiply the work, not share it). Every rank must make the call that needs the factors
            (``fit()`` first is simplest): the ranks wait for each other there. Rank 0's join needs room for
            the factors twice in ``cache_dir`` for a moment. Queries are this process's alone unless every
            rank calls ``influence(..., distributed=True)`` or ``self_influence(distributed=True)``: each rank
            then scores its contiguous share of the training rows and every rank gets the whole result.
        weights_only: passed to ``torch.load`` by the default ``checkpoints_load_func`` (default True: only
            tensors and plain containers are unpickled). Pass False only for checkpoint files you trust.
        data_version: any string naming the version of the training data (default None), part of the cache
            key. Array-backed datasets (``TensorDataset``, a ``Subset`` of one, torchvision's CIFAR/MNIST) are
            hashed in full; any other dataset only by its type, length and 24 items spread over it, so change
            ``data_version`` when its contents change (a dataset without a length is reused only with one).
        max_memory: the most memory the training-set factors may take: bytes as an int, or a string such as
            ``"512MB"`` or ``"10GiB"`` (MB/GB: powers of 1000, MiB/GiB: of 1024, as in Hugging Face accelerate).
            Factors larger than that stay in the ``cache_dir`` store and every query reads it block by block (same
            results, at disk speed); without a ``cache_dir`` that is a ``ValueError`` before the pass. Default
            None: on the compute device when they take less than 3/4 of a GPU's free memory (half of the
            CPU's), else in host memory, else (with a ``cache_dir``) read from the store.
        factor_dtype: the dtype the factors are kept in: None (the default: as computed, ``torch.float32`` for a
            float32 model, Captum's numbers), ``torch.float32``, or ``torch.bfloat16`` / ``torch.float16`` (half
            the memory, disk and traffic; products still accumulate in float32; scores are approximate: with
            bfloat16 within 0.25 % of each test row's largest score and the same top-10 on the tests' models and
            the tutorial's, see ``benchmarks/probes/factor_dtype.py``). Self-influence stays exact (its norms are
            kept in the computation dtype). Anything else is a ``ValueError``.
    """

    _cache_kind = "fast"  # TracInCPFastRandProj reuses TracInCPFast's cached factors
    cpu_chunk = 512  # rows per forward on the CPU (cache-friendlier than 2048; scores do not depend on it)
    gpu_rows = 16384  # rows per forward on a GPU (fewer launches)
    vmap_min_rows = 1024  # a vmapped forward runs all checkpoints on max(this, gpu_rows // n_checkpoints) rows
    block_bytes = 256 << 20  # factors kept in host memory (or converted) go to the device in blocks of this size

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: nn.Module | str,
        train_dataset: Any,
        checkpoints: Checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], Any] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        batch_size: int | None = None,
        test_loss_fn: Callable[..., torch.Tensor] | None = None,
        vectorize: bool = False,
        *,
        device: str | int | torch.device | None = None,
        num_workers: int | None = None,
        progress_callback: ProgressCallback | None = None,
        cache_dir: str | os.PathLike | None = None,
        weights_only: bool = True,
        data_version: str | None = None,
        max_memory: int | str | None = None,
        factor_dtype: torch.dtype | None = None,
    ) -> None:
        self.max_memory = parse_max_memory(max_memory)
        self.factor_dtype = check_factor_dtype(factor_dtype)
        super().__init__(
            model,
            train_dataset,
            checkpoints,
            checkpoints_load_func,
            loss_fn,
            batch_size,
            test_loss_fn,
            device=device,
            num_workers=num_workers,
            progress_callback=progress_callback,
            cache_dir=cache_dir,
            weights_only=weights_only,
            data_version=data_version,
        )
        self.final_fc_layer = final_fc_layer
        self.vectorize = vectorize  # accepted for compatibility; gradients here need no jacobian
        ctx = type(self).__name__
        self.reduction_type = loss_mode(loss_fn, "loss_fn", ("sum", "mean"), ctx, "sum")
        self.test_reduction_type = (
            self.reduction_type
            if test_loss_fn is None
            else loss_mode(test_loss_fn, "test_loss_fn", ("sum", "mean"), ctx, "sum")
        )
        self._factors: Factors | None = None
        self._stream: FactorStore | None = None  # the store the factors are read from block by block
        # (N, C, 2): |g|^2, |a|^2 per row and checkpoint, written with the factors: self-influence without reading
        # them again (78 GB of host-resident float32 factors at ImageNet's size: 7.3 s on an H100 -> 0.027 s)
        self._norms: torch.Tensor | None = None
        self._placement: str | None = None  # where the factors live: "device", "host" or "stream"
        self._warned_host = False
        self._dims: tuple[int, int] = (0, 0)  # dim(a), dim(g)
        self._n_ckpts = 0
        self._compute_dtype = torch.get_default_dtype()  # of the factors as computed (the queries' dtype)
        self._factor_dtype = torch.get_default_dtype()  # of the factors as kept
        self._vmap_ok: bool | None = None  # GPU: may all checkpoints run in one vmapped forward?
        self._stacked: _Stacked | None = None
        self._self_influence: torch.Tensor | None = None
        self._layer_checked = False

    @property
    def final_fc_layer(self) -> nn.Module:
        return self._final_fc_layer

    @final_fc_layer.setter
    def final_fc_layer(self, layer: nn.Module | str) -> None:
        self.final_fc_layer_name, self._final_fc_layer = resolve_module(self.model, layer, "final_fc_layer")
        self._factors = None
        self._stream = None
        self._norms = None
        self._placement = None
        self._self_influence = None
        self._layer_checked = False
        self._fingerprint = None
        self._vmap_ok = None

    # ------------------------------------------------------------------ factors
    def _check_layer(self, state: dict, batch: tuple) -> None:
        self._layer_checked = True
        with torch.no_grad():
            producers, records = trace_output_module(
                self._net, lambda: functional_call(self._net, state, tuple(batch[:-1]))
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
            stacklevel=5,
        )

    def _batch_factors(
        self, state: dict, batch: tuple, mode: str, loss_fn: Any, what: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch_len(batch)
        self._measure_rows(state, batch, what)
        rows = self._rows(self.cpu_chunk if self.device.type == "cpu" else self.gpu_rows)
        if n > rows:
            parts = [self._chunk_factors(state, b, mode, loss_fn, what) for b in split_rows(batch, n, rows)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self._chunk_factors(state, batch, mode, loss_fn, what)

    def _chunk_factors(
        self, state: dict, batch: tuple, mode: str, loss_fn: Any, what: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self._final_fc_layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
        try:
            with torch.no_grad(), FastCpuOps() if self.device.type == "cpu" else contextlib.nullcontext():
                out = self._forward(state, tuple(batch[:-1]), what)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(
                f"final_fc_layer {self.final_fc_layer_name!r} ran {len(captured)} times in one forward pass; "
                "it must run exactly once (pass the model's last fully-connected layer)."
            )
        n = out.shape[0]
        out_d = out.detach().requires_grad_(True)
        with torch.enable_grad():
            total = total_loss(mode, loss_fn, out_d, batch[-1], n)
            (g,) = torch.autograd.grad(total, out_d)
        return g.reshape(n, -1), captured[0].reshape(n, -1)

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
        self, states: list[dict], batch: tuple, mode: str, loss_fn: Any
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """GPU: every checkpoint in one ``vmap``-ed forward (one grouped launch per layer instead of one per
        checkpoint; 87 -> 50 ms for the tutorial's 6 x 50k on an H200). ``None`` when the model cannot be
        vmapped (random ops, data-dependent control flow, ...): the caller then loops over checkpoints."""
        if self._vmap_ok is False:
            return None
        if self._stacked is None or self._stacked.states is not states:
            self._stacked = _Stacked(states, {k: torch.stack([st[k] for st in states]) for k in states[0]})
        stacked, model, layer = self._stacked.params, self._net, self._final_fc_layer

        def one(params: dict[str, torch.Tensor], *features: Any) -> tuple[torch.Tensor, torch.Tensor]:
            captured: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda m, i, o: captured.append(i[0]))
            try:
                out = functional_call(model, params, features)
            finally:
                handle.remove()
            if len(captured) != 1 or not isinstance(out, torch.Tensor) or out.dim() == 0:
                raise RuntimeError("not vmappable here")  # the per-checkpoint loop says what is wrong
            return out, captured[0]

        n, C = batch_len(batch), len(states)
        G_parts, A_parts = [], []
        try:
            rows = self._rows(max(self.vmap_min_rows, self.gpu_rows // C), copies=C)  # bounded by memory
            for part in split_rows(batch, n, rows):
                m = batch_len(part)
                feats = tuple(part[:-1])
                # PyTorch's precision settings apply, as in the per-checkpoint loop and a plain forward
                with torch.no_grad():
                    out, a = vmap(one, in_dims=(0,) + (None,) * len(feats))(stacked, *feats)
                outs = [out[c].detach().requires_grad_(True) for c in range(C)]
                with torch.enable_grad():  # the checkpoints' losses are independent: one backward for all
                    total = functools.reduce(torch.add, [total_loss(mode, loss_fn, o, part[-1], m) for o in outs])
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
        batches: list[tuple],
        states: list[dict],
        mode: str,
        loss_fn: Any,
        what: str,
        check: bool = True,
        offset: int = 0,
        complete: bool = True,
        prog: _Progress | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of ``batches`` (rows ``offset``.. of their source; ``complete``: all of its rows)."""
        A_parts, G_parts = [], []
        for batch in batches:
            both = None
            self._measure_rows(states[-1], batch, what)  # a bad batch gets the clear error here
            if self._use_vmap() and len(states) > 1:
                both = self._vmapped_factors(states, batch, mode, loss_fn)
            if both is not None:
                G, A = both
            else:
                gs, as_ = [], []
                for state in states:
                    g, a = self._batch_factors(state, batch, mode, loss_fn, what)
                    gs.append(g)
                    as_.append(a)
                G, A = torch.stack(gs, 1), torch.stack(as_, 1)
            G_parts.append(G)
            A_parts.append(A)
            if prog is not None:
                prog.update(batch_len(batch))
        A, G = torch.cat(A_parts), torch.cat(G_parts)
        if check:
            self._check_factors(A, G, what, offset, rows_getter(batches, offset), complete)
        return A, G

    def _check_factors(
        self, A: torch.Tensor, G: torch.Tensor, what: str, offset: int = 0, row_of: Any = None, complete: bool = True
    ) -> None:
        """One sync; on failure name the rows whose factors are not finite (``row_of(i)``: row i's data)."""

        def locate() -> None:
            masks = {
                "loss gradients": ~torch.isfinite(G).all(2),
                f"inputs of final_fc_layer {self.final_fc_layer_name!r}": ~torch.isfinite(A).all(2),
            }
            self._raise_nonfinite(masks, offset, what, row_of or self._train_row, complete)

        self._check_all_finite(
            torch.stack([G.sum((0, 2)), A.sum((0, 2))]),
            [f"loss gradients for the {what}", f"layer inputs for the {what}"],
            locate,
        )

    def _layer_key(self) -> str:
        return f"{self.final_fc_layer_name}|{self.reduction_type}"

    def _ensure_factors(self, show_progress: bool = False) -> Factors:
        """The training-set factors in memory (computed, or read from the store, once)."""
        self._prepare_factors(show_progress)
        if self._factors is None:
            raise ValueError(
                f"this needs the training-set factors in memory, but they are read from the store block by block "
                f"(max_memory={self.max_memory!r} is smaller than their {human(self._factor_bytes())}). Pass "
                "max_memory=None or a larger one."
            )
        return self._factors

    def _prepare_factors(self, show_progress: bool = False) -> None:
        """Make the training-set factors available: in memory (``self._factors``) or streamed from the store
        (``self._stream``): read from a complete store in ``cache_dir``, else one pass (resuming a store)."""
        if self._factors is not None or self._stream is not None:
            return
        group = process_group(self.device)
        if group is not None:
            self._distributed_pass(*group, show_progress)
            return
        if self.cache_dir is None and self.max_memory is None and self.factor_dtype is None:
            self._memory_pass(show_progress)  # the plain path: exactly as without a store
            return
        folder, expect = self._store_target()
        store = FactorStore.read(folder, expect) if folder is not None else None
        if store is not None and store.complete:
            self._adopt(store)
            if show_progress:
                _Progress("training factors (cache file)", store.rows, True, None).finish()
            return
        self._probe_cache()  # a cache_dir that cannot be written: warn now, before the pass
        self._store_pass(None if self._cache_unwritable is not None else folder, expect, show_progress)

    def _distributed_pass(self, rank: int, world: int, show_progress: bool) -> None:
        """Under torchrun: this rank's rows into its shard, rank 0 joins the shards into the store, every rank
        then reads the whole store (``influence/_distributed.py``)."""
        if self.cache_dir is None:
            raise ValueError(
                f"this process is rank {rank} of {world} of torch.distributed (torchrun), which splits the factor "
                "pass over the ranks through a store, but cache_dir is None: pass cache_dir= a folder that every "
                "rank shares (the ranks write their rows there and each then reads them all), or run the engine "
                "in a single process."
            )
        folder, expect = self._store_target()
        assert folder is not None
        if not all_equal(expect["fingerprint"], self.device):
            raise ValueError(
                "the ranks of torch.distributed (torchrun) disagree on the training-set factors' cache key: every "
                "rank must build the engine with the same model, checkpoints, loss, layer, training data, "
                "data_version, factor_dtype and cache_dir."
            )
        n = expect.get("rows")
        if n is None:
            raise ValueError(
                "under torch.distributed (torchrun) the factor pass is split by rows, so train_dataset must have a "
                "length (len(train_dataset)); an IterableDataset cannot be split: run it in a single process."
            )
        store = FactorStore.read(folder, expect)
        if store is None or not store.complete:
            shards = [shard_target(folder, expect, *row_range(n, r, world)) for r in range(world)]
            start, stop = row_range(n, rank, world)
            error: BaseException | None = None
            try:
                if stop > start:
                    self._store_pass(shards[rank][0], shards[rank][1], show_progress, rows=(start, stop))
                    self._factors = self._stream = self._norms = None  # this rank's rows only: read whole below
                    self._placement = None
            except Exception as e:
                error = e
            if not all_ok(error is None, self.device):
                raise error or RuntimeError("another rank's factor pass failed (see its error); rows done are kept")
            if rank == 0:
                try:
                    join_shards(folder, expect, [s for s in shards if s[1]["rows"] > 0])
                except Exception as e:
                    error = e
            if not all_ok(error is None, self.device):
                raise error or RuntimeError("rank 0 could not join the factor store shards (see its error)")
            store = FactorStore.read(folder, expect)
            if store is None or not store.complete:
                raise ValueError(
                    f"the factor store {str(folder)!r} joined by rank 0 cannot be read by rank {rank}: cache_dir "
                    "must be one folder that every rank shares (e.g. on a shared filesystem across machines)."
                )
        self._adopt(store)
        if show_progress:
            _Progress("training factors (cache file)", store.rows, True, None).finish()

    def _memory_pass(self, show_progress: bool) -> None:
        with self._computing():
            states, _ = self._checkpoint_states(show_progress)
            kept: _Kept | None = None
            rows = 0
            prog = _Progress("training factors", self._n_train(), show_progress, self.progress_callback)
            try:
                merge = self.gpu_rows if self.device.type == "cuda" else self.cpu_chunk
                for offset, batch in self._train_batches(self._pass_rows(states[-1], merge)):
                    if not self._layer_checked:  # on the rows one forward may take
                        self._measure_rows(states[-1], batch, "training batch")
                        self._check_layer(states[-1], split_rows(batch, batch_len(batch), self._rows(merge))[0])
                    # on a GPU, checked once after the pass: a check per batch would make the host wait for it
                    A, G = self._factors_of(
                        [batch],
                        states,
                        self.reduction_type,
                        self.loss_fn,
                        "training batch",
                        self.device.type == "cpu",
                        offset,
                        complete=False,
                    )
                    if kept is None:  # a GPU without room for all of them: keep them in host memory
                        self._set_dims(A.shape[-1], G.shape[-1], A.dtype)
                        self._n_ckpts = A.shape[1]
                        n = self._n_train()
                        self._placement = "device" if n is None else self._place(n, False)
                        # written into tensors of all the rows: no second copy from concatenating at the end
                        kept = _Kept(n, self.device if self._placement == "device" else torch.device("cpu"))
                    kept.add(offset, A, G, _row_norms(A, G))
                    rows = offset + A.shape[0]
                    prog.update(batch_len(batch))
            finally:
                prog.close()
        if kept is None:
            raise ValueError("train_dataset is empty: there is nothing to compute influence against.")
        A, G, norms = kept.result(rows)
        if self.device.type != "cpu":
            self._check_factors(A, G, "training batch")
        self._factors, self._norms = Factors(A, G), norms

    # ------------------------------------------------------------------ the store (influence/_store.py)
    def _store_key(self) -> str:
        dtype = "" if self.factor_dtype is None else f"|factors={dtype_name(self.factor_dtype)}"
        return self._layer_key() + dtype

    def _store_target(self) -> tuple[Path | None, dict[str, Any]]:
        """The store folder (None without cache_dir) and what its manifest must say."""
        _, lrs = self._checkpoint_states()
        loss = self.loss_fn
        expect: dict[str, Any] = {
            "format": STORE_FORMAT,
            "kind": self._cache_kind,
            "layer": self.final_fc_layer_name,
            "loss": f"{type(loss).__module__}.{type(loss).__qualname__}|{self.reduction_type}",
            "learning_rates": [float(x) for x in lrs],
            "checkpoints": len(lrs),
        }
        if self.factor_dtype is not None:
            expect["dtype"] = dtype_name(self.factor_dtype)
        n = self._n_train()
        if n is not None:
            expect["rows"] = n
        if self.cache_dir is None:
            return None, expect
        fp = self._compute_fingerprint(self._store_key())
        expect["fingerprint"] = fp
        return store_folder(self.cache_dir, self._cache_kind, fp), expect

    def _factor_bytes(self, rows: int | None = None) -> int:
        """Bytes of the training-set factors (known once their dims are)."""
        rows = self._n_rows() if rows is None else rows
        da, dg = self._dims
        return rows * self._n_ckpts * (da + dg) * torch.empty((), dtype=self._factor_dtype).element_size()

    def _place(self, rows: int | None, has_store: bool) -> str:
        if rows is None:  # a dataset without a length: decided when the factors are complete
            return "device" if self.device.type == "cpu" else "host"
        where = placement(self._factor_bytes(rows), self.device, self.max_memory, has_store)
        if where == "stream" and not has_store:
            self._raise_too_big(rows)
        if where == "host" and not self._warned_host:
            self._warned_host = True
            nbytes, free = self._factor_bytes(rows), free_memory(self.device)
            full = self._factor_dtype not in (torch.bfloat16, torch.float16)  # not half precision yet
            fits = full and nbytes / 2 <= DEVICE_COMFORT * free
            hint = (
                "factor_dtype=torch.bfloat16 halves them" + (" and keeps them on the GPU" if fits else "")
                if full
                else "a GPU with more free memory keeps them there"
            )
            self._warn(
                f"the training factors take {human(nbytes)} ({dtype_name(self._factor_dtype)}), more than "
                f"{DEVICE_COMFORT:.0%} of {self.device}'s free memory ({human(free)}): they are kept in host memory "
                f"and every query copies them to {self.device} (seconds a query: 7.3 s for 78 GB on an H100, 22 ms "
                f"with them on the GPU); {hint}.",
                stacklevel=7,  # the user's fit() (or first query)
            )
        return where

    def _raise_too_big(self, rows: int) -> None:
        why = (
            f"cache_dir {str(self.cache_dir)!r} cannot be written ({self._cache_unwritable})"
            if self.cache_dir is not None
            else "no cache_dir was given"
        )
        raise ValueError(
            f"the training-set factors take {human(self._factor_bytes(rows))} ({rows} rows x {self._n_ckpts} "
            f"checkpoints x {sum(self._dims)} values in {dtype_name(self._factor_dtype)}), more than "
            f"max_memory={self.max_memory!r} ({human(self.max_memory or 0)}), and {why} to keep them on disk. "
            "Pass cache_dir= a writable folder with room for them (they are then read block by block), a larger "
            "max_memory, or factor_dtype=torch.bfloat16 (half the bytes)."
        )

    def _adopt(self, store: FactorStore) -> None:
        """Use a complete store: loaded where ``_place`` says, or streamed."""
        self._dims, self._n_ckpts = (store.da, store.dg), store.C
        self._factor_dtype, self._compute_dtype = store.dtype, store.norm_dtype
        where = self._place(store.rows, True)
        self._placement = where
        reduced = store.dtype != store.norm_dtype
        if where == "stream":
            self._stream = store
            self._norms = store.norms()
            return
        target = self.device if where == "device" else torch.device("cpu")
        A = torch.empty(store.rows, store.C, store.da, dtype=store.dtype, device=target)
        G = torch.empty(store.rows, store.C, store.dg, dtype=store.dtype, device=target)
        rows = stream_rows(store.row_bytes, None)
        for s, a, g in store.blocks(rows, pin=target.type == "cuda"):
            A[s : s + a.shape[0]].copy_(a)
            G[s : s + g.shape[0]].copy_(g)
        self._factors = Factors(A, G)
        if reduced:
            self._norms = store.norms()

    def _set_dims(self, da: int, dg: int, compute_dtype: torch.dtype) -> None:
        self._dims, self._compute_dtype = (da, dg), compute_dtype
        self._factor_dtype = self.factor_dtype or compute_dtype

    def _probe_dims(self, states: list[dict]) -> bool:
        """Learn dim(a), dim(g) and the dtype from a forward of a few training rows (False: nothing to probe)."""
        probe = self._probe_batch()
        if probe is None:
            return False
        g, a = self._chunk_factors(states[0], probe, self.reduction_type, self.loss_fn, "training batch")
        self._set_dims(a.shape[-1], g.shape[-1], a.dtype)
        return True

    def _store_pass(
        self, folder: Path | None, expect: dict[str, Any], show_progress: bool, rows: tuple[int, int] | None = None
    ) -> None:
        """The factor pass when a store, ``max_memory`` or ``factor_dtype`` is involved: each block is checked,
        cast to ``factor_dtype``, appended to the store (resuming it) and kept in memory unless streamed.
        ``rows=(start, stop)``: only those training rows, into the store only (a torchrun rank's shard)."""
        lo, hi = rows if rows is not None else (0, None)
        n_train = self._n_train() if hi is None else hi - lo

        def place(n: int | None, has_store: bool) -> str:
            return self._place(n, has_store) if rows is None else "stream"

        with self._computing():
            states, _ = self._checkpoint_states(show_progress)
            self._n_ckpts = len(states)
            where: str | None = None
            lock: StoreLock | None = None
            writer: StoreWriter | None = None
            if folder is not None:
                try:
                    lock, found = lock_store(folder, expect)
                except OSError as e:
                    if rows is not None:  # a rank's shard lives only in the store
                        raise store_error(folder, e, 0) from e
                    self._store_unwritable(folder, e)
                    found = None
                if found is not None and found.complete:
                    assert lock is not None
                    lock.release()
                    self._adopt(found)
                    return
                if found is not None and found.rows_complete:
                    writer = StoreWriter(found)
                    self._set_dims(found.da, found.dg, found.norm_dtype)
            if writer is None and self.max_memory is not None and self._probe_dims(states):
                where = place(n_train, lock is not None)  # too big without a store: said before the pass
            done = writer.rows_written if writer is not None else 0
            kept: _Kept | None = None
            prog = _Progress("training factors", n_train, show_progress, self.progress_callback)
            total = 0
            try:
                if writer is not None:
                    where = place(n_train, True)
                    if where != "stream":  # resumed in memory: the rows stored already, as stored
                        kept = _Kept(n_train, self.device if where == "device" else torch.device("cpu"))
                        kept.add(0, *self._stored_rows(writer.store, done))
                merge = self.gpu_rows if self.device.type == "cuda" else self.cpu_chunk
                for offset, batch in self._train_batches(self._pass_rows(states[-1], merge), rows):
                    n = batch_len(batch)
                    if hi is not None:  # a rank's rows only (offsets from here on count from lo)
                        if offset >= hi:
                            break
                        if offset + n <= lo:
                            continue
                        a, b = max(lo, offset) - offset, min(hi, offset + n) - offset
                        batch = tuple(x[a:b] if _has_rows(x, n) else x for x in batch)
                        n, offset = b - a, offset + a - lo
                    total = offset + n
                    if total <= done:  # stored already
                        prog.update(n)
                        continue
                    if offset < done:
                        batch = tuple(x[done - offset :] if _has_rows(x, n) else x for x in batch)
                        prog.update(done - offset)
                        n, offset = total - done, done
                    if not self._layer_checked:
                        self._measure_rows(states[-1], batch, "training batch")
                        self._check_layer(states[-1], split_rows(batch, n, self._rows(merge))[0])
                    A, G = self._factors_of(
                        [batch], states, self.reduction_type, self.loss_fn, "training batch", True, lo + offset, False
                    )
                    if where is None:
                        self._set_dims(A.shape[-1], G.shape[-1], A.dtype)
                        where = place(n_train, lock is not None)
                    norms = _row_norms(A, G)
                    A, G = self._cast_factors(A, G, lo + offset)
                    if lock is not None and writer is None:
                        writer = self._new_store(folder, expect, where)  # type: ignore[arg-type]
                        if writer is None:
                            lock.release()
                            lock = None
                    if writer is not None:
                        try:
                            writer.append(A, G, norms)
                            writer.maybe_commit()
                        except OSError as e:
                            writer = self._store_failed(writer, e, where)
                            assert lock is not None
                            lock.release()  # written no more: the pass goes on in memory
                            lock = None
                    if where != "stream":
                        if kept is None:
                            kept = _Kept(n_train, self.device if where == "device" else torch.device("cpu"))
                        kept.add(offset, A, G, norms)
                        if n_train is None and self.max_memory is not None and writer is None:
                            if self._factor_bytes(offset + n) > self.max_memory:
                                self._raise_too_big(offset + n)
                    prog.update(n)
                if total == 0:
                    raise ValueError("train_dataset is empty: there is nothing to compute influence against.")
                if writer is not None:
                    assert where is not None
                    try:
                        writer.commit(rows=total)
                    except OSError as e:
                        writer = self._store_failed(writer, e, where)
            except BaseException:
                if writer is not None:  # keep every block written completely: the next call resumes there
                    with contextlib.suppress(OSError):
                        writer.commit()
                raise
            finally:
                prog.close()
                if writer is not None:
                    writer.close()
                if lock is not None:
                    lock.release()
        self._placement = where
        if where == "stream":
            assert writer is not None
            self._stream = writer.store
            self._norms = writer.store.norms()
            return
        assert kept is not None
        A, G, self._norms = kept.result(total)
        self._factors = Factors(A, G)

    @staticmethod
    def _stored_rows(store: FactorStore, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fds = store._open()
        try:
            A, G = store.read_rows(fds, 0, rows)
        finally:
            for fd in fds:
                os.close(fd)
        return A, G, store.norms()[:rows]

    def _new_store(self, folder: Path, expect: dict[str, Any], where: str) -> StoreWriter | None:
        """A new store for this pass (the dims are known); None when it cannot be written (warned)."""
        meta = {
            **expect,
            "rows": expect.get("rows"),
            "dims": {"A": self._dims[0], "G": self._dims[1]},
            "dtype": dtype_name(self._factor_dtype),
            "norm_dtype": dtype_name(self._compute_dtype),
        }
        try:
            return StoreWriter.create(folder, meta)
        except OSError as e:
            if where == "stream":
                raise store_error(folder, e, 0) from e
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)  # nothing in it worth keeping
            self._store_unwritable(folder, e)
            return None

    def _store_failed(self, writer: StoreWriter, e: OSError, where: str) -> StoreWriter | None:
        """Writing the store failed: stop with an error naming it when the factors live only there, else warn
        (once) and go on in memory. Every block recorded in the manifest is kept for a later call."""
        with contextlib.suppress(OSError):
            writer.commit()  # the blocks appended completely before
        writer.close()
        store = writer.store
        if where == "stream":
            raise store_error(store.folder, e, store.rows_complete) from e
        if store.rows_complete == 0:
            with contextlib.suppress(OSError):
                shutil.rmtree(store.folder)
        self._store_unwritable(store.folder, e)
        return None

    def _store_unwritable(self, folder: Path, e: OSError) -> None:
        self._cache_unwritable = f"{type(e).__name__}: {e}"
        self._warn(_cache.not_saved_message(self.cache_dir or folder, self._cache_unwritable), stacklevel=5)

    def _cast_factors(self, A: torch.Tensor, G: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors in ``factor_dtype``; float16 overflowing (beyond +-65504) is an error, not an inf."""
        if self._factor_dtype == A.dtype:
            return A, G
        A, G = A.to(self._factor_dtype), G.to(self._factor_dtype)
        if self._factor_dtype == torch.float16 and not bool(torch.isfinite(A).all() & torch.isfinite(G).all()):
            raise ValueError(
                f"factor_dtype=torch.float16 cannot hold the factors of training rows from {offset} on (values "
                "beyond +-65504): use factor_dtype=torch.bfloat16 (the range of float32) or torch.float32."
            )
        return A, G

    # ------------------------------------------------------------------ factor blocks for the queries
    def _n_rows(self) -> int:
        if self._factors is not None:
            return int(self._factors.A.shape[0])
        assert self._stream is not None
        return self._stream.rows

    def _factor_blocks(
        self, step: int, span: tuple[int, int] | None = None, native: bool = False
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(start, A, G)`` chunks of at most ``step`` training rows (of rows ``span=(start, stop)``, default
        all) on the compute device, in the dtype the factors were computed in (``native``: as kept), from memory
        or read from the store block by block."""
        dev, dt = self.device, (self._factor_dtype if native else self._compute_dtype)
        lo, hi = span if span is not None else (0, None)
        if self._factors is not None:
            A, G = self._factors
            if not same_device(A.device, dev) or A.dtype != dt:  # copied to the device or converted: bounded blocks
                row = A.shape[1] * (A.shape[2] + G.shape[2]) * torch.empty((), dtype=dt).element_size()
                step = min(step, max(1, self.block_bytes // max(1, row)))
            end = A.shape[0] if hi is None else hi
            for s in range(lo, end, step):
                e = min(s + step, end)
                yield s, A[s:e].to(dev, dt), G[s:e].to(dev, dt)
            return
        assert self._stream is not None
        store = self._stream
        rows = stream_rows(store.row_bytes, self.max_memory)
        for s, A, G in store.blocks(rows, pin=dev.type == "cuda", start=lo, stop=hi):
            A, G = A.to(dev, non_blocking=True), G.to(dev, non_blocking=True)
            for j in range(0, A.shape[0], step):
                yield s + j, A[j : j + step].to(dt), G[j : j + step].to(dt)

    def _factor_rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors of training rows ``idx`` (any shape), on the compute device, in the computation dtype."""
        if self._factors is not None:
            A, G = self._factors
            i = idx.to(A.device)
            return A[i].to(self.device, self._compute_dtype), G[i].to(self.device, self._compute_dtype)
        assert self._stream is not None
        A, G = self._stream.gather(idx)
        return A.to(self.device, self._compute_dtype), G.to(self.device, self._compute_dtype)

    def _last_G_blocks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, G (n, dg))``: the last checkpoint's loss gradients, on the CPU as kept, ``rows`` at a time (a
        store reads only that checkpoint's ``G`` file)."""
        if self._factors is not None:
            G = self._factors.G
            for s in range(0, G.shape[0], rows):
                yield s, G[s : s + rows, -1].cpu()
            return
        assert self._stream is not None
        yield from self._stream.last_G(rows)

    @locked
    def train_probabilities(
        self,
        model: nn.Module,
        labels: Any = None,
        read_labels: Callable[[Any], Any] | None = None,
        rows: int = 65536,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
        """The softmax probabilities ``(n_train, C)`` (CPU, the computation dtype) of ``model`` on the training set
        and the labels ``(n_train,)`` int64, read off the factors without a forward pass, and why (or why not):
        ``(None, None, reason)`` when that would not be exact.

        With ``nn.CrossEntropyLoss`` (reduction "sum" or "mean", no class ``weight``, no label smoothing) the stored
        loss gradient of row i at the last checkpoint is ``softmax(z_i) - onehot(y_i)`` (Captum's "mean" is rescaled
        by the batch size, so the same), and ``model(*x_i)`` in eval mode gives ``z_i`` when ``model``'s weights
        equal the last checkpoint's, tensor by tensor. Needs the factors computed (never starts a pass), kept as
        computed (no half-precision ``factor_dtype``), and every label a class index other than ``ignore_index``.

        Labels: ``labels`` (one int per training row) when given; else the TensorDataset's own; else, when the
        caller knows the labels are int class indices and passes ``read_labels(rows) -> labels of those rows``,
        each row's label is its gradient's one negative entry (``p - 1``), and only rows without one (``p == 1``
        in float, or an ignored row's zero gradient) are read.
        """
        loss = self.loss_fn
        if type(loss) is not nn.CrossEntropyLoss or self.reduction_type not in ("sum", "mean"):
            return (
                None,
                None,
                f"the loss is {type(loss).__name__}, not nn.CrossEntropyLoss with reduction 'sum' or 'mean'",
            )
        if loss.weight is not None or loss.label_smoothing != 0:
            return None, None, "the loss has a class weight or label smoothing"
        if self._factors is None and self._stream is None:
            return None, None, "the training factors are not computed yet"
        if self._factor_dtype != self._compute_dtype:
            return None, None, f"the factors are kept in {dtype_name(self._factor_dtype)}, not as computed"
        if inner_module(model) is not self._net:
            return None, None, "the model is not the engine's model"
        states, _ = self._checkpoint_states()
        with model_lock(self.model):
            current = inner_module(model).state_dict()
            last = states[-1]
            same = current.keys() == last.keys() and all(
                v.dtype == last[k].dtype and v.shape == last[k].shape and torch.equal(v.to(last[k].device), last[k])
                for k, v in current.items()
            )
        if not same:
            return None, None, "the model's weights differ from the last checkpoint's"
        n, C = self._n_rows(), self._dims[1]
        y: torch.Tensor | None = None
        if labels is None and tensor_fast_path(self.train_dataloader):
            labels = self.train_dataloader.dataset.tensors[-1]  # type: ignore[attr-defined]
        if labels is not None:
            y = torch.as_tensor(labels).cpu()
            if y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
                return None, None, "the labels are not one int class index per training row"
            y = y.long()
        elif read_labels is None:
            return None, None, "the training labels are not known without reading every example"
        ambiguous = []
        probs = torch.empty(n, C, dtype=self._compute_dtype)  # filled block by block: one (n, C) array at the peak
        lab = torch.empty(n, dtype=torch.int64) if y is None else y
        for s, G in self._last_G_blocks(rows):
            p = probs[s : s + G.shape[0]]
            p.copy_(G)
            if y is None:
                neg = p < 0
                count = neg.sum(1)
                if bool((count > 1).any()):
                    return None, None, "a loss gradient has several negative entries: the labels are not class indices"
                lab[s : s + p.shape[0]] = neg.to(torch.uint8).argmax(1)
                ambiguous.append(torch.nonzero(count == 0).flatten() + s)
        if y is None:
            amb = torch.cat(ambiguous)
            if len(amb):
                read = torch.as_tensor(np.asarray(read_labels(amb.numpy()), dtype=np.int64)).reshape(-1)  # type: ignore[misc]
                if read.shape != amb.shape:
                    return None, None, "read_labels did not give one label per requested row"
                lab[amb] = read
        if bool(((lab < 0) | (lab >= C) | (lab == loss.ignore_index)).any()):
            return None, None, f"a label is ignore_index ({loss.ignore_index}) or not a class in 0..{C - 1}"
        probs[torch.arange(len(lab)), lab] += 1
        if len(probs) and float(probs.min()) < 0:  # g_y = p_y - 1 <= 0 and g_k = p_k >= 0: other labels than trained on
            return None, None, "the labels do not match the loss gradients (not the engine's training labels?)"
        return probs, lab, "read off the last checkpoint's loss gradients"

    @locked
    def fit(self, show_progress: bool = False) -> TracInCPFast:
        """Compute the training-set factors now (one pass over the training data, or a read of ``cache_dir``),
        with tqdm bars when ``show_progress``; otherwise the first query does it. Returns ``self``.

        Raises:
            ValueError: the training set is empty, the model cannot take its batches, a label is not a class of
                the model, or a factor is not finite (naming the rows).
        """
        if (self._factors is not None or self._stream is not None) and show_progress:  # still show the call ran
            _Progress("training factors (cached)", self._n_rows(), True, None).finish()
        self._prepare_factors(show_progress)
        return self

    def _test_factors(
        self,
        inputs: Any,
        loss: str = "test",
        batches: list[tuple] | None = None,
        show_progress: bool = False,
        phase: str = "test factors",
        callback: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors of ``inputs`` (a batch or a DataLoader); ``batches`` = the same, already checked and moved.
        ``show_progress``: a tqdm bar over the rows; ``callback``: report the phase to ``progress_callback``
        too (a pass over a DataLoader; per-query steps stay off the callback)."""
        batches = self._test_batches(inputs, loss=loss, show_progress=show_progress) if batches is None else batches
        with self._computing():
            states, _ = self._checkpoint_states(show_progress)
            total = sum(batch_len(b) for b in batches)
            prog = _Progress(phase, total, show_progress, self.progress_callback if callback else None)
            try:
                if loss == "test":
                    return self._factors_of(
                        batches, states, self.test_reduction_type, self.test_loss_fn, "test batch", prog=prog
                    )
                return self._factors_of(batches, states, self.reduction_type, self.loss_fn, "batch", prog=prog)
            finally:
                prog.close()

    # ------------------------------------------------------------------ scores
    def _lr_tensor(self, like: torch.Tensor) -> torch.Tensor:
        _, lrs = self._checkpoint_states()
        return torch.tensor(lrs, dtype=like.dtype, device=like.device)

    def _score_chunks(
        self, At: torch.Tensor, Gt: torch.Tensor, span: tuple[int, int] | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        lr = self._lr_tensor(At).view(-1, 1, 1)
        step = self._chunk_rows(At.shape[0], At.shape[1])
        half = self._native_half(At, Gt)
        if half is not None:  # half-precision factors on a GPU: read as they are, products summed in float32
            Ah, Gh = half
            for s, A, G in self._factor_blocks(step, span, native=True):
                terms = [lr[c, 0] * _mm32(G[:, c], Gh[:, c]) * _mm32(A[:, c], Ah[:, c]) for c in range(A.shape[1])]
                yield s, functools.reduce(torch.add, terms).T
            return
        for s, A, G in self._factor_blocks(step, span):
            gg = torch.einsum("ncd,mcd->cnm", Gt, G)
            aa = torch.einsum("ncd,mcd->cnm", At, A)
            yield s, (gg * aa * lr).sum(0)

    def _native_half(self, At: torch.Tensor, Gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The test factors in the training factors' half precision, when the products can read those as they
        are (CUDA: ``torch.mm(..., out_dtype=torch.float32)``, float32 accumulation and result) instead of
        converting every block to float32 first (3x the memory traffic: 39 GB of bfloat16 factors at ImageNet
        size would need 78 GB of float32 copies). None otherwise, or when a test factor is out of float16's
        range."""
        dt = self._factor_dtype
        if dt not in (torch.bfloat16, torch.float16) or not _mm32_supported(self.device):
            return None
        Ah, Gh = At.to(dt), Gt.to(dt)
        if dt == torch.float16 and not bool(torch.isfinite(Ah).all() and torch.isfinite(Gh).all()):
            return None
        return Ah, Gh

    def _scores_or_topk(
        self, At: torch.Tensor, Gt: torch.Tensor, k: int | None, proponents: bool, show_progress: bool = False
    ) -> torch.Tensor | KMostInfluentialResults:
        n_train = self._n_rows()
        prog = _Progress("influence", n_train, show_progress, None)  # a per-query step: tqdm only
        try:
            if k is None:
                parts = []
                for _s, sc in self._score_chunks(At, Gt):
                    parts.append(sc.cpu())
                    prog.update(sc.shape[1])
                return torch.cat(parts, dim=1)
            best = None
            for s, sc in self._score_chunks(At, Gt):
                best = merge_topk(best, sc, s, k, largest=proponents)
                prog.update(sc.shape[1])
            return self._finish_topk(best, At.shape[0])
        finally:
            prog.close()

    def _query_group(self, distributed: Any) -> tuple[int, int] | None:
        """``(rank, world)`` when ``distributed`` is True and this process is one of several ranks."""
        if not isinstance(distributed, bool):
            raise TypeError(
                "distributed must be a bool (True: split the query over the ranks of torch.distributed, every "
                f"rank making the same call), got {type(distributed).__name__}."
            )
        return process_group(self.device) if distributed else None

    def _ready(self) -> bool:
        return self._factors is not None or self._stream is not None

    def _rank_widths(self, world: int, k: int | None) -> tuple[list[tuple[int, int]], list[int]]:
        """Each rank's contiguous training rows and the width of its part of a result (``k``: of its top-k)."""
        ranges = [row_range(self._n_rows(), r, world) for r in range(world)]
        return ranges, [b - a if k is None else min(k, b - a) for a, b in ranges]

    def _influence_across_ranks(
        self, rank: int, world: int, inputs: Inputs | None, k: Any, proponents: Any, show_progress: bool
    ) -> torch.Tensor | KMostInfluentialResults:
        """``influence(distributed=True)``: each rank scores its contiguous training rows; the local top-k (or
        score columns) of every rank are joined with all_gather, so every rank returns the whole result. Every
        local step is followed by an agreement step (``_distributed.agree``)."""
        error: Exception | None = None
        batches: list[tuple] = []
        key = ""
        try:
            k = check_k(k)
            proponents = check_proponents(proponents)
            batches = self._test_batches(inputs, show_progress=show_progress)
            key = call_key("influence", k, proponents, self._ready(), batches)
        except Exception as e:
            error = e
        agree(error, key, self.device, "influence")
        self._prepare_factors(show_progress)  # its own collectives when the factors are not there yet
        ranges, widths = self._rank_widths(world, k)
        local = idx = torch.empty(0)
        try:
            At, Gt = self._test_factors(inputs, batches=batches, show_progress=show_progress)
            empty = torch.empty(At.shape[0], 0, dtype=self._compute_dtype, device=self.device)
            if k is None:
                parts = [sc for _s, sc in self._score_chunks(At, Gt, ranges[rank])]
                local = torch.cat(parts, dim=1) if parts else empty
            else:
                best = None
                for s, sc in self._score_chunks(At, Gt, ranges[rank]):
                    best = merge_topk(best, sc, s, k, largest=proponents)
                local, idx = best if best is not None else (empty, empty.long())
        except Exception as e:
            error = e
        agree(error, None, self.device, "influence")
        scores = gather_columns(local, widths, self.device)
        if k is None:
            return scores
        indices = gather_columns(idx, widths, self.device)
        vals, pos = torch.topk(scores, min(k, scores.shape[1]), dim=1, largest=proponents)
        return KMostInfluentialResults(torch.gather(indices, 1, pos).to(torch.int64), vals)

    @locked
    def influence(
        self,
        inputs: Inputs | None = None,
        k: int | None = None,
        proponents: bool = True,
        show_progress: bool = False,
        *,
        distributed: bool = False,
    ) -> torch.Tensor | KMostInfluentialResults:
        """Influence of every training example on each example of ``inputs``.

        The first call computes the training-set factors (one pass); later calls only compute the factors of
        ``inputs`` and a couple of matrix products.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            k: None (the default) for the full score matrix; a positive int for the ``k`` most influential
                training examples of each test example.
            proponents: with ``k``: True (the default) for the highest scores, False for the opponents (the
                lowest scores, most negative first).
            show_progress: show tqdm bars for the passes.
            distributed: keyword-only, under ``torchrun`` (see the class docstring): True splits the query over
                the ranks, each scoring its contiguous share of the training rows (its local top-k, or its score
                columns, joined with ``torch.distributed.all_gather``); every rank gets the whole result, the
                same as a single process's. Every rank must then make the same call with the same inputs (the
                ranks check that they did, and a rank's error is raised on every rank instead of leaving the
                others waiting). Default False: this process alone answers, as in Captum. In a single process
                True changes nothing.

        Returns:
            ``k=None``: a float tensor ``(n_test, n_train)`` on the CPU, in the checkpoints' dtype. ``k`` int:
            ``KMostInfluentialResults(indices, influence_scores)``, both ``(n_test, min(k, n_train))`` on the
            CPU, ``indices`` int64, sorted by descending score (proponents) or ascending score (opponents).

        Raises:
            TypeError, ValueError: ``k`` is not a positive int or None, ``proponents`` is not a bool.
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
            ValueError: with ``distributed=True``, the ranks made different calls (another rank's error is a
                ``RuntimeError`` on this one).
        """
        group = self._query_group(distributed)
        if group is not None:
            return self._influence_across_ranks(*group, inputs, k, proponents, show_progress)
        k = check_k(k)
        proponents = check_proponents(proponents)
        # validate before the (possibly long) training pass
        batches = self._test_batches(inputs, show_progress=show_progress)
        self._prepare_factors(show_progress)
        At, Gt = self._test_factors(inputs, batches=batches, show_progress=show_progress)
        return self._scores_or_topk(At, Gt, k, proponents, show_progress)

    @locked
    def influence_by_checkpoint(self, inputs: Inputs, train_indices: Any) -> torch.Tensor:
        """Each checkpoint's term ``lr_c (g_t . g_i)(a_t . a_i)`` of the influence of training examples
        ``train_indices`` on each example of ``inputs``: whether an influence comes from early or late training.
        Exact, from the cached factors (``TracInCPFastRandProj``'s projection and index are not used), so the
        terms sum over the checkpoints to ``influence(inputs, k=None)[:, train_indices]``.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            train_indices: positions in the training set (a list of ints, or a 1-D int tensor / array).

        Returns:
            A float tensor ``(n_test, len(train_indices), n_checkpoints)`` on the CPU, in the checkpoints' dtype,
            the last axis in ``checkpoints`` order (``learning_rates()`` gives each one's ``lr_c``).

        Raises:
            TypeError, ValueError: ``train_indices`` is not a non-empty sequence of ints in ``[0, n_train)``; and,
                before any pass over the training data, what ``influence`` raises for ``inputs``.
        """
        idx = check_train_indices(train_indices, self._n_train())
        batches = self._test_batches(inputs)
        self._prepare_factors()  # in memory or streamed from the store: only the requested rows are read
        idx = check_train_indices(idx, self._n_rows())  # a training set without a length is checked once read
        At, Gt = self._test_factors(inputs, batches=batches)
        A, G = self._factor_rows(idx)
        gg = torch.einsum("ncd,kcd->nkc", Gt.to(G.dtype), G)
        aa = torch.einsum("ncd,kcd->nkc", At.to(A.dtype), A)
        return (gg * aa * self._lr_tensor(A)).cpu()

    @locked
    def self_influence(
        self,
        inputs: Inputs | None = None,
        show_progress: bool = False,
        outer_loop_by_checkpoints: bool = False,
        *,
        distributed: bool = False,
    ) -> torch.Tensor:
        """Self-influence ``sum_c lr_c |g_c|^2 |a_c|^2`` of each example (exact, from the factors): high values
        flag unusual or mislabelled training examples.

        Args:
            inputs: None (the default) for the training set (from the training-set factors, computed once).
                Or one batch ``(*features, labels)`` or a ``DataLoader`` of such batches (scored with
                ``loss_fn``).
            show_progress: show tqdm bars for the passes.
            outer_loop_by_checkpoints: accepted for Captum compatibility; the result does not depend on it
                (every checkpoint is loaded once per instance anyway).
            distributed: keyword-only, under ``torchrun``: True splits the training set's self-influence over the
                ranks (each its contiguous rows, joined with ``all_gather``; every rank gets all of it), as in
                ``influence``; every rank must make the same call. Only with ``inputs=None`` (a ``ValueError``
                otherwise). Default False: this process alone answers.

        Returns:
            A float tensor ``(n,)`` on the CPU, in the checkpoints' dtype (``n = len(train_dataset)`` when
            ``inputs`` is None).

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        group = self._query_group(distributed)
        if group is not None:
            return self._self_influence_across_ranks(*group, inputs, show_progress)
        if inputs is None:
            if self._self_influence is None:
                cached = self._factors is not None or self._stream is not None
                self._prepare_factors(show_progress)
                self._self_influence = self._train_self_influence().cpu()
                if cached and show_progress:  # the factors were ready: still show that the call ran
                    _Progress("self influence", len(self._self_influence), True, None).finish()
            elif show_progress:
                _Progress("self influence (cached)", len(self._self_influence), True, None).finish()
            return self._self_influence.clone()
        A, G = self._test_factors(
            inputs, loss="train", show_progress=show_progress, phase="self influence", callback=True
        )
        return self._self_from_factors(A, G).cpu()

    def _self_influence_across_ranks(
        self, rank: int, world: int, inputs: Inputs | None, show_progress: bool
    ) -> torch.Tensor:
        """``self_influence(distributed=True)``: each rank its contiguous rows, joined with all_gather."""
        error: Exception | None = None
        key = ""
        try:
            if inputs is not None:
                raise ValueError(
                    "self_influence(inputs, distributed=True): distributed=True splits the training set's "
                    "self-influence over the ranks; for inputs, call self_influence(inputs) without it (each rank "
                    "computes them), or split the inputs over the ranks yourself."
                )
            key = call_key("self_influence", self._ready())
        except Exception as e:
            error = e
        agree(error, key, self.device, "self_influence")
        self._prepare_factors(show_progress)  # its own collectives when the factors are not there yet
        ranges, widths = self._rank_widths(world, None)
        lo, hi = ranges[rank]
        local = torch.empty(0)
        try:
            local = self._train_self_influence((lo, hi))
        except Exception as e:
            error = e
        agree(error, None, self.device, "self_influence")
        self._self_influence = gather_columns(local.unsqueeze(0), widths, self.device)[0]
        return self._self_influence.clone()

    def _train_self_influence(self, span: tuple[int, int] | None = None) -> torch.Tensor:
        """Self-influence of the training rows ``span=(start, stop)`` (default all): from the norms written with
        the factors (exact also for half-precision ones), else block by block from the factors (no temporaries
        the size of the factors)."""
        if self._norms is not None:
            return self._self_from_norms(self._norms if span is None else self._norms[span[0] : span[1]])
        step = max(1, self.block_bytes // max(1, self._factor_bytes(1)))
        return torch.cat([self._self_from_factors(A, G) for _, A, G in self._factor_blocks(step, span)])

    def _self_from_factors(self, A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return self._self_from_norms(_row_norms(A, G))

    def _self_from_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """``sum_c lr_c |g_c|^2 |a_c|^2`` per row from ``(n, C, 2)`` norms."""
        return (norms[..., 0] * norms[..., 1] * self._lr_tensor(norms)).sum(1)


class TracInCPFastRandProj(TracInCPFast):
    """TracInCPFast with an embedding index for fast top-k queries, with Captum 0.9's ``TracInCPFastRandProj`` API.

    Each example is embedded as ``concat_c sqrt(lr_c) * (g_c P_g) outer (a_c P_a)`` (``g``, ``a``: the factors of
    ``TracInCPFast``; ``P``: random projections, or none), so that the dot product of two embeddings is their
    (approximate) influence score. The training embeddings are put in ``nearest_neighbors`` in ``__init__``
    (one pass over the training data, as in Captum). ``self_influence`` is exact (from the factors).

    Args:
        model: the trained ``nn.Module`` (an ``nn.DataParallel`` / ``DistributedDataParallel`` wrapper is fine: the
            module inside is computed on). It is called as ``model(*batch[:-1])`` and must return a tensor whose
            first dimension is the batch. Scores are computed in eval mode, and after every call the model is as
            it was given (weights, train/eval flags, ``requires_grad``, device).
        final_fc_layer: the model's last fully-connected layer, as the module (``model.fc3``) or its name
            (``"fc3"``); ``find_final_linear_layer(model, x)`` finds it. It must run exactly once per forward
            pass. An unknown name is a ``ValueError`` suggesting close ones.
        train_dataset: the training data: a ``Dataset`` whose items are ``(*features, label)``, or a ``DataLoader``
            of such batches that yields every row once, in order (no shuffling sampler, no ``drop_last``). Other
            forms (a tuple ``(X, Y)``, dict items) are a ``TypeError`` at construction saying how to wrap them.
        checkpoints: the checkpoint files: a list of paths (natural-sorted, as Captum), one file, or a folder
            (every regular, non-hidden file in it, whatever its extension). Each is loaded once per instance.
        checkpoints_load_func: ``f(model, path) -> lr``: loads the checkpoint at ``path`` into ``model`` and
            returns its learning rate (a finite number >= 0; checked as each loads). Default None: a state dict,
            or a dict holding one under ``"model_state_dict"`` / ``"state_dict"`` (learning rate from its
            ``"learning_rate"`` or ``"lr"`` entry, else 1.0), loaded with ``torch.load(weights_only=weights_only)``.
        loss_fn: the training loss ``loss_fn(outputs, labels)`` with ``reduction="sum"`` or ``"mean"`` (the
            gradient is then multiplied back by the batch size, as Captum); required (None is a ``ValueError``).
            A loss without a ``reduction`` attribute is assumed to sum, with a ``TracInWarning``.
        batch_size: rows per batch when ``train_dataset`` is a Dataset (ignored for a DataLoader). Default None
            means 512 (Captum's default is 1). Scores do not depend on it: the rows per forward pass follow
            the measured activation memory.
        test_loss_fn: the loss of the test examples in ``influence`` and ``compute_intermediate_quantities``,
            with the same rules (default None: ``loss_fn``). ``self_influence(inputs)`` uses ``loss_fn``.
        vectorize: accepted for Captum compatibility (Captum's jacobian switch); the gradients here need no
            jacobian, so it changes nothing (default False).
        nearest_neighbors: the index answering top-k queries: a ``NearestNeighbors`` (``setup(data)``,
            ``get_nearest_neighbors(query, k)``). Default None: ``AnnoyNearestNeighbors()`` (approximate);
            ``ExactNearestNeighbors()`` searches exactly. Anything else is a ``TypeError``. With a ``cache_dir``
            the training embeddings are also written into the store (``E-<tag>.bin``, the tag a hash of the store,
            ``projection_dim``, ``seed`` and the projection), and an ``AnnoyNearestNeighbors`` is built on disk
            there (Annoy's ``on_disk_build``, fed block by block) and memory-mapped by later instances with the
            same settings instead of being rebuilt; other indexes get ``setup`` with the embeddings, memory-mapped
            from that file when the factors are streamed (``max_memory``).
        projection_dim: None (the default): nothing is projected, an embedding has ``dim(g) * dim(a)`` entries
            per checkpoint and its dot products are the exact scores. A positive int: when ``dim(g) * dim(a)``
            is larger, ``g`` and ``a`` are each projected to ``int(sqrt(projection_dim))`` dimensions (at most
            their own) by Gaussian matrices: a smaller index, approximate scores. Anything else is a
            ``ValueError``.
        seed: the seed of the projection matrices' own ``torch.Generator`` (default 0; the global RNG is left
            alone). Used only when something is projected.
        rerank: keyword-only, default 50: ``influence(k=...)`` retrieves ``rerank * k`` candidates from the index
            and scores them exactly from the cached factors, so the returned scores are exact and the recall is
            much higher than the index alone gives. None returns the index's own (approximate) scores, as
            Captum does. Anything but a positive int or None is a ``ValueError``.
        device: where to compute: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device`` (default None: the
            model's device). Checked against this machine at construction (a missing GPU is a ``ValueError``);
            the model is moved there for each call and back afterwards, and batches are moved for you.
        num_workers: ``DataLoader`` workers reading ``train_dataset`` (not used when it is a DataLoader). Default
            None: none on the CPU, for a ``TensorDataset`` (sliced directly) or a recognised torchvision CIFAR
            dataset (read vectorised); on a GPU up to one per spare core (at most 16), trimmed to
            ``sqrt(read time / 20 ms)`` after timing a few items. Scores do not depend on it.
        progress_callback: ``f(phase: str, done: int, total: int)``, called as each phase of a long computation
            advances (``total`` is -1 when unknown). Raising from it (e.g. ``tracin_widgets.influence.Cancelled``)
            aborts cleanly: the model is restored and nothing partial is used as complete (a ``cache_dir`` store
            keeps the blocks written so far, and the next call resumes from them). Default None.
        cache_dir: a folder where the training-set factors (shared by ``TracInCPFast`` and
            ``TracInCPFastRandProj``) are written during the pass, as a store (a folder of plain row-major files
            and a ``manifest.json``, see ``influence/_store.py``), and reused by later instances (default None:
            kept in memory only). An interrupted pass (an exception, ``Cancelled``, Ctrl-C, a killed job) resumes
            from the last block written; a second process writing the same store is refused. A store is reused
            only when the loss (type and settings), the layers, the checkpoint files' contents and learning rates,
            ``checkpoints_load_func``, the model's architecture and precision, the device type, ``data_version``
            and the training data are all the same. A folder that cannot be written gives a ``TracInWarning``
            before the pass (results stay in memory); the checkpoints folder itself is a ``ValueError``.
            Under ``torchrun`` (a ``torch.distributed`` default process group, or torchrun's ``WORLD_SIZE``,
            ``RANK`` and ``LOCAL_RANK`` environment, in which case the default group is initialised here with
            backend ``"nccl"`` on a CUDA device, ``"gloo"`` on the CPU; give each rank its own GPU with
            ``device=f"cuda:{LOCAL_RANK}"``) the pass is split by rank over contiguous row ranges, each rank
            writing its rows into its own shard next to the store; rank 0 joins the shards into the store (the
            same files as one process writes) and every rank then reads all of it. ``cache_dir`` is then
            required, a folder every rank shares: None is a ``ValueError`` (every rank computing everything
            would multiply the work, not share it). Every rank must make the call that needs the factors
            (``fit()`` first is simplest): the ranks wait for each other there.
        weights_only: passed to ``torch.load`` by the default ``checkpoints_load_func`` (default True: only
            tensors and plain containers are unpickled). Pass False only for checkpoint files you trust.
        data_version: any string naming the version of the training data (default None), part of the cache
            key. Array-backed datasets (``TensorDataset``, a ``Subset`` of one, torchvision's CIFAR/MNIST) are
            hashed in full; any other dataset only by its type, length and 24 items spread over it, so change
            ``data_version`` when its contents change (a dataset without a length is reused only with one).
        max_memory: the most memory the training-set factors may take: bytes as an int, or a string such as
            ``"512MB"`` or ``"10GiB"`` (MB/GB: powers of 1000, MiB/GiB: of 1024, as in Hugging Face accelerate).
            Factors larger than that stay in the ``cache_dir`` store and every query reads it block by block (same
            results, at disk speed); without a ``cache_dir`` that is a ``ValueError`` before the pass. Default
            None: on the compute device when they take less than 3/4 of a GPU's free memory (half of the
            CPU's), else in host memory, else (with a ``cache_dir``) read from the store.
        factor_dtype: the dtype the factors are kept in: None (the default: as computed, ``torch.float32`` for a
            float32 model, Captum's numbers), ``torch.float32``, or ``torch.bfloat16`` / ``torch.float16`` (half
            the memory, disk and traffic; products still accumulate in float32; scores are approximate: with
            bfloat16 within 0.25 % of each test row's largest score and the same top-10 on the tests' models and
            the tutorial's, see ``benchmarks/probes/factor_dtype.py``). Self-influence stays exact (its norms are
            kept in the computation dtype). Anything else is a ``ValueError``.
    """

    def __init__(
        self,
        model: nn.Module,
        final_fc_layer: nn.Module | str,
        train_dataset: Any,
        checkpoints: Checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], Any] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        batch_size: int | None = None,
        test_loss_fn: Callable[..., torch.Tensor] | None = None,
        vectorize: bool = False,
        nearest_neighbors: NearestNeighbors | None = None,
        projection_dim: int | None = None,
        seed: int = 0,
        *,
        rerank: int | None = 50,
        device: str | int | torch.device | None = None,
        num_workers: int | None = None,
        progress_callback: ProgressCallback | None = None,
        cache_dir: str | os.PathLike | None = None,
        weights_only: bool = True,
        data_version: str | None = None,
        max_memory: int | str | None = None,
        factor_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            model,
            final_fc_layer,
            train_dataset,
            checkpoints,
            checkpoints_load_func,
            loss_fn,
            batch_size,
            test_loss_fn,
            vectorize,
            device=device,
            num_workers=num_workers,
            progress_callback=progress_callback,
            cache_dir=cache_dir,
            weights_only=weights_only,
            data_version=data_version,
            max_memory=max_memory,
            factor_dtype=factor_dtype,
        )
        if projection_dim is not None and (
            isinstance(projection_dim, bool) or not isinstance(projection_dim, int) or projection_dim <= 0
        ):
            raise ValueError(f"projection_dim must be a positive int or None, got {projection_dim!r}.")
        if nearest_neighbors is None:
            nearest_neighbors = AnnoyNearestNeighbors()
        if not hasattr(nearest_neighbors, "setup") or not hasattr(nearest_neighbors, "get_nearest_neighbors"):
            raise TypeError("nearest_neighbors must provide setup(data) and get_nearest_neighbors(query, k).")
        self.nearest_neighbors = nearest_neighbors
        self.projection_dim = projection_dim
        self.seed = seed
        if rerank is not None and (isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 1):
            raise ValueError(
                f"rerank must be a positive int (candidates per requested example) or None, got {rerank!r}."
            )
        self.rerank = rerank
        self._projections: tuple[torch.Tensor, torch.Tensor] | None = None
        self._train_embeddings: torch.Tensor | None = None
        self._embeddings_file: EmbeddingFile | None = None  # streamed projected embeddings (k=None reads them)
        self._build()

    @locked
    def _build(self) -> None:
        self._prepare_factors()
        da, dg = self._dims if self._factors is None else (self._factors.A.shape[-1], self._factors.G.shape[-1])
        self._projections = self._make_projections(dg, da)
        self._embeddings_file = None
        store = self._complete_store()
        if store is not None and self._build_in_store(store, da, dg):
            return
        emb = self._embeddings_in_memory()
        prog = _Progress("nearest-neighbour index", emb.shape[0], False, self.progress_callback)
        self.nearest_neighbors.setup(emb)
        prog.update(emb.shape[0])
        prog.close()
        if self._projections is not None:
            self._train_embeddings = emb

    def _embeddings_in_memory(self) -> torch.Tensor:
        if self._factors is not None and self._factors.A.dtype == self._compute_dtype and self._placement != "host":
            return self._embed(*self._factors)
        # streamed, in host memory or half precision: embedded block by block on the device, in full precision
        return torch.cat([self._embed(A, G) for _, A, G in self._factor_blocks(1 << 16)])

    def _complete_store(self) -> FactorStore | None:
        """The complete factor store in ``cache_dir`` (None without one, or when it could not be written)."""
        if self._stream is not None:
            return self._stream
        if self.cache_dir is None or self._cache_unwritable is not None:
            return None
        folder, expect = self._store_target()
        store = FactorStore.read(folder, expect) if folder is not None else None
        return store if store is not None and store.complete else None

    def _build_in_store(self, store: FactorStore, da: int, dg: int) -> bool:
        """The training embeddings into ``E-<tag>.bin`` of the store and the index from them (an Annoy index built
        on disk there, or memory-mapped when built before: ``influence/_embeddings.py``). The embeddings stay in
        memory only when the factors do; streamed factors are embedded and indexed block by block. False when the
        embeddings cannot be written (warned: the caller builds everything in memory)."""
        _, lrs = self._checkpoint_states()
        projected = self._projections is not None
        parts = {
            "store": store.meta.get("fingerprint"),
            "rows": store.rows,
            "learning_rates": [float(x).hex() for x in lrs],
            "dtype": dtype_name(self._compute_dtype),
            "factor_dtype": dtype_name(store.dtype),
            "dims": [da, dg],
            "projection_dim": self.projection_dim if projected else None,
            "seed": self.seed if projected else None,
        }
        tag = embedding_tag(parts, self._projections)
        rows, folder = store.rows, store.folder
        pg, pa = (self._projections[0].shape[1], self._projections[1].shape[1]) if self._projections else (dg, da)
        item = torch.empty((), dtype=self._compute_dtype).element_size()
        step = stream_rows(store.C * pg * pa * item, self.max_memory)
        emb = None if self._placement == "stream" else self._embeddings_in_memory()  # in memory as the factors are
        ef = EmbeddingFile.read(folder, tag, rows)
        if ef is None:
            writer: EmbeddingWriter | None = None
            try:
                writer = EmbeddingWriter(folder, tag)
                if emb is not None:
                    for s in range(0, rows, step):
                        writer.append(emb[s : s + step])
                else:
                    for _, A, G in self._factor_blocks(step):
                        writer.append(self._embed(A, G))
                ef = writer.finish({k: parts[k] for k in ("store", "projection_dim", "seed")})
            except OSError as e:
                if writer is not None:
                    writer.abort()
                self._warn_store_embeddings(folder, e, "the training embeddings", "they are kept in memory")
                return False
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
        index = self.nearest_neighbors
        prog = _Progress("nearest-neighbour index", rows, False, self.progress_callback)
        try:
            if isinstance(index, AnnoyNearestNeighbors) and type(index).setup is AnnoyNearestNeighbors.setup:
                path = folder / f"annoy-{tag}-t{index.num_trees}.ann"
                if not index.load(path, rows, ef.dim):

                    def blocks() -> Iterator[torch.Tensor]:
                        chunks = ((s, emb[s : s + step]) for s in range(0, rows, step)) if emb is not None else None
                        for _, block in chunks or ef.blocks(step):
                            yield block
                            prog.update(block.shape[0])

                    try:
                        index.build_on_disk(path, blocks(), rows, ef.dim)
                    except OSError as e:
                        self._warn_store_embeddings(folder, e, "the Annoy index", "it is built in memory")
                        index.setup(emb if emb is not None else ef.mapped())
            else:  # a CPU tensor mapped from the file (read as touched) when the factors are streamed
                index.setup(emb if emb is not None else ef.mapped())
            prog.finish()
        finally:
            prog.close()
        self._train_embeddings = emb if projected else None
        self._embeddings_file = ef if projected and emb is None else None
        return True

    def _warn_store_embeddings(self, folder: Path, e: OSError, what: str, instead: str) -> None:
        self._warn(
            f"cannot write {what} into the factor store {str(folder)!r} ({type(e).__name__}: {e.strerror or e}): "
            f"{instead} instead, not saved. Free some space there (or pass another cache_dir) for later instances "
            "to reuse them.",
            stacklevel=6,
        )

    def _make_projections(self, g_dim: int, a_dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        d = self.projection_dim
        if d is None or g_dim * a_dim <= d:
            return None
        gen = torch.Generator().manual_seed(self.seed)
        pg = min(int(d**0.5), g_dim)
        pa = min(int(d**0.5), a_dim)
        Pg = torch.randn(g_dim, pg, generator=gen) / math.sqrt(pg)
        Pa = torch.randn(a_dim, pa, generator=gen) / math.sqrt(pa)
        return Pg.to(self.device), Pa.to(self.device)

    def _embed(self, A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        _, lrs = self._checkpoint_states()
        roots = [sqrt_lr(lr, p) for lr, p in zip(lrs, self.checkpoints, strict=True)]
        parts = []
        for c, root in enumerate(roots):
            g, a = G[:, c], A[:, c]
            if self._projections is not None:
                g = g @ self._projections[0].to(g.dtype)
                a = a @ self._projections[1].to(a.dtype)
            parts.append((g.unsqueeze(2) * a.unsqueeze(1)).flatten(1) * root)
        return torch.cat(parts, dim=1)

    @locked
    def compute_intermediate_quantities(self, inputs: Inputs, aggregate: bool = False) -> torch.Tensor:
        """The embeddings of ``inputs`` (with ``test_loss_fn``): per checkpoint c, ``sqrt(lr_c)`` times
        ``(g_c P_g) outer (a_c P_a)`` flattened, concatenated over the checkpoints. Their dot products with the
        training embeddings are the (approximate; exact with ``projection_dim=None``) scores.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            aggregate: return the sum over the examples (one row) instead (as TracInCP's; Captum's RandProj has
                no ``aggregate``).

        Returns:
            A float tensor ``(n, D * C)`` on the CPU (``(1, D * C)`` with ``aggregate=True``): ``D`` is
            ``dim(g) * dim(a)``, or the projected dimensions' product, and ``C`` the number of checkpoints.

        Raises:
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        At, Gt = self._test_factors(inputs)
        emb = self._embed(At, Gt)
        return (emb.sum(0, keepdim=True) if aggregate else emb).cpu()

    @locked
    def influence(
        self,
        inputs: Inputs | None = None,
        k: int | None = 5,
        proponents: bool = True,
        show_progress: bool = False,
        *,
        distributed: bool = False,
    ) -> torch.Tensor | KMostInfluentialResults:
        """The most influential training examples of each example of ``inputs``, from the index (as Captum,
        note the default ``k=5``), or the score matrix with ``k=None``.

        Args:
            inputs: the test examples: one batch ``(*features, labels)`` (the model is called as
                ``model(*inputs[:-1])``) or a ``DataLoader`` of such batches that yields every row once, in order.
            k: a positive int (default 5): the ``k`` most influential training examples of each test example,
                found as ``rerank`` says. None: the full score matrix, from the embeddings' dot products
                (approximate when projected, exact with ``projection_dim=None``).
            proponents: True (the default) for the highest scores, False for the opponents (the lowest scores,
                most negative first).
            show_progress: show tqdm bars for the passes.
            distributed: keyword-only; True under ``torchrun`` is a ``ValueError`` (the index holds every training
                row on every rank, so any rank may query it alone). Default False.

        Returns:
            ``k=None``: a float tensor ``(n_test, n_train)`` on the CPU. ``k`` int:
            ``KMostInfluentialResults(indices, influence_scores)``, both ``(n_test, k)`` (fewer columns when the
            training set is smaller) on the CPU, ``indices`` int64, sorted by descending score (proponents) or
            ascending score (opponents); the scores are exact with ``rerank``, the index's own without.

        Raises:
            TypeError, ValueError: ``k`` is not a positive int or None, ``proponents`` is not a bool.
            TypeError, ValueError: before any pass over the training data, when ``inputs`` is not a batch with
                labels (or is empty), the model cannot take it, or a label is not a class of the model (for a
                loss that takes class indices); ValueError when gradients are not finite, naming the rows.
        """
        if self._query_group(distributed) is not None:
            raise ValueError(
                "TracInCPFastRandProj.influence(distributed=True): its nearest-neighbour index holds every training "
                "row on every rank, so its queries are not split over the ranks. Call influence without "
                "distributed=True (any rank may query alone), or use TracInCPFast's influence(distributed=True) for "
                "an exact top-k split over the ranks; self_influence(distributed=True) works here too."
            )
        k = check_k(k)
        proponents = check_proponents(proponents)
        At, Gt = self._test_factors(inputs, show_progress=show_progress)
        if k is None:
            ef = self._embeddings_file
            if self._train_embeddings is None and ef is None:
                return self._scores_or_topk(At, Gt, None, proponents, show_progress)
            prog = _Progress("influence", self._n_rows(), show_progress, None)
            q = self._embed(At, Gt)
            if self._train_embeddings is not None:
                scores = (q @ self._train_embeddings.T).cpu()
            else:  # streamed: the embeddings file block by block
                assert ef is not None
                step = stream_rows(ef.dim * ef.item, self.max_memory)
                scores = torch.cat([(q @ b.to(q.device, q.dtype).T).cpu() for _, b in ef.blocks(step)], dim=1)
            prog.finish()
            return scores
        q = self._embed(At, Gt)
        n_train = self._n_rows()
        kk = min(n_train, k * self.rerank) if self.rerank else k
        prog = _Progress("nearest neighbours", q.shape[0], show_progress, None)
        idx, vals = self.nearest_neighbors.get_nearest_neighbors(q if proponents else -q, kk)
        prog.finish()
        idx = torch.as_tensor(idx).to(torch.int64)
        vals = torch.as_tensor(vals).to(q.dtype)  # an index may return float64 (annoy's Python floats)
        if not self.rerank:
            return KMostInfluentialResults(idx.cpu(), (vals if proponents else -vals).cpu())
        # exact rerank of the candidates from the cached factors
        cand = idx.to(self.device)
        A, G = self._factor_rows(cand)
        gg = torch.einsum("ncd,nkcd->nkc", Gt, G)
        aa = torch.einsum("ncd,nkcd->nkc", At, A)
        exact = (gg * aa * self._lr_tensor(A)).sum(-1)
        vals, pos = torch.topk(exact, min(k, exact.shape[1]), dim=1, largest=proponents)
        return KMostInfluentialResults(torch.gather(cand, 1, pos).cpu(), vals.cpu())
