"""Dataset access for the explorer: items checked, labels as ints, one item as a batch (torch; no widget imports).
The model's predictions go through the engine (``_engine.predict``)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

CLASSIFIERS_ONLY = (
    "the explorer shows classifiers (class labels, predicted classes and their probabilities), not regression "
    "targets or multi-label sets: for such a model use the engine directly, e.g. "
    "tracin_widgets.influence.TracInCPFast(...).influence(...) and .self_influence(), which take MSELoss, L1Loss, "
    "HuberLoss and BCEWithLogitsLoss."
)
REGRESSION_LOSSES = ("MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "BCEWithLogitsLoss", "BCELoss")


def check_item(item: Any, what: str) -> tuple:
    if isinstance(item, torch.Tensor) or not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(
            f"{what} must return (features, label) tuples (the last element is the label, as for the engine); "
            f"got {type(item).__name__}."
        )
    label = item[-1]
    floating = (
        isinstance(label, float)
        or (isinstance(label, torch.Tensor) and label.is_floating_point())
        or (isinstance(label, (np.ndarray, np.generic)) and np.issubdtype(label.dtype, np.floating))
    )
    if floating:
        raise ValueError(f"{what}'s label is a float ({label!r}): {CLASSIFIERS_ONLY}")
    return tuple(item)


def check_loss(loss: Any, what: str) -> None:
    """A loss the explorer's class view cannot show (a regression or multi-label loss) is a ValueError."""
    if loss is not None and type(loss).__name__ in REGRESSION_LOSSES:
        raise ValueError(f"{what} is {type(loss).__name__}: {CLASSIFIERS_ONLY}")


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
        if tensors[-1].is_floating_point():
            raise ValueError(f"train_dataset's labels are {tensors[-1].dtype} (floats): {CLASSIFIERS_ONLY}")
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
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == 1:
        raise ValueError(
            f"the model returns one output per example (a regression or a single-logit model): {CLASSIFIERS_ONLY}"
        )
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError(
            "the model must return logits of shape (batch, n_classes) for the explorer's predictions, got "
            f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}."
        )
    return out
