"""Dataset access and model predictions for the explorer (torch; no widget imports)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from ..influence import _model, _predict
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

    The engine's batched path (:func:`tracin_widgets.influence.predict`): rows read in blocks by the engine's
    readers where it knows the dataset, the model called as ``model(*batch[:-1])`` in eval mode without gradients
    with the engine's exact fast CPU kernels; its train/eval flag is restored after each block, module by module.
    The model's own lock (shared with every engine) and ``lock`` are held per block, so no engine's checkpoint
    weights are ever in the model while it predicts. ``on_width`` gets the number of classes the model outputs
    (the logits' width) of each block.
    """

    def check(out: Any) -> None:
        check_logits(out)
        if on_width:
            on_width(int(out.shape[1]))

    res = _predict.predict(
        model,
        dataset,
        indices,
        batch_size=batch_size,
        device=model_device(model, device),
        lock=lock,
        progress=progress,
        on_logits=check,
    )
    return res.labels, res.preds, res.probs
