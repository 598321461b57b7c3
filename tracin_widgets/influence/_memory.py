"""How many rows go through the model at once.

Merging small loader batches into large forwards pays for small models (fewer launches), but a large model's
activations grow with the rows: ResNet-50 on 224x224 images needs ~100 MB per row, so the GPU merge target of
16,384 rows would ask for terabytes. ``rows_per_forward`` keeps the merge target when it fits in the free
memory and otherwise runs as many rows as fit, never more than the loader's ``batch_size``. The activation
memory of one row is measured once per engine on a few rows (``forward_memory``); scores never depend on
the row count.

Two measures: the bytes of every module output (an upper bound, what a backward pass keeps), and, on a CUDA
device, the peak the caching allocator reached between module ends during the probe forward (what a no-grad
forward really holds at once: ResNet-50 keeps ~10 % of its summed outputs alive). A no-grad forward is sized
by the smaller of the two; a backward pass by the sum.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._batch import Batch, as_batch
from ._data import tensor_fast_path
from ._types import EngineFields

MEMORY_FRACTION = 0.5  # of the free memory one forward's activations may take (the rest: data, factors, caches)
NO_GRAD_SAFETY = 2.0  # no-grad forward: the summed module outputs, twice (workspaces, temporaries)
BACKWARD_SAFETY = 4.0  # forward kept for a backward pass, the activation gradients, per-example gradients
PROBE_ROWS = 4


def free_memory(device: torch.device) -> int:
    """Bytes a computation on ``device`` may still allocate: ``torch.cuda.mem_get_info`` plus what PyTorch's
    caching allocator holds unused on CUDA; MemAvailable from /proc/meminfo on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) + max(0, torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 40


def host_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0


def forward_memory(
    net: nn.Module, call: Callable[[], Any], inputs: Any = (), allocated: Callable[[], int] | None = None
) -> tuple[int, int | None]:
    """``(summed, peak)`` while ``call()`` runs ``net``: ``summed`` the bytes of every module output (and of
    ``inputs``), an upper bound on a forward pass's activation memory; ``peak`` the most
    ``allocated()`` (e.g. ``torch.cuda.memory_allocated``) rose above its value before the call, read at every
    module's end, plus ``inputs``' bytes (None without ``allocated``). Reading the allocator's counter needs no
    device synchronisation and leaves its peak statistics (which users may be tracking) alone."""
    total = [_tensor_bytes(inputs)]
    base = allocated() if allocated is not None else 0
    peak = [base]

    def hook(mod: nn.Module, inp: Any, out: Any) -> None:
        total[0] += _tensor_bytes(out)
        if allocated is not None:
            peak[0] = max(peak[0], allocated())

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        call()
    finally:
        for h in handles:
            h.remove()
    if allocated is None:
        return total[0], None
    return total[0], peak[0] - base + _tensor_bytes(inputs)


def rows_per_forward(
    row_bytes: float,
    merge_rows: int,
    batch_rows: int | None,
    device: torch.device,
    *,
    copies: int = 1,
    safety: float = NO_GRAD_SAFETY,
    free_bytes: int | None = None,
) -> int:
    """Rows per forward pass for a model whose activations take ``row_bytes`` per row.

    ``merge_rows`` (the merge target) when ``copies`` forwards of that many rows (a vmapped forward runs every
    checkpoint at once) need at most ``MEMORY_FRACTION`` of the free memory, counting ``row_bytes * safety``
    per row; otherwise the rows that fit, at most ``batch_rows`` (the loader's batch size), and at least 1.
    """
    if free_bytes is None:
        free_bytes = free_memory(device)
    need = max(1.0, float(row_bytes) * safety * max(1, copies))
    fit = int(free_bytes * MEMORY_FRACTION // need)
    if fit >= merge_rows:
        return merge_rows
    if batch_rows:
        fit = min(fit, batch_rows)
    return max(1, fit)


class _RowsPerForward(EngineFields):
    """``TracInCPBase``'s rows per forward: the activation memory of one row, measured once on a probe."""

    def _probe_batch(self) -> Batch | None:
        """A few training rows on the compute device, read without starting a pass (for the memory probe);
        None when the training set cannot be read item by item (the first batch of the pass is used then)."""
        loader = self.train_dataloader
        vec = self._vectorised()
        try:
            if vec is not None:
                batch = vec.block(0, min(PROBE_ROWS, vec.n), self.device)
            elif tensor_fast_path(loader):
                batch = tuple(t[:PROBE_ROWS] for t in loader.dataset.tensors)  # type: ignore[attr-defined]
            elif loader.batch_size is not None and not isinstance(loader.dataset, torch.utils.data.IterableDataset):
                ds = loader.dataset
                batch = loader.collate_fn([ds[i] for i in range(min(PROBE_ROWS, len(ds)))])  # type: ignore[arg-type]
            else:
                return None
        except Exception:  # only a probe: the pass itself reports a bad dataset
            return None
        try:
            probe = as_batch(batch, "train_dataset", self.label_key)
        except (TypeError, ValueError):
            return None
        return probe.to(self.device) if probe.n else None

    def _measure_rows(self, state: dict[str, torch.Tensor], batch: tuple, what: str) -> None:
        """Measure (once) the activation bytes of one row on a few rows of ``batch`` (all of them when it is not
        row-aligned)."""
        if self._row_bytes is not None:
            return
        if not isinstance(batch, Batch):
            batch = as_batch(batch, what, self.label_key)
        probe = batch.rows(0, min(batch.n, PROBE_ROWS)) if batch.aligned else batch
        k = probe.n
        feats = (probe.args, probe.kwargs)
        dev = self.device
        allocated = (lambda: torch.cuda.memory_allocated(dev)) if dev.type == "cuda" else None
        with torch.no_grad():
            total, peak = forward_memory(self._net, lambda: self._forward(state, probe, what), feats, allocated)
        self._row_bytes = total / max(1, k)
        self._row_peak = None if peak is None else min(total, peak) / max(1, k)
        self._rows_memo.clear()

    def _rows(self, merge_rows: int, copies: int = 1, backward: bool = False) -> int:
        """Rows per forward (``_memory.rows_per_forward``) once ``_measure_rows`` has run; ``merge_rows`` before.
        Outside a training pass the answer is kept until the feature shapes change (a warm query reads no free
        memory); during a pass it is worked out for every batch (the pass itself may fill the memory)."""
        if self._row_bytes is None:
            return merge_rows
        row = self._row_bytes if backward or self._row_peak is None else self._row_peak
        batch_rows = self.train_dataloader.batch_size
        key = (merge_rows, copies, backward, row, batch_rows, self.device)
        if not self._passing and key in self._rows_memo:
            return self._rows_memo[key]
        rows = rows_per_forward(
            row,
            merge_rows,
            batch_rows,
            self.device,
            copies=copies,
            safety=BACKWARD_SAFETY if backward else NO_GRAD_SAFETY,
        )
        if not self._passing:
            self._rows_memo[key] = rows
        return rows

    def _pass_rows(self, state: dict[str, torch.Tensor], merge_rows: int, backward: bool = False) -> int:
        """The merge target of a training pass: measured on a probe of the training set first. 0 (no merging:
        the loader's own batches, split further when needed) when no probe could be read."""
        self._rows_memo.clear()  # a pass starts: the free memory is read again
        if self._row_bytes is None:
            probe = self._probe_batch()
            if probe is None:
                return 0
            self._measure_rows(state, probe, "training batch")
        return self._rows(merge_rows, backward=backward)


def chunk_budget(device: torch.device, max_memory: int | None, default_cap: int) -> int:
    """Bytes of per-example gradients one chunk of TracInCP may materialise: ``max_memory`` when given, else
    ``default_cap`` but at most ``MEMORY_FRACTION`` of the free memory (read now)."""
    if max_memory is not None:
        return max_memory
    return max(1, min(default_cap, int(free_memory(device) * MEMORY_FRACTION)))
