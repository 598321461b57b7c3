"""Batches, loaders and devices."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, TensorDataset
from torch.utils.data._utils.collate import default_collate

DEFAULT_BATCH_SIZE = 512


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        items = [to_device(o, device) for o in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _is_shuffled(loader: DataLoader) -> bool:
    if isinstance(loader.sampler, RandomSampler):
        return True
    bs = getattr(loader, "batch_sampler", None)
    return bs is not None and isinstance(getattr(bs, "sampler", None), RandomSampler)


def tensor_fast_path(loader: DataLoader) -> bool:
    """True when iterating ``loader`` is the same as slicing its TensorDataset (no per-item indexing needed)."""
    return (
        isinstance(loader.dataset, TensorDataset)
        and type(loader.sampler) is SequentialSampler
        and type(loader.batch_sampler) is BatchSampler
        and not loader.drop_last
        and loader.batch_size is not None
        and loader.collate_fn is default_collate
    )


def iter_tensor_batches(loader: DataLoader, min_rows: int = 0):
    tensors, bs = loader.dataset.tensors, max(loader.batch_size or 1, min_rows)  # type: ignore[attr-defined]
    n = len(loader.dataset)  # type: ignore[arg-type]
    for s in range(0, n, bs):
        yield tuple(t[s : s + bs] for t in tensors)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_workers(train_dataset: Any, device: torch.device) -> int:
    """Loader workers when none are asked for: on a GPU machine, one per spare core (at most 16) for a
    per-item Dataset; none on the CPU (the model needs the cores) or for a TensorDataset (sliced directly)."""
    if isinstance(train_dataset, TensorDataset) or device.type == "cpu":
        return 0
    return max(0, min(16, usable_cores() - 1))


WORKER_START_S = 0.02  # measured: each DataLoader worker adds ~20 ms of start-up and shutdown (H200 host)


def estimate_workers(dataset: Any, n: int, cap: int) -> int:
    """Workers for one pass when the user chose none: time a few items here and balance the workers'
    start-up (``WORKER_START_S`` each) against the reading they share: ``w = sqrt(read time / start-up)``.
    A dataset that reads in under 50 ms gets none."""
    k = min(n, 4)
    t0 = time.perf_counter()
    for i in range(k):
        dataset[i]
    read_s = (time.perf_counter() - t0) / max(k, 1) * n
    if read_s < 0.05:
        return 0
    return max(1, min(cap, round(math.sqrt(read_s / WORKER_START_S))))


def pass_loader(loader: DataLoader, num_workers: int, device: torch.device, auto: bool = False) -> DataLoader:
    """The loader one pass iterates, for a loader the engine built itself around a per-item Dataset.

    With workers, the rows are read in small batches (about four per worker) so that every worker is busy
    from the start, and pinned for the copy to a GPU; the pass merges them again before the model sees them
    (scores do not depend on the batching). Without workers it is ``loader`` itself. ``auto``: the worker
    count is the engine's default, so trim it to what this dataset's reading time justifies.
    """
    if num_workers <= 0 or tensor_fast_path(loader):
        return loader
    n = len(loader.dataset)  # type: ignore[arg-type]
    if auto:
        num_workers = estimate_workers(loader.dataset, n, num_workers)
        if num_workers == 0:
            return loader
    rows = min(loader.batch_size or 1, max(32, -(-n // (num_workers * 4))))
    return DataLoader(
        loader.dataset, batch_size=rows, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda", prefetch_factor=4, persistent_workers=False,
    )


def split_rows(batch: tuple, n: int, size: int) -> list[tuple]:
    """Split a batch into row chunks of at most ``size`` (non-tensor elements are shared)."""
    if n <= size:
        return [batch]
    return [
        tuple(x[s : s + size] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n else x for x in batch)
        for s in range(0, n, size)
    ]


def make_train_loader(train_dataset: Any, batch_size: int | None, num_workers: int) -> DataLoader:
    if isinstance(train_dataset, DataLoader):
        if _is_shuffled(train_dataset):
            raise ValueError(
                "train_dataset is a DataLoader with shuffle=True: influence indices would refer to a random "
                "order that changes every pass. Pass DataLoader(dataset, batch_size=..., shuffle=False) "
                "or the Dataset itself."
            )
        return train_dataset
    if not isinstance(train_dataset, Dataset) and not (
        hasattr(train_dataset, "__getitem__") and hasattr(train_dataset, "__len__")
    ):
        raise TypeError(
            f"train_dataset must be a torch Dataset or a DataLoader, not {type(train_dataset).__name__}."
        )
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int (or None for {DEFAULT_BATCH_SIZE}), got {batch_size!r}.")
    return DataLoader(
        train_dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        persistent_workers=False,
    )


def check_batch(batch: Any, what: str) -> tuple:
    """A batch is a tuple/list ``(*features, labels)``."""
    if isinstance(batch, torch.Tensor) or not isinstance(batch, Sequence) or isinstance(batch, str):
        raise TypeError(
            f"{what} must be a tuple (*features, labels): the last element holds the labels and the model is "
            f"called as model(*batch[:-1]). Got {type(batch).__name__}; pass e.g. (x, y)."
        )
    if len(batch) < 2:
        raise ValueError(
            f"{what} has {len(batch)} element(s) but needs features and labels: pass (x, y), "
            "where the last element holds the labels."
        )
    return tuple(batch)


def iter_input_batches(inputs: Any, what: str = "inputs") -> list[tuple]:
    """``inputs`` is one batch tuple or a DataLoader of batches; returns a list of batch tuples."""
    if inputs is None:
        raise ValueError(
            f"{what} is required: pass a batch (x, y). For self-influence of the training set, call "
            "self_influence() without arguments."
        )
    if isinstance(inputs, DataLoader):
        if _is_shuffled(inputs):
            raise ValueError(f"{what} is a DataLoader with shuffle=True; pass shuffle=False so rows keep their order.")
        return [check_batch(b, what) for b in inputs]
    return [check_batch(inputs, what)]


def batch_len(batch: tuple) -> int:
    lab = batch[-1]
    if isinstance(lab, torch.Tensor):
        return int(lab.shape[0]) if lab.dim() > 0 else 1
    return len(lab)


def as_label_tensor(labels: Any) -> torch.Tensor:
    return labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
