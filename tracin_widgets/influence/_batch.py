"""One batch of examples, whatever form the user's data has: ``Batch``.

A batch holds the model's arguments and the labels: positional features ``(x, ...)`` (the model is called as
``model(*features)``) or keyword features ``{"input_ids": ..., ...}`` (``model(**features)``, the labels taken from
the ``"labels"`` or ``"label"`` key, or ``label_key``). Everything that handles batches goes through it: calling
the model, counting, slicing, joining and moving rows, and the feature shapes a probe forward depends on.

A batch is *row-aligned* when every feature tensor's first dimension is the label count (Python scalars are shared
by every row): only such a batch may be split into row chunks or joined with the next one. Any other batch (an
``nn.EmbeddingBag`` model's ``(tokens, offsets)``) is computed exactly as the loader gave it.

``Batch`` is a tuple ``(*features, labels)`` (for keyword features ``(Kwargs(features), labels)``), so code that
reads ``batch[-1]`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

SCALARS = (type(None), bool, int, float, str)  # features shared by every row of a batch
LABEL_KEYS = ("labels", "label")  # where a dict batch's labels are looked for without label_key


class Kwargs(dict):
    """The features of a keyword batch: the model is called as ``model(**features)``."""


def _first_dim(x: Any) -> int | None:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else None


class Batch(tuple):
    """``(*features, labels)``: see the module docstring. Attributes (plain, read without a call): ``args`` and
    ``kwargs`` (what the model is called with), ``labels``, ``n`` (rows: the label count), ``aligned`` (every
    feature tensor has ``n`` rows), ``joinable`` (aligned and every feature a tensor) and ``key`` (each feature's
    name, shape after the batch dimension and dtype; None when a feature is not a tensor)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    labels: Any
    n: int
    keyword: bool
    aligned: bool
    joinable: bool
    key: tuple | None
    device: torch.device | None

    def __new__(cls, args: Sequence[Any], labels: Any, kwargs: Mapping[str, Any] | None = None) -> Batch:
        kw = None if kwargs is None else Kwargs(kwargs)
        self = super().__new__(cls, (*args, labels) if kw is None else (kw, labels))
        self.args = tuple(args) if kw is None else ()
        self.kwargs = kw if kw is not None else {}
        self.labels = labels
        self.keyword = kw is not None
        if isinstance(labels, torch.Tensor):
            self.n = int(labels.shape[0]) if labels.dim() > 0 else 1
        else:
            self.n = len(labels)
        named = list(self.kwargs.items()) if kw is not None else list(enumerate(self.args))
        tensors = all(isinstance(v, torch.Tensor) for _, v in named)
        self.aligned = all(
            _first_dim(v) == self.n if isinstance(v, torch.Tensor) else isinstance(v, SCALARS) for _, v in named
        )
        self.joinable = self.aligned and tensors and isinstance(labels, torch.Tensor) and labels.dim() > 0
        self.key = tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in named) if tensors else None
        devices = {v.device for _, v in named if isinstance(v, torch.Tensor)}
        if isinstance(labels, torch.Tensor):
            devices.add(labels.device)
        self.device = devices.pop() if len(devices) == 1 else None  # None: several, or no tensor
        return self

    def _map(self, fn: Any, labels: Any = None) -> Batch:
        """A batch of ``fn(feature)`` for every feature (and ``labels``, default ``fn(self.labels)``)."""
        lab = fn(self.labels) if labels is None else labels
        if self.keyword:
            return Batch((), lab, {k: fn(v) for k, v in self.kwargs.items()})
        return Batch([fn(x) for x in self.args], lab)

    def call(self, fn: Any) -> Any:
        """``fn(*features)`` or ``fn(**features)``."""
        return fn(*self.args, **self.kwargs)

    def call_with(self, net: nn.Module, state: Mapping[str, torch.Tensor]) -> Any:
        """``net`` run with the weights ``state`` on these features (``torch.func.functional_call``)."""
        return functional_call(net, dict(state), self.args, self.kwargs)

    def to(self, device: torch.device, pin: bool = False) -> Batch:
        """The batch with its tensors on ``device`` (``pin``: CPU tensors pinned first, for an asynchronous copy)."""

        def move(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if pin and x.device.type == "cpu":
                x = x.pin_memory()
            return x.to(device, non_blocking=True)

        return self._map(move)

    def rows(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop``; a batch that is not row-aligned has only all of its rows."""
        if (start, stop) == (0, self.n):
            return self
        if not self.aligned:
            raise ValueError(
                "this batch is not row-aligned (a feature's first dimension is not the label count), so its rows "
                "cannot be taken apart"
            )
        n = self.n

        def cut(x: Any) -> Any:
            return x[start:stop] if _first_dim(x) == n else x

        labels = self.labels[start:stop] if not isinstance(self.labels, torch.Tensor) else cut(self.labels)
        return self._map(cut, labels)

    def split(self, size: int) -> list[Batch]:
        """Row chunks of at most ``size`` rows; the batch itself when it is not row-aligned."""
        if self.n <= size or not self.aligned:
            return [self]
        return [self.rows(s, min(s + size, self.n)) for s in range(0, self.n, size)]

    def joins(self, other: Batch) -> bool:
        """Whether ``other`` can be appended to this batch row by row (both row-aligned tensors, same shapes)."""
        return (
            self.joinable
            and other.joinable
            and self.keyword == other.keyword
            and self.key == other.key
            and self.labels.shape[1:] == other.labels.shape[1:]
            and self.labels.dtype == other.labels.dtype
        )

    @staticmethod
    def cat(batches: Sequence[Batch]) -> Batch:
        """Batches that ``joins`` each other, as one."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        labels = torch.cat([b.labels for b in batches])
        if first.keyword:
            return Batch((), labels, {k: torch.cat([b.kwargs[k] for b in batches]) for k in first.kwargs})
        return Batch([torch.cat(parts) for parts in zip(*(b.args for b in batches), strict=True)], labels)


def call_args(features: Any) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` of a model call from a ``Batch`` or the features ``batch[:-1]`` of one."""
    if isinstance(features, Batch):
        return features.args, features.kwargs
    features = tuple(features)
    if len(features) == 1 and isinstance(features[0], Kwargs):
        return (), features[0]
    return features, {}


def find_label_key(keys: Iterable[Any], label_key: str | None) -> Any:
    """The key holding the labels among ``keys`` (``label_key``, else ``"labels"`` or ``"label"``), or None."""
    keys = list(keys)
    if label_key is not None:
        return label_key if label_key in keys else None
    return next((k for k in LABEL_KEYS if k in keys), None)


def no_label_key(what: str, keys: Sequence[Any], label_key: str | None) -> ValueError:
    looked = repr(label_key) if label_key is not None else "'labels' or 'label'"
    return ValueError(
        f"{what} is a dict batch (keys {list(keys)[:8]}) without the key {looked} holding the labels: pass "
        "label_key='<the key of the labels>' to the engine (the model is called as model(**batch) with every "
        "other key)."
    )


def _as_labels(labels: Any) -> Any:
    if isinstance(labels, (list, tuple, np.ndarray)):  # labels as a Python list, e.g. (x, [3, 1, 4])
        try:
            return torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            pass  # not numbers: left to the loss function
    return labels


def as_batch(raw: Any, what: str, label_key: str | None = None) -> Batch:
    """A loader's batch (or the ``inputs`` of a query) as a ``Batch``: a tuple/list ``(*features, labels)`` or a
    mapping of features holding the labels under ``label_key`` (default ``"labels"`` or ``"label"``)."""
    if isinstance(raw, Batch):
        return raw
    if isinstance(raw, Mapping):
        key = find_label_key(raw.keys(), label_key)
        if key is None:
            raise no_label_key(what, list(raw.keys()), label_key)
        return Batch((), _as_labels(raw[key]), {k: v for k, v in raw.items() if k != key})
    if isinstance(raw, torch.Tensor) or not isinstance(raw, Sequence) or isinstance(raw, str):
        raise TypeError(
            f"{what} must be a tuple (*features, labels) or a dict batch: the last element (or the 'labels' key) "
            f"holds the labels and the model is called as model(*batch[:-1]) (or model(**features)). Got "
            f"{type(raw).__name__}; pass e.g. (x, y)."
        )
    if len(raw) < 2:
        raise ValueError(
            f"{what} has {len(raw)} element(s) but needs features and labels: pass (x, y), "
            "where the last element holds the labels."
        )
    return Batch(tuple(raw[:-1]), _as_labels(raw[-1]))


def pick_output(out: Any, output_key: str | int | None, what: str) -> Any:
    """The outputs to differentiate: a tensor as it is; from a mapping or a ``ModelOutput``, its ``"logits"``
    (or ``output_key``); from a tuple, the entry ``output_key`` (an int). Anything else is returned as it is (the
    caller refuses it)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        name = "logits" if output_key is None else output_key
        if name in out:
            return out[name]
        raise TypeError(
            f"the model returned a {type(out).__name__} with keys {list(out.keys())[:8]} but no {name!r} for the "
            f"{what}: pass output_key='<the key of the outputs to differentiate>' to the engine (e.g. "
            "output_key='logits')."
        )
    if isinstance(out, (tuple, list)) and isinstance(output_key, int) and -len(out) <= output_key < len(out):
        return out[output_key]
    return out


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Batch):
        return obj.to(device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        items = [to_device(o, device) for o in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def batch_len(batch: Sequence[Any]) -> int:
    if isinstance(batch, Batch):
        return batch.n
    lab = batch[-1]
    if isinstance(lab, torch.Tensor):
        return int(lab.shape[0]) if lab.dim() > 0 else 1
    return len(lab)


def split_rows(batch: Sequence[Any], n: int, size: int) -> list:
    """Split a batch into row chunks of at most ``size`` (non-tensor elements are shared; a ``Batch`` that is not
    row-aligned is never split)."""
    if isinstance(batch, Batch):
        return batch.split(size)
    if n <= size:
        return [batch]
    return [
        tuple(x[s : s + size] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n else x for x in batch)
        for s in range(0, n, size)
    ]


def batch_row(batch: Sequence[Any], i: int) -> tuple:
    """Row ``i`` of a batch (non-row elements are kept whole)."""
    if isinstance(batch, Batch):
        return batch.rows(i, i + 1)
    n = batch_len(tuple(batch))
    return tuple(x[i] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n else x for x in batch)


def rows_getter(batches: Sequence[Sequence[Any]], offset: int = 0) -> Any:
    """Global row ``i`` (counting from ``offset``) of consecutive batches."""
    starts, s = [], offset
    for b in batches:
        starts.append(s)
        s += batch_len(b)

    def get(i: int) -> tuple:
        j = max(k for k, st in enumerate(starts) if st <= i)
        return batch_row(batches[j], i - starts[j])

    return get


def feature_key(batch: Batch) -> tuple | None:
    """What a probe forward depends on: each feature's shape after the batch dimension and dtype (``Batch.key``).
    None when a feature is not a tensor (its contents may matter: such batches are probed every time)."""
    return batch.key if isinstance(batch, Batch) else as_batch(batch, "batch").key


# ------------------------------------------------------------------ reading inputs in order
def _is_shuffled(loader: DataLoader) -> bool:
    if isinstance(loader.sampler, RandomSampler):
        return True
    bs = getattr(loader, "batch_sampler", None)
    return bs is not None and isinstance(getattr(bs, "sampler", None), RandomSampler)


def safe_len(obj: Any) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


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
            if src is not ds and safe_len(src) != safe_len(ds):
                problem = "a SequentialSampler over another dataset: its rows are not this dataset's rows"
    if problem is None and (loader.drop_last or getattr(bs, "drop_last", False)):
        size = loader.batch_size or getattr(bs, "batch_size", None)
        n = safe_len(ds)
        left = f"the last {n % size} of {n} rows" if size and n is not None else "the last rows"
        problem = f"drop_last=True: {left} are never read"
    if problem is None:
        return
    if what == "train_dataset":
        effect = "score column j would not be training example j"
    else:
        effect = f"result row i would not be row i of {what}"
    raise ValueError(f"{what} is a DataLoader with {problem}, so {effect}. {ORDER_FIX}")


def iter_input_batches(inputs: Any, what: str = "inputs", label_key: str | None = None) -> list[Batch]:
    """``inputs`` is one batch or a DataLoader of batches; returns a list of ``Batch``."""
    return list(input_batches(inputs, what, label_key))


def input_batches(inputs: Any, what: str = "inputs", label_key: str | None = None) -> Iterator[Batch]:
    """``inputs`` (one batch, a tuple or a dict, or a DataLoader of batches) batch by batch, each checked as it
    comes: a DataLoader is read once, lazily, so that its batches need not all fit in memory at once."""
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
        b = as_batch(raw, what, label_key)
        if b.n == 0:
            raise ValueError(f"{what} has 0 rows: pass at least one example, e.g. (x[:1], y[:1]).")
        empty = False
        yield b
    if empty:
        raise ValueError(f"{what} is a DataLoader without batches (its dataset is empty): pass at least one example.")
