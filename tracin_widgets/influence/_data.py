"""Batches, loaders and devices."""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)
from torch.utils.data._utils.collate import default_collate, default_convert

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


ORDER_FIX = (
    "Pass the Dataset itself (the engine batches it in order), or DataLoader(dataset, batch_size=..., "
    "shuffle=False); for part of a dataset, pass torch.utils.data.Subset(dataset, indices)."
)


def check_sequential_loader(loader: DataLoader, what: str) -> None:
    """Refuse a DataLoader whose rows are not its dataset's rows 0..n-1, each once, in order.

    Result row/column j is example j of the dataset: a random or custom sampler or batch sampler (reorders,
    leaves out or repeats rows) or ``drop_last=True`` (leaves out the last rows) would silently break that.
    A plain ``DataLoader(ds, batch_size=B)`` and an unbatched sequential loader are accepted.
    """
    ds, sampler, bs = loader.dataset, loader.sampler, loader.batch_sampler
    problem = None
    if isinstance(ds, IterableDataset):
        pass  # no sampler: the rows are the dataset's own order
    elif _is_shuffled(loader):
        problem = "shuffle=True (a RandomSampler): the rows come in a random order that changes every pass"
    elif type(sampler) is not SequentialSampler:
        problem = f"sampler={type(sampler).__name__}: the rows come in that sampler's order, not the dataset's"
    elif bs is not None and type(bs) is not BatchSampler:
        problem = f"batch_sampler={type(bs).__name__}: the rows come in that batch sampler's order, not the dataset's"
    elif bs is not None and type(bs.sampler) is not SequentialSampler:
        problem = (
            f"a batch_sampler over {type(bs.sampler).__name__}: the rows come in that sampler's order, not the "
            "dataset's"
        )
    else:
        for smp in (sampler, getattr(bs, "sampler", sampler)):
            src = getattr(smp, "data_source", ds)
            if src is not ds and _safe_len(src) != _safe_len(ds):
                problem = "a SequentialSampler over another dataset: its rows are not this dataset's rows"
    if problem is None and (loader.drop_last or getattr(bs, "drop_last", False)):
        size = loader.batch_size or getattr(bs, "batch_size", None)
        n = _safe_len(ds)
        left = f"the last {n % size} of {n} rows" if size and n is not None else "the last rows"
        problem = f"drop_last=True: {left} are never read"
    if problem is None:
        return
    if what == "train_dataset":
        effect = "score column j would not be training example j"
    else:
        effect = f"result row i would not be row i of {what}"
    raise ValueError(f"{what} is a DataLoader with {problem}, so {effect}. {ORDER_FIX}")


def _safe_len(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


ACCEPTED_FORMS = (
    "Accepted: a torch Dataset whose items are (features..., label) tuples, e.g. TensorDataset(X, Y), or a "
    "DataLoader (shuffle=False) of such batches; the model is called as model(*item[:-1]) and the last "
    "element is the label."
)


def _describe(obj: Any) -> str:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)}"
    return type(obj).__name__


def check_train_items(loader: DataLoader, what: str = "train_dataset") -> list | None:
    """Look at the first example (one ``dataset[0]``) and refuse forms the engine would misread: a tuple
    ``(X, Y)`` or a list of tensors instead of a Dataset, items that are dicts, or items without a label.

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
    n = _safe_len(ds)
    if not n:
        return None
    item = ds[0]
    if isinstance(item, Mapping):
        keys = list(item.keys())
        label = next((k for k in keys if str(k).lower() in ("label", "labels", "target", "targets", "y")), None)
        feats = [k for k in keys if k != label] or ["..."]
        ret = ", ".join(f"item[{k!r}]" for k in feats[:3]) + f", item[{(label or 'label')!r}]"
        raise TypeError(
            f"{what} items are dicts (keys {keys[:6]}), e.g. a Hugging Face dataset. {ACCEPTED_FORMS} Wrap "
            "it in a small Dataset: class AsTuples(torch.utils.data.Dataset): __init__ stores ds, "
            f"__len__ returns len(ds), __getitem__(i) does item = ds[i]; return ({ret})."
        )
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
def label_rule(loss_fn: Any) -> tuple[str, int] | None:
    """``(loss name, ignore_index)`` for the losses that take class indices (CrossEntropyLoss, NLLLoss),
    whose labels can be checked against the model's class count; None for every other loss."""
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return type(loss_fn).__name__, int(loss_fn.ignore_index)
    return None


def check_labels(labels: Any, out_tail: tuple, rule: tuple[str, int], what: str, offset: int) -> None:
    """Raise a ValueError naming ``what``, the first bad row (``offset`` + its index) and the class count
    when ``labels`` cannot be class indices for a model output of shape ``(n, *out_tail)``."""
    name, ignore = rule
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


def batch_row(batch: Sequence[Any], i: int) -> tuple:
    """Row ``i`` of a batch (non-row elements are kept whole)."""
    n = batch_len(tuple(batch))
    return tuple(x[i] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n else x for x in batch)


def rows_getter(batches: Sequence[Sequence[Any]], offset: int = 0) -> Callable[[int], tuple]:
    """Global row ``i`` (counting from ``offset``) of consecutive batches."""
    starts, s = [], offset
    for b in batches:
        starts.append(s)
        s += batch_len(tuple(b))

    def get(i: int) -> tuple:
        j = max(k for k, st in enumerate(starts) if st <= i)
        return batch_row(batches[j], i - starts[j])

    return get


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
    batch = tuple(batch)
    if isinstance(batch[-1], (list, tuple, np.ndarray)):  # labels as a Python list, e.g. (x, [3, 1, 4])
        try:
            batch = batch[:-1] + (torch.as_tensor(batch[-1]),)
        except (TypeError, ValueError, RuntimeError):
            pass  # not numbers: left to the loss function
    return batch


def iter_input_batches(inputs: Any, what: str = "inputs") -> list[tuple]:
    """``inputs`` is one batch tuple or a DataLoader of batches; returns a list of batch tuples."""
    return list(input_batches(inputs, what))


def input_batches(inputs: Any, what: str = "inputs") -> Iterator[tuple]:
    """``inputs`` (one batch tuple or a DataLoader of batches) batch by batch, each checked as it comes: a
    DataLoader is read once, lazily, so that its batches need not all fit in memory at once."""
    if inputs is None:
        raise ValueError(
            f"{what} is required: pass a batch (x, y). For self-influence of the training set, call "
            "self_influence() without arguments."
        )
    if isinstance(inputs, DataLoader):
        check_sequential_loader(inputs, what)
        source: Iterable[Any] = inputs
    else:
        source = [inputs]
    empty = True
    for raw in source:
        b = check_batch(raw, what)
        if batch_len(b) == 0:
            raise ValueError(f"{what} has 0 rows: pass at least one example, e.g. (x[:1], y[:1]).")
        empty = False
        yield b
    if empty:
        raise ValueError(f"{what} is a DataLoader without batches (its dataset is empty): pass at least one example.")


def batch_len(batch: tuple) -> int:
    lab = batch[-1]
    if isinstance(lab, torch.Tensor):
        return int(lab.shape[0]) if lab.dim() > 0 else 1
    return len(lab)


def as_label_tensor(labels: Any) -> torch.Tensor:
    return labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
