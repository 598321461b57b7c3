"""The model's own predictions over a dataset, read as fast as the engine reads it.

The explorer shows each example's predicted class and its probability. Fetching 400k rows one at a time through a
DataLoader and running torch's CPU ``max_pool2d`` made that step a quarter of the explorer's start-up; here the rows
come in blocks from the engine's readers (torchvision's CIFAR vectorised, a ``TensorDataset`` sliced, each through
any ``Subset``), and the forward runs under :class:`~._ops.FastCpuOps` on the CPU. Everything else reads through a
plain sequential DataLoader. The outputs are those of ``model(*batch[:-1])`` in eval mode without gradients, as the
user's model is given (never a checkpoint's weights: the model's own lock is held for every block).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from ._batch import as_batch, pick_output
from ._data import tensor_fast_path
from ._model import eval_mode, inner_module, model_device, model_lock
from ._ops import FastCpuOps
from ._store import dtype_name
from ._vision import vectorised_source

if TYPE_CHECKING:
    from .fast._bank import FactorBank
    from .fast._fast import TracInCPFast

BLOCK_ROWS = 1024  # rows per forward on the fast paths (the model lock is held for one block at a time)


class Predictions(NamedTuple):
    """Per example: its label, the predicted class (argmax of the logits) and that class's softmax probability."""

    labels: np.ndarray  # (n,) int64
    preds: np.ndarray  # (n,) int64
    probs: np.ndarray  # (n,) float64


def _tensor_rows(dataset: Any) -> tuple[tuple[torch.Tensor, ...], np.ndarray | None] | None:
    """``(tensors, index)`` when ``dataset`` is a TensorDataset inside any number of ``Subset``\\ s, else None."""
    index = None
    ds = dataset
    while isinstance(ds, Subset):
        sub = np.asarray(ds.indices, dtype=np.int64)
        index = sub if index is None else sub[index]
        ds = ds.dataset
    if type(ds) is not TensorDataset or len(ds.tensors) < 2:
        return None
    return ds.tensors, index


def _blocks(dataset: Any, batch_size: int, device: torch.device) -> Iterator[tuple]:
    """Batches ``(*features, labels)`` of ``dataset`` in order, from the fastest reader that applies."""
    n = len(dataset)
    rows = max(batch_size, BLOCK_ROWS)
    vec = vectorised_source(dataset)
    if vec is not None:
        yield from vec.batches(rows, device)
        return
    tens = _tensor_rows(dataset)
    if tens is not None:
        tensors, index = tens
        for s in range(0, n, rows):
            sel: Any = slice(s, min(n, s + rows)) if index is None else torch.from_numpy(index[s : s + rows])
            yield tuple(t[sel] for t in tensors)
        return
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)


def iter_logits(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 256,
    device: Any = None,
    lock: threading.Lock | None = None,
    label_key: str | None = None,
    output_key: str | int | None = None,
) -> Iterator[tuple[tuple, torch.Tensor]]:
    """``(batch, logits)`` block by block over ``dataset`` (in order): ``logits = model(*batch[:-1])`` (for dict
    items ``model(**features)``, the labels under ``label_key``; from a mapping or ``ModelOutput``, its ``logits``
    or ``output_key``) in eval mode without gradients (every module's train/eval flag restored after each block),
    holding the model's own lock and ``lock`` for each block, with the engine's exact fast CPU kernels. ``logits``
    is on ``device``."""
    dev = torch.device(device) if device is not None else model_device(model)
    fast = FastCpuOps if dev.type == "cpu" else contextlib.nullcontext
    for raw in _blocks(dataset, batch_size, dev):
        if isinstance(raw, torch.Tensor) or not isinstance(raw, (tuple, list, Mapping)) or len(raw) < 2:
            raise TypeError(
                "the dataset must return (features, label) tuples (the last element is the label, as for the "
                f"engine) or dicts holding the labels; its batches are {type(raw).__name__}."
            )
        batch = as_batch(raw, "dataset", label_key)
        moved = batch.to(dev)
        with lock if lock is not None else contextlib.nullcontext(), model_lock(model), eval_mode(model):
            with torch.no_grad(), fast():
                out = pick_output(moved.call(model), output_key, "dataset")
        yield batch, out


def predict(
    model: nn.Module,
    dataset: Any,
    indices: Sequence[int] | None = None,
    *,
    batch_size: int = 256,
    device: Any = None,
    lock: threading.Lock | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_logits: Callable[[torch.Tensor], None] | None = None,
    label_key: str | None = None,
    output_key: str | int | None = None,
) -> Predictions:
    """Labels, predicted classes and their softmax probabilities of ``dataset[indices]`` (all when None).

    Reads and runs the model as :func:`iter_logits`. ``progress(done, total)`` is called before the first block and
    after each; ``on_logits`` sees each block's raw output first (to check its shape). Arrays only: no Python object
    per example.
    """
    ds = dataset if indices is None else Subset(dataset, list(indices))
    n = len(ds)
    labels = np.empty(n, np.int64)
    preds = np.empty(n, np.int64)
    probs = np.empty(n, np.float64)
    done = 0
    if progress:
        progress(0, n)
    blocks = iter_logits(
        model, ds, batch_size=batch_size, device=device, lock=lock, label_key=label_key, output_key=output_key
    )
    for batch, out in blocks:
        if on_logits:
            on_logits(out)
        conf, cls = torch.softmax(out.detach().float(), dim=1).max(dim=1)
        m = len(cls)
        lab = batch[-1]
        labels[done : done + m] = np.asarray(lab.cpu() if isinstance(lab, torch.Tensor) else lab).reshape(-1)
        preds[done : done + m] = cls.cpu().numpy()
        probs[done : done + m] = conf.cpu().numpy()
        done += m
        if progress:
            progress(done, n)
    return Predictions(labels, preds, probs)


# ---------------------------------------------------------------------------------------------------------------------
# the training set's predictions read off TracInCPFast's factors (TracInCPFast.train_probabilities)
# ---------------------------------------------------------------------------------------------------------------------
NotExact = tuple[None, None, str]


def _refusal(engine: TracInCPFast, model: nn.Module) -> str | None:
    """Why the last checkpoint's loss gradients do not give ``model``'s probabilities exactly (None: they do)."""
    loss, bank = engine.loss_fn, engine.factors_
    if type(loss) is not nn.CrossEntropyLoss or engine.reduction_type not in ("sum", "mean"):
        return f"the loss is {type(loss).__name__}, not nn.CrossEntropyLoss with reduction 'sum' or 'mean'"
    if loss.weight is not None or loss.label_smoothing != 0:
        return "the loss has a class weight or label smoothing"
    if bank is None:
        return "the training factors are not computed yet"
    if not bank.as_computed:
        return f"the factors are kept in {dtype_name(bank.factor_dtype)}, not as computed"
    if inner_module(model) is not engine._net:
        return "the model is not the engine's model"
    states, _ = engine._checkpoint_states()
    with model_lock(engine.model):
        current = inner_module(model).state_dict()
        last = states[-1]
        same = current.keys() == last.keys() and all(
            v.dtype == last[k].dtype and v.shape == last[k].shape and torch.equal(v.to(last[k].device), last[k])
            for k, v in current.items()
        )
    return None if same else "the model's weights differ from the last checkpoint's"


def _given_labels(engine: TracInCPFast, labels: Any, n: int) -> torch.Tensor | str | None:
    """The training labels as int64 (``labels``, else the TensorDataset's own); a str says why not; None: not
    known without reading the examples."""
    if labels is None and tensor_fast_path(engine.train_dataloader):
        labels = engine.train_dataloader.dataset.tensors[-1]  # type: ignore[attr-defined]
    if labels is None:
        return None
    y = torch.as_tensor(labels).cpu()
    if y.shape != (n,) or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        return "the labels are not one int class index per training row"
    return y.long()


def _fill(
    bank: FactorBank, probs: torch.Tensor, y: torch.Tensor | None, rows: int, read_labels: Any
) -> torch.Tensor | str:
    """Copy the last checkpoint's loss gradients into ``probs`` block by block; the labels (``y``, else each
    gradient's one negative entry, ``read_labels`` for rows without one), or why they cannot be known."""
    ambiguous = []
    lab = torch.empty(len(probs), dtype=torch.int64) if y is None else y
    for s, G in bank.last_G(rows):
        p = probs[s : s + G.shape[0]]
        p.copy_(G)
        if y is None:
            neg = p < 0
            count = neg.sum(1)
            if bool((count > 1).any()):
                return "a loss gradient has several negative entries: the labels are not class indices"
            lab[s : s + p.shape[0]] = neg.to(torch.uint8).argmax(1)
            ambiguous.append(torch.nonzero(count == 0).flatten() + s)
    amb = torch.cat(ambiguous) if ambiguous else torch.empty(0, dtype=torch.int64)
    if len(amb):
        read = torch.as_tensor(np.asarray(read_labels(amb.numpy()), dtype=np.int64)).reshape(-1)
        if read.shape != amb.shape:
            return "read_labels did not give one label per requested row"
        lab[amb] = read
    return lab


def train_probabilities(
    engine: TracInCPFast,
    model: nn.Module,
    labels: Any = None,
    read_labels: Callable[[Any], Any] | None = None,
    rows: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor, str] | NotExact:
    """``TracInCPFast.train_probabilities`` (documented there): the probabilities and labels of the training set
    read off the last checkpoint's loss gradients, or ``(None, None, reason)``."""
    why = _refusal(engine, model)
    if why is not None:
        return None, None, why
    bank = engine.factors_
    assert bank is not None
    n, C = bank.n_rows, bank.dims[1]
    y = _given_labels(engine, labels, n)
    if isinstance(y, str):
        return None, None, y
    if y is None and read_labels is None:
        return None, None, "the training labels are not known without reading every example"
    probs = torch.empty(n, C, dtype=bank.compute_dtype)  # filled block by block: one (n, C) array at the peak
    lab = _fill(bank, probs, y, rows, read_labels)
    if isinstance(lab, str):
        return None, None, lab
    ignore = engine.loss_fn.ignore_index  # type: ignore[union-attr]
    if bool(((lab < 0) | (lab >= C) | (lab == ignore)).any()):
        return None, None, f"a label is ignore_index ({ignore}) or not a class in 0..{C - 1}"
    probs[torch.arange(len(lab)), lab] += 1
    if len(probs) and float(probs.min()) < 0:  # g_y = p_y - 1 <= 0 and g_k = p_k >= 0: other labels than trained on
        return None, None, "the labels do not match the loss gradients (not the engine's training labels?)"
    return probs, lab, "read off the last checkpoint's loss gradients"
