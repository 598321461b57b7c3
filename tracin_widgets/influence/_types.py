"""The engines' shared types: the top-k result, the argument aliases, progress, and
the fields every engine has (declared once for the parts of ``TracInCPBase`` that live in other modules)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import torch
from torch import nn

from ._model import locked as locked  # its home is _model, next to model_lock

if TYPE_CHECKING:
    from ._base import TracInCPBase
    from ._vision import VectorisedImages


class KMostInfluentialResults(NamedTuple):
    """Top-k result: ``indices`` (int64, ``(n_test, k)``) and ``influence_scores`` (same shape).

    Proponents are sorted by descending score, opponents by ascending score (most negative first).
    """

    indices: torch.Tensor
    influence_scores: torch.Tensor


ProgressCallback = Callable[[str, int, int], Any]  # (phase, done, total); total is -1 when unknown
Inputs = tuple | list | torch.utils.data.DataLoader  # one batch (*features, labels), or a DataLoader of them
Checkpoints = str | os.PathLike | Iterable[str | os.PathLike]  # a folder, a file, or a list of files

_Engine = TypeVar("_Engine", bound="TracInCPBase")


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


class EngineFields:
    """What ``TracInCPBase.__init__`` sets and the methods it defines, declared for the mixins it is made of
    (``_reader._Reader``, ``_checks._Checks``, ``_memory._RowsPerForward``): nothing here exists at runtime."""

    model: nn.Module
    _net: nn.Module  # the module computed on: ``model``, or the one inside its DataParallel / DDP wrapper
    label_key: str | None  # the key of a dict batch's labels (None: "labels" or "label")
    output_key: str | int | None  # the entry of a mapping / ModelOutput / tuple output to differentiate
    checkpoints: list[str]
    train_dataset: Any
    train_dataloader: torch.utils.data.DataLoader
    device: torch.device
    num_workers: int
    loss_fn: Callable[..., torch.Tensor] | None
    test_loss_fn: Callable[..., torch.Tensor] | None
    copy_rows: int
    _auto_workers: bool
    _own_loader: bool
    _example_shapes: list | None
    _out_tail: tuple | None
    _labels_checked: bool
    _test_rows: int | None
    _vector_source: VectorisedImages | None | bool
    _row_bytes: float | None
    _row_peak: float | None
    _probed: dict[tuple, tuple]  # feature shapes and dtypes the model took (``Batch.key``) -> output tail
    _rows_memo: dict[tuple, int]  # rows per forward of a query, while the shapes do not change
    _passing: int  # training passes running now (rows per forward is measured afresh for each batch then)

    if TYPE_CHECKING:

        def _computing(self) -> contextlib.AbstractContextManager[None]: ...

        def _checkpoint_states(
            self, show_progress: bool = False
        ) -> tuple[list[dict[str, torch.Tensor]], list[float]]: ...

        def _forward(self, state: dict[str, torch.Tensor], features: Any, what: str) -> torch.Tensor: ...

        def _n_train(self) -> int | None: ...

        def _vectorised(self) -> VectorisedImages | None: ...

        def _output_tail(self, batch: Any, what: str, cached: bool = True, show_progress: bool = False) -> tuple: ...
