"""Model hygiene shared by the engine and the explorer: one lock per model, the model's device, and
train/eval modes restored module by module."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import TypeGuard

import torch
from torch import nn

_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one re-entrant lock of ``model``. Everything that loads weights into ``model`` or predicts with
    it (every engine instance, the explorer) holds it, so nobody sees another user's checkpoint weights."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block; afterwards every module has its *own* training flag back
    (``model.train(was_training)`` would flip a submodule the user had put in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, t in modes:
            m.training = t


def _is_parallel_wrapper(model: nn.Module) -> TypeGuard[nn.DataParallel | nn.parallel.DistributedDataParallel]:
    return isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def inner_module(model: nn.Module) -> nn.Module:
    """The module a ``nn.DataParallel`` / ``DistributedDataParallel`` wrapper holds (``model`` itself when it is
    not wrapped). The engine computes on it: ``torch.func.functional_call`` refuses the wrappers, and on one
    device a wrapper's forward is its module's forward."""
    while _is_parallel_wrapper(model):
        model = model.module
    return model


def wrapper_depth(model: nn.Module) -> int:
    """How many ``module.`` prefixes the wrapper(s) around ``model`` add to its parameter names."""
    depth = 0
    while _is_parallel_wrapper(model):
        model, depth = model.module, depth + 1
    return depth
