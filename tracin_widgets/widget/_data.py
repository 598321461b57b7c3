"""Dataset access for the explorer: items checked, labels as ints, one item as a batch (torch; no widget imports).
The model's predictions go through the engine (``_engine.predict``)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset


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
    """``device`` as a torch.device, or (None) that of the model's first parameter or buffer (CPU without either)."""
    if device is not None:
        return torch.device(device)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_logits(out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            "the model must return logits of shape (batch, n_classes) for the explorer's predictions, got "
            f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}."
        )
    return out
