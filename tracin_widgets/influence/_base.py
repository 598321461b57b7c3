"""Shared machinery of the three TracIn classes: arguments, checkpoints, model hygiene, notes, learning rates.

Reading the data (``_reader``), the finiteness checks (``_checks``) and rows per forward (``_memory``) are mixed
in; the names the engines import from here are re-exported."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from . import _cache
from ._batch import call_args, pick_output
from ._checkpoints import call_load_func, checkpoint_folder, load_checkpoint, resolve_checkpoints
from ._checks import _Checks, check_cache_dir, check_k, check_proponents, check_train_indices, sqrt_lr
from ._data import auto_workers, check_train_items, make_train_loader
from ._errors import TracInWarning
from ._memory import _RowsPerForward
from ._model import computing, inner_module, locked, resolve_device, same_device
from ._reader import _Reader
from ._topk import merge_topk
from ._types import Checkpoints, Inputs, KMostInfluentialResults, ProgressCallback, _Engine, _Progress
from ._vision import VectorisedImages

__all__ = [  # the names the engines import from here
    "Checkpoints",
    "Inputs",
    "KMostInfluentialResults",
    "ProgressCallback",
    "TracInCPBase",
    "_Progress",
    "check_k",
    "check_proponents",
    "check_train_indices",
    "locked",
    "merge_topk",
    "resolve_device",
    "same_device",
    "sqrt_lr",
]


TRANSPARENT: set[Any] = set()  # code of wrappers a warning's stacklevel does not count (e.g. a retry's)


def _stacklevel(stacklevel: int) -> int:
    """``stacklevel`` for ``warnings.warn`` in ``_warn``, the frames of ``TRANSPARENT`` code not counted."""
    frame, level, counted = sys._getframe(1), 1, 1  # _warn's own frame is level 1
    while counted < stacklevel and frame.f_back is not None:
        frame, level = frame.f_back, level + 1
        if frame.f_code not in TRANSPARENT:
            counted += 1
    return level


def check_key(key: Any, argname: str, types: type | tuple[type, ...], example: str) -> Any:
    if key is not None and (isinstance(key, bool) or not isinstance(key, types)):
        raise TypeError(
            f"{argname} must be a key of the dict batches (or None), not {type(key).__name__}: e.g. {example}."
        )
    return key


class TracInCPBase(_Reader, _Checks, _RowsPerForward):
    """Common base (Captum's ``TracInCPBase`` counterpart)."""

    _cache_kind = "base"  # classes that compute the same training-set quantities share cache files
    copy_rows = 4096  # rows per pinned host-to-GPU copy of a TensorDataset

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Any,
        checkpoints: Checkpoints,
        checkpoints_load_func: Callable[[nn.Module, str], Any] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        batch_size: int | None = None,
        test_loss_fn: Callable[..., torch.Tensor] | None = None,
        *,
        device: str | int | torch.device | None = None,
        num_workers: int | None = None,
        progress_callback: ProgressCallback | None = None,
        cache_dir: str | os.PathLike | None = None,
        weights_only: bool = True,
        data_version: str | None = None,
        label_key: str | None = None,
        output_key: str | int | None = None,
    ) -> None:
        """Captum's arguments, plus keyword-only extras; each is documented in the class docstring of
        ``TracInCP``, ``TracInCPFast`` and ``TracInCPFastRandProj`` (``help(TracInCPFast)``)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
        self.model = model
        self._net = inner_module(model)  # the module computed on (see _net's note in _types.EngineFields)
        self.label_key = check_key(label_key, "label_key", str, "label_key='target'")
        self.output_key = check_key(output_key, "output_key", (str, int), "output_key='logits'")
        # a duplicate's warning also reaches engine.notes (stacklevel: the user's engine constructor)
        self.checkpoints = resolve_checkpoints(checkpoints, warn=lambda m: self._warn(m, stacklevel=6))
        self._checkpoint_dir = checkpoint_folder(checkpoints)
        self._default_loader = checkpoints_load_func is None
        if checkpoints_load_func is None:
            checkpoints_load_func = partial(load_checkpoint, weights_only=weights_only)
        elif not callable(checkpoints_load_func):
            raise TypeError("checkpoints_load_func must be callable as checkpoints_load_func(model, path) -> lr.")
        self.checkpoints_load_func = checkpoints_load_func
        self.weights_only = weights_only
        self.train_dataset = train_dataset
        self.batch_size = batch_size
        self.device = resolve_device(device, model)
        self._auto_workers = num_workers is None
        if num_workers is None:
            num_workers = auto_workers(train_dataset, self.device)
        self.num_workers = num_workers
        self.train_dataloader = make_train_loader(train_dataset, batch_size, num_workers)
        self._own_loader = not isinstance(train_dataset, torch.utils.data.DataLoader)
        self._example_shapes = check_train_items(
            self.train_dataloader, label_key=self.label_key
        )  # one dataset[0]: refuse misread forms now
        self._out_tail: tuple | None = None  # the model output's shape after the batch dimension (first forward)
        self._labels_checked = False  # every training label checked at once (TensorDataset / CIFAR arrays)
        self._test_rows: int | None = None  # rows of the last inputs checked by _test_batches (for messages)
        self._vector_source: VectorisedImages | None | bool = False  # False: not looked at yet
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.progress_callback = progress_callback
        self.cache_dir = check_cache_dir(cache_dir, checkpoint_folder(checkpoints))
        if self.cache_dir is not None:
            _cache.check_cache_dir_name(self.cache_dir)  # a name too long: a ValueError now, not an OSError later
        self._cache_unwritable: str | None = None  # why saving failed (warned once), or None
        self._cache_probed = False
        if data_version is not None and not isinstance(data_version, str):
            raise TypeError(
                f"data_version must be a str naming the version of the training data (or None), not "
                f"{type(data_version).__name__}: e.g. data_version='labels-2024-06-01'."
            )
        self.data_version = data_version
        self._data_sampled = False  # the training data is recognised by a sample of its items (the key's)
        why = _cache.unrecognisable(self.train_dataloader, data_version) if self.cache_dir is not None else None
        if why is not None:  # a store under a random key could never be reused: none is written
            self._cache_unwritable, self._cache_probed = why, True
            self._warn(
                f"{why}. The results are computed in memory instead. Pass data_version='...' naming the version of "
                "the data (changed whenever the data changes) to keep them in cache_dir for later runs.",
                stacklevel=4,
            )
        self._states: list[dict[str, torch.Tensor]] | None = None
        self._lrs: list[float] | None = None
        self._fingerprint: str | None = None
        self._row_bytes: float | None = None  # activation bytes of one row (measured once, see _memory.py)
        self._row_peak: float | None = None  # what a no-grad forward of one row really holds (CUDA only)
        self._probed: dict[tuple, tuple] = {}  # feature shapes checked by a probe forward -> the output's tail
        self._rows_memo: dict[tuple, int] = {}  # rows per forward while the shapes do not change
        self._passing = 0  # training passes in progress

    @classmethod
    def get_name(cls) -> str:
        """Returns the class name, e.g. ``"TracInCPFast"`` (Captum's ``DataInfluence.get_name``). Takes no
        arguments and never raises; callable on the class or an instance."""
        return cls.__name__

    # ------------------------------------------------------------------ warnings
    @property
    def notes(self) -> list[str]:
        """The ``TracInWarning`` messages this engine has given so far, oldest first, each once (a copy). The
        explorer lists them above its views: a warning raised on a background thread reaches no cell."""
        return list(self.__dict__.get("_notes", ()))

    def _warn(self, message: str, stacklevel: int) -> None:
        """A ``TracInWarning`` (``stacklevel`` counted from this method's caller's caller, as from a module
        helper), also kept in ``_notes`` for whoever shows this engine's results (the explorer lists them: a
        warning raised on its background thread would otherwise reach no cell)."""
        notes = self.__dict__.setdefault("_notes", [])
        if message not in notes:
            notes.append(message)
        warnings.warn(message, TracInWarning, stacklevel=_stacklevel(stacklevel))

    # ------------------------------------------------------------------ model hygiene
    _computing = computing  # eval mode on the compute device; afterwards the model is exactly as the user left it

    def _checkpoint_states(self, show_progress: bool = False) -> tuple[list[dict[str, torch.Tensor]], list[float]]:
        """Load every checkpoint once (per instance); keep its tensors on the compute device.

        A ``checkpoints_load_func`` of the user's gets the model as the user passed it (a DataParallel/DDP
        wrapper included); the default loader gets the wrapped module, so checkpoints saved with or without
        the wrapper's ``module.`` prefix both load. The states are keyed like ``self._net``'s state dict."""
        if self._states is not None and self._lrs is not None:  # both set together, below
            return self._states, self._lrs
        model, net = self.model, self._net
        target = net if self._default_loader else model
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        states, lrs = [], []
        prog = _Progress("load checkpoints", len(self.checkpoints), show_progress, self.progress_callback)
        try:
            for path in self.checkpoints:
                lr = call_load_func(
                    self.checkpoints_load_func, target, path, self._default_loader, self._checkpoint_dir
                )
                states.append({k: v.detach().to(self.device, copy=True) for k, v in net.state_dict().items()})
                self._check_weights(states[-1], path)
                lrs.append(lr)
                prog.update(1)
        finally:
            model.load_state_dict(saved)
            prog.close()
        self._states, self._lrs = states, lrs
        if self.cache_dir is not None and not any(self.cache_dir.glob(f"tracin-{self._cache_kind}-*")):
            self._probe_cache()  # nothing there to reuse: say now, before any pass, if nothing can be saved
        return states, lrs

    def _forward(self, state: dict[str, torch.Tensor], features: Any, what: str) -> torch.Tensor:
        """The model's outputs on ``features`` (a ``Batch``, or a batch's ``batch[:-1]``) with the weights ``state``:
        a tensor, or the ``logits`` (``output_key``) of a mapping or ``ModelOutput``."""
        args, kwargs = call_args(features)
        try:
            out = functional_call(self._net, state, args, kwargs)
        except Exception as e:  # any error of the user's model: say which batch it could not take
            raise self._forward_error(e, args, kwargs, what) from e
        out = pick_output(out, self.output_key, what)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the model must return a tensor of outputs (or a mapping or ModelOutput holding them under "
                f"'logits', or output_key=...), got {type(out).__name__} for the {what}."
            )
        if out.dim() == 0:
            raise ValueError("the model output must have a batch dimension, got a 0-dim tensor.")
        return out

    def _forward_error(self, e: Exception, args: tuple, kwargs: dict, what: str) -> ValueError:
        def shape(f: Any) -> Any:
            return tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__

        arg = "train_dataset" if what.startswith("train") else "inputs"
        if kwargs:
            shapes = ", ".join(f"{k}: {shape(v)}" for k, v in kwargs.items())
            return ValueError(
                f"the model could not take the {what} ({arg}): model(**features) raised {type(e).__name__}: {e}. "
                f"Features were {{{shapes}}} (every key of the dict batch but the labels'). Fix: leave out the keys "
                "the model's forward does not take (e.g. dataset.remove_columns([...]) or with_format('torch', "
                "columns=[...])), or name the labels' key with label_key=..."
            )
        ex = getattr(self, "_example_shapes", None)
        train = (
            " (n rows: features of shape "
            + ", ".join("(" + ", ".join(map(str, ("n", *s))) + ")" if isinstance(s, tuple) else s for s in ex)
            + ", as the training examples)"
            if ex
            else ""
        )
        return ValueError(
            f"the model could not take the {what} ({arg}): model(*batch[:-1]) raised {type(e).__name__}: "
            f"{e}. Feature shapes were {[shape(f) for f in args]}. Fix: pass {arg} as (features..., labels) with "
            f"features shaped like a training batch{train}."
        )

    # ------------------------------------------------------------------ disk cache (influence/_cache.py)
    def _compute_fingerprint(self, extra: str) -> str:
        if self._fingerprint is None:
            _, lrs = self._checkpoint_states()  # the learning rates are part of the key
            report: dict = {}
            self._fingerprint = _cache.compute_fingerprint(
                kind=self._cache_kind,
                extra=extra,
                model=self.model,
                load_func=self.checkpoints_load_func,
                checkpoints=self.checkpoints,
                lrs=lrs,
                loss_fn=self.loss_fn,
                loader=self.train_dataloader,
                device=self.device,
                data_version=self.data_version,
                report=report,
            )
            self._data_sampled = bool(report.get("sampled"))
        return self._fingerprint

    def _cache_file(self, name: str, extra: str) -> Path | None:
        """The cache file for ``name``; when it does not exist yet, check (once, before the pass that will
        compute it) that it can be saved, and warn if not."""
        if self.cache_dir is None:
            return None
        path = _cache.cache_path(self.cache_dir, self._cache_kind, name, self._compute_fingerprint(extra))
        if not path.is_file():
            self._probe_cache()
        return path

    def _probe_cache(self) -> None:
        """Once per instance: can results be saved in cache_dir? If not, warn now (before a pass)."""
        if self.cache_dir is None or self._cache_probed:
            return
        self._cache_probed = True
        self._cache_unwritable = _cache.unwritable_reason(self.cache_dir)
        if self._cache_unwritable is not None:
            self._warn(_cache.not_saved_message(self.cache_dir, self._cache_unwritable), stacklevel=5)

    def _cache_load(self, path: Path | None) -> dict | None:
        return _cache.cache_load(path, self.device)

    def _cache_save(self, path: Path | None, obj: dict) -> None:
        """Save atomically; a failure warns (once) and never costs the result that was just computed."""
        if path is None or self._cache_unwritable is not None:
            return
        reason = _cache.cache_save(path, obj)
        if reason is not None:
            self._cache_unwritable = reason
            self._warn(_cache.not_saved_message(path.parent, reason), stacklevel=5)

    # ------------------------------------------------------------------ results
    def fit(self: _Engine, show_progress: bool = False) -> _Engine:
        """Precompute what later queries need (optional: done lazily otherwise). Returns ``self``."""
        return self

    @locked
    def learning_rates(self) -> list[float]:
        """The learning rate of each checkpoint (what ``checkpoints_load_func`` returned), in ``checkpoints``
        order; loads the checkpoints if they are not loaded yet. Takes no arguments.

        Returns:
            A list of floats, one per checkpoint.
        """
        _, lrs = self._checkpoint_states()
        return list(lrs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, checkpoints={len(self.checkpoints)}, "
            f"n_train={self._n_train()}, device={self.device})"
        )
