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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from ._model import eval_mode, model_device, model_lock
from ._ops import FastCpuOps
from ._vision import vectorised_source

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
) -> Iterator[tuple[tuple, torch.Tensor]]:
    """``(batch, logits)`` block by block over ``dataset`` (in order): ``logits = model(*batch[:-1])`` in eval mode
    without gradients (every module's train/eval flag restored after each block), holding the model's own lock and
    ``lock`` for each block, with the engine's exact fast CPU kernels. ``logits`` is on ``device``."""
    dev = torch.device(device) if device is not None else model_device(model)
    fast = FastCpuOps if dev.type == "cpu" else contextlib.nullcontext
    for batch in _blocks(dataset, batch_size, dev):
        if isinstance(batch, torch.Tensor) or not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                "the dataset must return (features, label) tuples (the last element is the label, as for the "
                f"engine); its batches are {type(batch).__name__}."
            )
        feats = [b.to(dev) if isinstance(b, torch.Tensor) else b for b in batch[:-1]]
        with lock if lock is not None else contextlib.nullcontext(), model_lock(model), eval_mode(model):
            with torch.no_grad(), fast():
                out = model(*feats)
        yield tuple(batch), out


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
    for batch, out in iter_logits(model, ds, batch_size=batch_size, device=device, lock=lock):
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
