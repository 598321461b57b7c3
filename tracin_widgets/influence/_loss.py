"""Loss functions: which reductions are accepted and how per-example gradients are defined.

Captum's conventions are reproduced exactly: with ``reduction="mean"`` the gradient is multiplied back by
the batch size N (only N, so a loss that also averages over output dimensions keeps that factor), with
``"sum"`` it is used as is, with ``"none"`` each example's loss is summed over its remaining dimensions,
and ``loss_fn=None`` (TracInCP only) differentiates the summed model outputs.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch

from ._errors import TracInWarning

_EXAMPLES = {
    "sum": "nn.CrossEntropyLoss(reduction='sum')",
    "mean": "nn.CrossEntropyLoss(reduction='mean')",
    "none": "nn.CrossEntropyLoss(reduction='none')",
}


def loss_mode(loss_fn: Any, argname: str, allowed: tuple[str, ...], context: str, default_missing: str) -> str:
    """Validate ``loss_fn.reduction`` against ``allowed``; return the mode ('none', 'sum', 'mean', 'outputs')."""
    if loss_fn is None:
        if "outputs" in allowed:
            return "outputs"
        raise ValueError(
            f"{argname} is required for {context}: pass the training loss with reduction "
            f"{' or '.join(repr(a) for a in allowed if a != 'outputs')}, e.g. {_EXAMPLES[allowed[0]]}."
        )
    if not callable(loss_fn):
        raise TypeError(f"{argname} must be callable (loss_fn(outputs, labels)), not {type(loss_fn).__name__}.")
    check_takes_outputs_and_labels(loss_fn, argname, allowed)
    red = getattr(loss_fn, "reduction", None)
    if red is None:
        warnings.warn(
            f"{argname} has no `reduction` attribute; {context} assumes reduction={default_missing!r}. "
            "Use a torch.nn loss module to make this explicit.",
            TracInWarning,
            stacklevel=4,
        )
        return default_missing
    if red not in allowed:
        ok = [a for a in allowed if a != "outputs"]
        raise ValueError(
            f"{argname}.reduction is {red!r}, but {context} needs reduction "
            f"{' or '.join(repr(a) for a in ok)}: e.g. {_EXAMPLES[ok[0]]}."
        )
    return red


def check_takes_outputs_and_labels(loss_fn: Any, argname: str, allowed: tuple[str, ...]) -> None:
    """A loss is called as ``loss_fn(outputs, labels)``: refuse at once what cannot take two positional
    arguments (``nn.ReLU()``, ``nn.Softmax(dim=1)``, a three-input loss...). The signature of a module's
    ``forward`` is checked, else of the callable; one without a readable signature (some builtins) passes."""
    fn = loss_fn.forward if isinstance(loss_fn, torch.nn.Module) else loss_fn
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(object(), object())
    except TypeError as e:
        name = type(loss_fn).__name__ if isinstance(loss_fn, torch.nn.Module) else getattr(fn, "__qualname__", repr(fn))
        what = f"{name}.forward{sig}" if isinstance(loss_fn, torch.nn.Module) else f"{name}{sig}"
        ok = [a for a in allowed if a != "outputs"]
        raise TypeError(
            f"{argname} is not a loss: it is called as {argname}(outputs, labels), but {what} cannot take "
            f"those two arguments ({e}). Pass a loss such as {_EXAMPLES[ok[0]]}."
        ) from None


def total_loss(mode: str, loss_fn: Any, out: torch.Tensor, labels: Any, n: int) -> torch.Tensor:
    """A scalar whose gradient w.r.t. example i's output is example i's per-example loss gradient."""
    if mode == "outputs":
        return out.sum()
    loss = loss_fn(out, labels)
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}.")
    if mode == "none":
        if loss.dim() == 0 or loss.shape[0] != n:
            raise ValueError(
                f"loss_fn has reduction='none' but returned shape {tuple(loss.shape)} for a batch of {n}; "
                "it must return one loss per example."
            )
        return loss.sum()
    if loss.dim() != 0:
        if loss.shape and loss.shape[0] == n and mode == "sum":
            return loss.sum()
        raise ValueError(f"loss_fn with reduction={mode!r} must return a scalar, got shape {tuple(loss.shape)}.")
    return loss * n if mode == "mean" else loss
