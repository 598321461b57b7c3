"""Dataset access and model predictions for the explorer (torch; no widget imports)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..influence import _model
from ..influence._model import eval_mode, model_lock


def check_item(item: Any, what: str) -> tuple:
    if isinstance(item, torch.Tensor) or not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(
            f"{what} must return (features, label) tuples (the last element is the label, as for the engine); "
            f"got {type(item).__name__}."
        )
    return tuple(item)


def as_int(label: Any) -> int:
    if isinstance(label, torch.Tensor):
        if label.numel() != 1:
            raise ValueError(
                f"labels must be class indices (one int per example), got a tensor of shape {tuple(label.shape)}."
            )
        return int(label.item())
    return int(label)


def collate_one(item: tuple) -> tuple:
    """A single dataset item as a batch of one: ``(x[None], ..., y[None])``."""
    out = []
    for v in item:
        if isinstance(v, torch.Tensor):
            out.append(v.unsqueeze(0))
        elif isinstance(v, np.ndarray):
            out.append(torch.from_numpy(v).unsqueeze(0))
        else:
            out.append(torch.as_tensor([v]))
    return tuple(out)


def fast_labels(dataset: Any) -> np.ndarray | None:
    """Labels without iterating, for TensorDataset and Subset(TensorDataset); None otherwise."""
    base, idx = dataset, None
    if isinstance(dataset, Subset):
        base, idx = dataset.dataset, np.asarray(dataset.indices)
    tensors = getattr(base, "tensors", None)
    if isinstance(base, torch.utils.data.TensorDataset) and tensors and tensors[-1].dim() == 1:
        lab = tensors[-1].detach().cpu().numpy().astype(np.int64)
        return lab if idx is None else lab[idx]
    return None


def model_device(model: torch.nn.Module, device: Any) -> torch.device:
    return torch.device(device) if device is not None else _model.model_device(model)


def check_logits(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            "the model must return logits of shape (batch, n_classes) for the explorer's predictions, got "
            f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}."
        )
    return out


def n_outputs(model: torch.nn.Module, item: tuple, *, device: Any = None) -> int:
    """The number of classes ``model`` outputs (the width of its logits), from one forward pass on ``item``.

    Holds the model's own lock and restores every module's train/eval flag, as :func:`predict` does.
    """
    batch = collate_one(check_item(item, "train_dataset[i]"))
    dev = model_device(model, device)
    with model_lock(model), eval_mode(model), torch.no_grad():
        out = model(*[b.to(dev) if isinstance(b, torch.Tensor) else b for b in batch[:-1]])
    return int(check_logits(out).shape[1])


def predict(
    model: torch.nn.Module,
    dataset: Any,
    indices: Sequence[int] | None,
    *,
    batch_size: int,
    device: Any = None,
    lock: threading.Lock | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_width: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predicted classes and predicted-class probabilities (softmax) of ``dataset[indices]``.

    The model is called as ``model(*batch[:-1])`` in eval mode without gradients; its train/eval flag is restored
    after each batch, module by module. The model's own lock (shared with every engine) and ``lock`` are held
    per batch, so no engine's checkpoint weights are ever in the model while it predicts. ``on_width`` gets the
    number of classes the model outputs (the logits' width) of each batch.
    """
    ds = dataset if indices is None else Subset(dataset, list(indices))
    n = len(ds)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
    dev = model_device(model, device)
    labels, preds, probs = [], [], []
    done = 0
    if progress:
        progress(0, n)
    for batch in loader:
        batch = check_item(batch, "the dataset")
        with lock if lock is not None else nullcontext(), model_lock(model), eval_mode(model), torch.no_grad():
            out = model(*[b.to(dev) if isinstance(b, torch.Tensor) else b for b in batch[:-1]])
        check_logits(out)
        if on_width:
            on_width(int(out.shape[1]))
        p = torch.softmax(out.float(), dim=1).cpu()
        conf, cls = p.max(dim=1)
        lab = batch[-1]
        labels.append(np.asarray(lab.cpu() if isinstance(lab, torch.Tensor) else lab).reshape(-1).astype(np.int64))
        preds.append(cls.numpy().astype(np.int64))
        probs.append(conf.numpy().astype(np.float64))
        done += len(cls)
        if progress:
            progress(done, n)
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(labels), np.concatenate(preds), np.concatenate(probs)
