"""Model hygiene shared by the engine and the explorer: one lock per model (and ``locked``, the engines' methods
that hold it), the model's device, the compute device checked against this machine, and train/eval modes restored
module by module."""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, ParamSpec, Protocol, TypeGuard, TypeVar

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


class _HasModel(Protocol):
    model: nn.Module


_P = ParamSpec("_P")
_R = TypeVar("_R")
_Self = TypeVar("_Self", bound=_HasModel)


def locked(method: Callable[Concatenate[_Self, _P], _R]) -> Callable[Concatenate[_Self, _P], _R]:
    """Serialise an engine's public calls that touch the model (``model_lock``: a widget may call from a worker
    thread), and leave the global RNG untouched (iterating a DataLoader draws a seed from it)."""

    @functools.wraps(method)
    def wrapper(self: _Self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with model_lock(self.model), torch.random.fork_rng(devices=[]):
            return method(self, *args, **kwargs)

    return wrapper


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


class _OnDevice(Protocol):
    model: nn.Module
    device: torch.device


@contextlib.contextmanager
def computing(engine: _OnDevice) -> Iterator[None]:
    """An engine's computation (``TracInCPBase._computing``): ``engine.model`` in eval mode on ``engine.device``;
    afterwards the model is exactly as the user left it (device, train/eval flags, ``requires_grad``)."""
    model = engine.model
    flags = [(p, p.requires_grad) for p in model.parameters()]
    dev = model_device(model)
    moved = not same_device(dev, engine.device)
    try:
        if moved:
            model.to(engine.device)
        with eval_mode(model):
            yield
    finally:
        if moved:
            model.to(dev)
        for p, rg in flags:
            p.requires_grad_(rg)


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


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are one device, ``"cuda"`` (no index: the current GPU, where ``.to("cuda")`` puts a
    tensor) matching any index: ``torch.device("cuda") != torch.device("cuda:0")``, yet factors moved to
    ``device="cuda"`` report ``cuda:0``."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def resolve_device(device: Any, model: nn.Module) -> torch.device:
    """``device=`` checked against this machine (None: the model's device), so that a typo or a missing GPU is
    an error here rather than deep inside the first pass."""
    if device is None:
        return model_device(model)
    fix = "use device='cpu' or omit it (the model's device is used)"
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(
            f"device must be a str such as 'cpu' or 'cuda:0', a torch.device or None, not {type(device).__name__}: "
            f"{fix}."
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device name ({e}): {fix}, or name one like 'cuda:0'.") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={device!r} but no CUDA GPU is available here (torch.cuda.is_available() is False): {fix}."
            )
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device={device!r} but this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1}): "
                f"pick one of those, or {fix}."
            )
        return dev
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS (Apple GPU) is not available here: {fix}.")
    if dev.type == "meta":
        raise ValueError(f"device={device!r} holds no data, so nothing can be computed there: {fix}.")
    try:
        torch.empty(1, device=dev)
    except Exception as e:  # an accelerator torch was not built with, or that is absent: say which
        raise ValueError(f"device={device!r} cannot be used here ({type(e).__name__}: {e}): {fix}.") from None
    return dev
