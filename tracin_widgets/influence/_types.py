"""The engines' shared types: the top-k result, the argument aliases, the model lock decorator and progress."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, NamedTuple, ParamSpec, TypeVar

import torch

from ._model import model_lock

if TYPE_CHECKING:
    from ._base import TracInCPBase


class KMostInfluentialResults(NamedTuple):
    """Top-k result: ``indices`` (int64, ``(n_test, k)``) and ``influence_scores`` (same shape).

    Proponents are sorted by descending score, opponents by ascending score (most negative first).
    """

    indices: torch.Tensor
    influence_scores: torch.Tensor


ProgressCallback = Callable[[str, int, int], Any]  # (phase, done, total); total is -1 when unknown
Inputs = tuple | list | torch.utils.data.DataLoader  # one batch (*features, labels), or a DataLoader of them
Checkpoints = str | os.PathLike | Iterable[str | os.PathLike]  # a folder, a file, or a list of files

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Engine = TypeVar("_Engine", bound="TracInCPBase")


def locked(method: Callable[Concatenate[_Engine, _P], _R]) -> Callable[Concatenate[_Engine, _P], _R]:
    """Serialise public calls that touch the model (a widget may call from a worker thread), and leave the
    global RNG untouched (iterating a DataLoader draws a seed from it)."""

    @functools.wraps(method)
    def wrapper(self: _Engine, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with model_lock(self.model), torch.random.fork_rng(devices=[]):
            return method(self, *args, **kwargs)

    return wrapper


class _Progress:
    """tqdm bar and/or a ``progress_callback(phase, done, total)``."""

    def __init__(self, phase: str, total: int | None, show: bool, callback: ProgressCallback | None):
        self.phase, self.total, self.done, self.callback = phase, total, 0, callback
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=phase, unit="ex")
        self._emit()

    def _emit(self) -> None:
        if self.callback is not None:
            self.callback(self.phase, self.done, self.total if self.total is not None else -1)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        self._emit()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finish(self) -> None:
        """Mark the phase complete (e.g. its result was cached) and close it."""
        if self.total is not None and self.done < self.total:
            self.update(self.total - self.done)
        self.close()
