"""Batches, loaders and devices."""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)
from torch.utils.data._utils.collate import default_collate, default_convert

from ._batch import (  # re-exported: batches are read through these names
    ORDER_FIX,
    Batch,
    as_batch,
    batch_len,
    batch_row,
    check_sequential_loader,
    find_label_key,
    input_batches,
    iter_input_batches,
    no_label_key,
    rows_getter,
    safe_len,
    split_rows,
    to_device,
)

__all__ = [
    "ORDER_FIX",
    "Batch",
    "as_batch",
    "batch_len",
    "batch_row",
    "check_sequential_loader",
    "input_batches",
    "iter_input_batches",
    "rows_getter",
    "split_rows",
    "to_device",
]

DEFAULT_BATCH_SIZE = 512


ACCEPTED_FORMS = (
    "Accepted: a torch Dataset whose items are (features..., label) tuples, e.g. TensorDataset(X, Y), or a "
    "DataLoader (shuffle=False) of such batches; the model is called as model(*item[:-1]) and the last "
    "element is the label. Items or batches that are dicts are called as model(**features), the labels under "
    "'labels' or 'label' (or label_key=...)."
)


def _describe(obj: Any) -> str:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)}"
    return type(obj).__name__


def check_train_items(loader: DataLoader, what: str = "train_dataset", label_key: str | None = None) -> list | None:
    """Look at the first example (one ``dataset[0]``) and refuse forms the engine would misread: a tuple
    ``(X, Y)`` or a list of tensors instead of a Dataset, dict items without their labels, or items without a
    label.

    Returns the first example's feature shapes (for error messages), or None when not looked at (an
    iterable dataset, an empty one, or a DataLoader with its own ``collate_fn``, whose batches are checked
    as they arrive)."""
    ds = loader.dataset
    if isinstance(ds, (tuple, list)) and ds and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in ds):
        shapes = ", ".join(_describe(t) for t in ds[:4])
        raise TypeError(
            f"{what} is a {type(ds).__name__} of {len(ds)} tensors ({shapes}), not a dataset of examples. "
            f"{ACCEPTED_FORMS} If these are the columns (features..., labels), wrap them: "
            "torch.utils.data.TensorDataset(X, Y)."
        )
    if isinstance(ds, IterableDataset) or loader.collate_fn not in (default_collate, default_convert):
        return None
    n = safe_len(ds)
    if not n:
        return None
    item = ds[0]
    if isinstance(item, Mapping):  # model(**features), the labels under label_key ("labels" or "label")
        if find_label_key(item.keys(), label_key) is None:
            raise no_label_key(f"{what} item", list(item.keys()), label_key)
        return None
    if isinstance(item, (torch.Tensor, np.ndarray, str)) or not isinstance(item, Sequence):
        raise TypeError(
            f"{what} items are single {_describe(item)} values without a label. {ACCEPTED_FORMS} E.g. "
            "TensorDataset(X, Y)."
        )
    if len(item) < 2:
        raise TypeError(f"{what} items have {len(item)} element(s) but need features and a label. {ACCEPTED_FORMS}")
    if loader.batch_size is None:  # unbatched loader: its items must be batches already
        lab = item[-1]
        if isinstance(lab, (int, float, np.number)) or (isinstance(lab, (torch.Tensor, np.ndarray)) and lab.ndim == 0):
            raise TypeError(
                f"{what} is a DataLoader with batch_size=None, which does not batch: its items are single examples "
                "(a scalar label). Pass the Dataset itself, or DataLoader(dataset, batch_size=..., shuffle=False)."
            )
        return None
    return [tuple(x.shape) if isinstance(x, (torch.Tensor, np.ndarray)) else type(x).__name__ for x in item[:-1]]


# ------------------------------------------------------------------ labels
ELEMENTWISE = (  # losses comparing outputs and labels element by element: the shapes must be equal
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    nn.SoftMarginLoss,
    nn.MultiLabelSoftMarginLoss,
    nn.KLDivLoss,
    nn.PoissonNLLLoss,
)
FLOAT_TARGETS = (nn.BCELoss, nn.BCEWithLogitsLoss, nn.MultiLabelSoftMarginLoss)


def label_rule(loss_fn: Any) -> tuple[str, int | None] | None:
    """``(loss name, ignore_index)`` for the losses that take class indices (CrossEntropyLoss, NLLLoss),
    whose labels can be checked against the model's class count; ``(loss name, None)`` for the losses that
    compare outputs and labels element by element (``ELEMENTWISE``: the shapes must be equal, not broadcast);
    None for every other loss."""
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return type(loss_fn).__name__, int(loss_fn.ignore_index)
    if isinstance(loss_fn, ELEMENTWISE):
        return type(loss_fn).__name__, None
    return None


def feature_key(batch: Batch) -> tuple | None:
    """What a probe forward depends on: each feature's shape after the batch dimension and dtype (``Batch.key``).
    None when a feature is not a tensor (its contents may matter: such batches are probed every time)."""
    return batch.key


def check_shapes(labels: Any, out_tail: tuple, name: str, what: str) -> None:
    """An element-by-element loss ``name``: labels of the output's shape ``(n, *out_tail)``, floats for a
    multi-label loss (BCE)."""
    if not isinstance(labels, torch.Tensor):
        return
    out = "(" + ", ".join(["n", *map(str, out_tail)]) + ")"
    if tuple(labels.shape[1:]) != tuple(out_tail):
        n = labels.shape[0] if labels.dim() else 1
        fix = (
            "labels.unsqueeze(1) (or labels.view(-1, 1)) in the dataset, or a model output of shape (n,)"
            if labels.dim() == 1 and tuple(out_tail) == (1,)
            else (
                "labels.squeeze(1) in the dataset"
                if labels.dim() == 2 and labels.shape[1] == 1 and not out_tail
                else f"labels of shape {out}"
            )
        )
        to = f" to shape {_broadcast(labels, n, out_tail)}" if _broadcast(labels, n, out_tail) else ""
        raise ValueError(
            f"{what} labels have shape {tuple(labels.shape)}, but the model outputs shape {out}: {name} compares "
            f"them element by element, so they would broadcast{to} and every loss and score would be wrong. "
            f"Fix: {fix}."
        )
    if name in {t.__name__ for t in FLOAT_TARGETS} and not labels.is_floating_point():
        raise ValueError(
            f"{what} labels are {labels.dtype}, but {name} needs float targets of the output's shape {out} (for "
            "multi-label data one 0/1 per class): pass labels.float()."
        )


def _broadcast(labels: torch.Tensor, n: int, tail: tuple) -> tuple | None:
    try:
        return tuple(torch.broadcast_shapes((n, *tail), labels.shape))
    except RuntimeError:
        return None


def check_labels(labels: Any, out_tail: tuple, rule: tuple[str, int | None], what: str, offset: int) -> None:
    """Raise a ValueError naming ``what``, the first bad row (``offset`` + its index) and the class count
    when ``labels`` cannot be class indices for a model output of shape ``(n, *out_tail)`` (for an
    element-by-element loss: when their shapes differ, ``check_shapes``)."""
    name, ignore = rule
    if ignore is None:
        check_shapes(labels, out_tail, name, what)
        return
    if not isinstance(labels, torch.Tensor):
        if isinstance(labels, (list, tuple)) and any(
            not isinstance(v, (numbers.Integral, torch.Tensor, np.ndarray)) or isinstance(v, bool) for v in labels
        ):
            first = next(
                v
                for v in labels
                if not isinstance(v, (numbers.Integral, torch.Tensor, np.ndarray)) or isinstance(v, bool)
            )
            raise TypeError(
                f"{what} labels are {type(labels).__name__}s holding {type(first).__name__} {first!r}, but {name} "
                "needs int class indices: map each label to its class index (e.g. classes.index(label)) in the "
                "dataset's __getitem__ or before building the dataset."
            )
        return
    if not out_tail:
        return
    c = int(out_tail[0])
    fix = f"Labels must be int64 class indices in 0..{c - 1} (the model outputs {c} classes: dimension 1 of its output)"
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        if name == "CrossEntropyLoss" and labels.is_floating_point() and tuple(labels.shape[1:]) == tuple(out_tail):
            return  # class probabilities, shape (n, C, ...)
        probs = f", or class probabilities of shape (n, {c})" if name == "CrossEntropyLoss" else ""
        raise ValueError(
            f"{what} labels are {labels.dtype} of shape {tuple(labels.shape)}, but {name} needs class indices. "
            f"{fix}{probs}: pass labels.long() (rounded, if they are whole numbers stored as floats)."
        )
    if labels.dtype not in (torch.int64, torch.uint8):
        raise ValueError(f"{what} labels are {labels.dtype}, which {name} does not accept. {fix}: pass labels.long().")
    want = tuple(out_tail[1:])
    if labels.dim() and tuple(labels.shape[1:]) != want:
        shape = ", ".join(["n", *map(str, want)])
        squeeze = " (e.g. labels.squeeze(1))" if labels.dim() == 2 and labels.shape[1] == 1 and not want else ""
        raise ValueError(
            f"{what} labels have shape {tuple(labels.shape)}, but for a model output of shape "
            f"(n, {', '.join(map(str, out_tail))}) {name} needs class indices of shape ({shape},): one class index "
            f"per example{squeeze}."
        )
    flat = labels.reshape(labels.shape[0] if labels.dim() else 1, -1)
    bad = ((flat < 0) | (flat >= c)) & (flat != ignore)
    rows = bad.any(1).nonzero().flatten()
    if rows.numel() == 0:
        return
    r = int(rows[0])
    value = int(flat[r][bad[r]][0])
    kind = "negative" if value < 0 else "out-of-range"
    also = f" ({ignore} = ignore_index is also allowed)" if ignore < 0 else ""
    raise ValueError(
        f"{what} row {offset + r} has the {kind} label {value}, but the model outputs {c} classes "
        f"(0..{c - 1}){also}; rows with such labels: {rows.numel()} of the {flat.shape[0]} checked. {name} "
        f"would fail deep inside torch. {fix}: fix these labels, or give the model's last layer one output per class."
    )


# ------------------------------------------------------------------ non-finite rows
def nonfinite_parts(item: Any) -> tuple[bool, bool]:
    """(features non-finite, label non-finite) for one example ``(features..., label)``."""

    def bad(o: Any) -> bool:
        if isinstance(o, torch.Tensor):
            return (o.is_floating_point() or o.is_complex()) and not bool(torch.isfinite(o).all())
        if isinstance(o, np.ndarray):
            return o.dtype.kind in "fc" and not bool(np.isfinite(o).all())
        if isinstance(o, float):
            return not math.isfinite(o)
        if isinstance(o, Mapping):
            return any(bad(v) for v in o.values())
        if isinstance(o, (list, tuple)):
            return any(bad(v) for v in o)
        return False

    if isinstance(item, (list, tuple)) and len(item) >= 2:
        return any(bad(x) for x in item[:-1]), bad(item[-1])
    return bad(item), False


def nonfinite_rows(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool, bool]:
    """Rows of a TensorDataset's tensors with a NaN or inf: (row indices, any in features, any in labels)."""
    n = tensors[0].shape[0]
    masks = []
    for t in tensors:
        if t.is_floating_point() or t.is_complex():
            masks.append(~torch.isfinite(t.reshape(n, -1)).all(1))
        else:
            masks.append(torch.zeros(n, dtype=torch.bool, device=t.device))
    feat = torch.stack(masks[:-1]).any(0) if len(masks) > 1 else torch.zeros_like(masks[0])
    rows = (feat | masks[-1]).nonzero().flatten().cpu()
    return rows, bool(feat.any()), bool(masks[-1].any())


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


def iter_tensor_batches(
    loader: DataLoader, min_rows: int = 0, start: int = 0, stop: int | None = None
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Slices of the loader's TensorDataset (rows ``start:stop``, default all)."""
    tensors, bs = loader.dataset.tensors, max(loader.batch_size or 1, min_rows)  # type: ignore[attr-defined]
    n = len(loader.dataset) if stop is None else stop  # type: ignore[arg-type]
    for s in range(start, n, bs):
        yield tuple(t[s : min(s + bs, n)] for t in tensors)


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
        loader.dataset,
        batch_size=rows,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4,
        persistent_workers=False,
    )


def make_train_loader(train_dataset: Any, batch_size: int | None, num_workers: int) -> DataLoader:
    if isinstance(train_dataset, DataLoader):
        check_sequential_loader(train_dataset, "train_dataset")
        return train_dataset
    if not isinstance(train_dataset, Dataset) and not (
        hasattr(train_dataset, "__getitem__") and hasattr(train_dataset, "__len__")
    ):
        raise TypeError(f"train_dataset must be a torch Dataset or a DataLoader, not {type(train_dataset).__name__}.")
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int (or None for {DEFAULT_BATCH_SIZE}), got {batch_size!r}.")
    return DataLoader(
        train_dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
    )


def as_label_tensor(labels: Any) -> torch.Tensor:
    return labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
