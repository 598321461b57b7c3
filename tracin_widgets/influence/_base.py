"""Shared machinery of the three TracIn classes: checkpoints, model hygiene, progress, top-k."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from . import _cache
from ._checkpoints import call_load_func, checkpoint_folder, load_checkpoint, resolve_checkpoints
from ._data import (
    auto_workers,
    batch_len,
    check_labels,
    check_train_items,
    iter_input_batches,
    iter_tensor_batches,
    label_rule,
    make_train_loader,
    nonfinite_parts,
    nonfinite_rows,
    pass_loader,
    tensor_fast_path,
    to_device,
)
from ._distributed import rank_loader
from ._errors import TracInWarning
from ._memory import BACKWARD_SAFETY, NO_GRAD_SAFETY, PROBE_ROWS, forward_memory, rows_per_forward
from ._model import eval_mode, inner_module, model_device
from ._topk import finish_topk, merge_topk
from ._types import Checkpoints, Inputs, KMostInfluentialResults, ProgressCallback, _Engine, _Progress, locked
from ._vision import VectorisedImages, vectorised_source

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


def check_proponents(proponents: Any) -> bool:
    if not isinstance(proponents, (bool, np.bool_)):
        raise TypeError(
            f"proponents must be True (most helpful examples, highest scores first) or False (opponents, lowest "
            f"first), got {type(proponents).__name__} {proponents!r}."
        )
    return bool(proponents)


def check_k(k: Any) -> int | None:
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be a positive int (or None for the full score matrix), got {type(k).__name__} {k!r}.")
    if k <= 0:
        raise ValueError(f"k must be a positive int (or None for the full score matrix), got k={k}.")
    return k


def check_train_indices(train_indices: Any, n_train: int | None) -> torch.Tensor:
    """``train_indices`` (ints, a 1-D int tensor or array) as an int64 CPU tensor, each in ``[0, n_train)``."""
    fix = "pass training-set positions, e.g. train_indices=[3, 17] or the indices returned by influence(k=...)"
    if isinstance(train_indices, (str, bytes)) or not (
        isinstance(train_indices, (torch.Tensor, np.ndarray, Sequence)) or hasattr(train_indices, "__iter__")
    ):
        raise TypeError(f"train_indices must be a sequence of ints, got {type(train_indices).__name__}: {fix}.")
    values = train_indices.tolist() if isinstance(train_indices, (torch.Tensor, np.ndarray)) else list(train_indices)
    if isinstance(values, int):  # a 0-dim tensor or array
        values = [values]
    bad = [v for v in values if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))]
    if bad:
        raise TypeError(f"train_indices must be ints, got {type(bad[0]).__name__} {bad[0]!r}: {fix}.")
    if not values:
        raise ValueError(f"train_indices is empty: {fix}.")
    if n_train is not None and any(not 0 <= int(v) < n_train for v in values):
        out = next(int(v) for v in values if not 0 <= int(v) < n_train)
        raise ValueError(f"train_indices holds {out}, outside the training set [0, {n_train}): {fix}.")
    return torch.tensor([int(v) for v in values], dtype=torch.int64)


def _merge_batches(batches: Iterable[Any], min_rows: int) -> Iterator[Any]:
    pending: list = []
    rows = 0
    for b in batches:
        if isinstance(b, torch.Tensor) or not all(isinstance(x, torch.Tensor) for x in b):
            if pending:
                yield _cat(pending)
                pending, rows = [], 0
            yield b
            continue
        pending.append(b)
        rows += batch_len(tuple(b))
        if rows >= min_rows:
            yield _cat(pending)
            pending, rows = [], 0
    if pending:
        yield _cat(pending)


def _cat(batches: list) -> tuple:
    return batches[0] if len(batches) == 1 else tuple(torch.cat(parts) for parts in zip(*batches, strict=True))


def _check_cache_dir(cache_dir: Any, ckpt_folder: str | None) -> Path | None:
    if cache_dir is None:
        return None
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(
            f"cache_dir must be a folder path (str or os.PathLike) or None, not {type(cache_dir).__name__}."
        )
    path = Path(cache_dir)
    if ckpt_folder is not None and path.resolve() == Path(ckpt_folder).resolve():
        raise ValueError(
            f"cache_dir {str(path)!r} is the checkpoints folder: every file there is read as a checkpoint, the "
            "cache files too. Pass another folder as cache_dir, e.g. a 'tracin-cache' folder next to it."
        )
    return path


class TracInCPBase:
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
    ) -> None:
        """Captum's arguments, plus keyword-only extras; each is documented in the class docstring of
        ``TracInCP``, ``TracInCPFast`` and ``TracInCPFastRandProj`` (``help(TracInCPFast)``)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}.")
        self.model = model
        self.checkpoints = resolve_checkpoints(checkpoints)
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
        self._example_shapes = check_train_items(self.train_dataloader)  # one dataset[0]: refuse misread forms now
        self._out_tail: tuple | None = None  # the model output's shape after the batch dimension (first forward)
        self._labels_checked = False  # every training label checked at once (TensorDataset / CIFAR arrays)
        self._test_rows: int | None = None  # rows of the last inputs checked by _test_batches (for messages)
        self._vector_source: VectorisedImages | None | bool = False  # False: not looked at yet
        self.loss_fn = loss_fn
        self.test_loss_fn = loss_fn if test_loss_fn is None else test_loss_fn
        self.progress_callback = progress_callback
        self.cache_dir = _check_cache_dir(cache_dir, checkpoint_folder(checkpoints))
        self._cache_unwritable: str | None = None  # why saving failed (warned once), or None
        self._cache_probed = False
        if data_version is not None and not isinstance(data_version, str):
            raise TypeError(
                f"data_version must be a str naming the version of the training data (or None), not "
                f"{type(data_version).__name__}: e.g. data_version='labels-2024-06-01'."
            )
        self.data_version = data_version
        self._states: list[dict[str, torch.Tensor]] | None = None
        self._lrs: list[float] | None = None
        self._fingerprint: str | None = None
        self._row_bytes: float | None = None  # activation bytes of one row (measured once, see _memory.py)
        self._row_peak: float | None = None  # what a no-grad forward of one row really holds (CUDA only)

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
        warnings.warn(message, TracInWarning, stacklevel=stacklevel)

    # ------------------------------------------------------------------ model hygiene
    @property
    def _net(self) -> nn.Module:
        """The module computed on: ``self.model``, or the module inside its ``nn.DataParallel`` /
        ``DistributedDataParallel`` wrapper (``functional_call`` refuses the wrappers). Checkpoint states and
        layer names are those of this module (no ``module.`` prefix)."""
        return inner_module(self.model)

    @contextlib.contextmanager
    def _computing(self) -> Iterator[None]:
        """Eval mode on the compute device; afterwards the model is exactly as the user left it."""
        model = self.model
        flags = [(p, p.requires_grad) for p in model.parameters()]
        dev = model_device(model)
        moved = not same_device(dev, self.device)
        try:
            if moved:
                model.to(self.device)
            with eval_mode(model):
                yield
        finally:
            if moved:
                model.to(dev)
            for p, rg in flags:
                p.requires_grad_(rg)

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

    def _forward(self, state: dict[str, torch.Tensor], features: tuple, what: str) -> torch.Tensor:
        try:
            out = functional_call(self._net, state, features)
        except Exception as e:  # any error of the user's model: say which batch it could not take
            shapes = [tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__ for f in features]
            ex = getattr(self, "_example_shapes", None)
            train = (
                " (n rows: features of shape "
                + ", ".join("(" + ", ".join(map(str, ("n", *s))) + ")" if isinstance(s, tuple) else s for s in ex)
                + ", as the training examples)"
                if ex
                else ""
            )
            arg = "train_dataset" if what.startswith("train") else "inputs"
            raise ValueError(
                f"the model could not take the {what} ({arg}): model(*batch[:-1]) raised {type(e).__name__}: "
                f"{e}. Feature shapes were {shapes}. Fix: pass {arg} as (features..., labels) with features "
                f"shaped like a training batch{train}."
            ) from e
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a tensor of outputs, got {type(out).__name__} for the {what}.")
        if out.dim() == 0:
            raise ValueError("the model output must have a batch dimension, got a 0-dim tensor.")
        return out

    # ------------------------------------------------------------------ rows per forward
    def _probe_batch(self) -> tuple | None:
        """A few training rows on the compute device, read without starting a pass (for the memory probe);
        None when the training set cannot be read item by item (the first batch of the pass is used then)."""
        loader = self.train_dataloader
        vec = self._vectorised()
        try:
            if vec is not None:
                batch = vec.block(0, min(PROBE_ROWS, vec.n), self.device)
            elif tensor_fast_path(loader):
                batch = tuple(t[:PROBE_ROWS] for t in loader.dataset.tensors)  # type: ignore[attr-defined]
            elif loader.batch_size is not None and not isinstance(loader.dataset, torch.utils.data.IterableDataset):
                ds = loader.dataset
                batch = loader.collate_fn([ds[i] for i in range(min(PROBE_ROWS, len(ds)))])  # type: ignore[arg-type]
            else:
                return None
        except Exception:  # only a probe: the pass itself reports a bad dataset
            return None
        if not isinstance(batch, (list, tuple)) or len(batch) < 2 or batch_len(tuple(batch)) == 0:
            return None
        return to_device(tuple(batch), self.device)

    def _measure_rows(self, state: dict[str, torch.Tensor], batch: tuple, what: str) -> None:
        """Measure (once) the activation bytes of one row on a few rows of ``batch``."""
        if self._row_bytes is not None:
            return
        n = batch_len(batch)
        k = min(n, PROBE_ROWS)
        probe = tuple(x[:k] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n else x for x in batch)
        feats = tuple(probe[:-1])
        dev = self.device
        allocated = (lambda: torch.cuda.memory_allocated(dev)) if dev.type == "cuda" else None
        with torch.no_grad():
            total, peak = forward_memory(self._net, lambda: self._forward(state, feats, what), feats, allocated)
        self._row_bytes = total / max(1, k)
        self._row_peak = None if peak is None else min(total, peak) / max(1, k)

    def _rows(self, merge_rows: int, copies: int = 1, backward: bool = False) -> int:
        """Rows per forward (``_memory.rows_per_forward``) once ``_measure_rows`` has run; ``merge_rows`` before."""
        if self._row_bytes is None:
            return merge_rows
        row = self._row_bytes if backward or self._row_peak is None else self._row_peak
        return rows_per_forward(
            row,
            merge_rows,
            self.train_dataloader.batch_size,
            self.device,
            copies=copies,
            safety=BACKWARD_SAFETY if backward else NO_GRAD_SAFETY,
        )

    def _pass_rows(self, state: dict[str, torch.Tensor], merge_rows: int, backward: bool = False) -> int:
        """The merge target of a training pass: measured on a probe of the training set first. 0 (no merging:
        the loader's own batches, split further when needed) when no probe could be read."""
        if self._row_bytes is None:
            probe = self._probe_batch()
            if probe is None:
                return 0
            self._measure_rows(state, probe, "training batch")
        return self._rows(merge_rows, backward=backward)

    def _train_batches(self, min_rows: int = 0, rows: tuple[int, int] | None = None) -> Iterator[tuple[int, tuple]]:
        """Training batches on the compute device with their row offset. ``min_rows`` merges consecutive
        loader batches (fewer, larger launches; scores do not depend on the batching). On a GPU each loader
        batch is copied first and the merge happens there. ``rows=(start, stop)`` (a torchrun rank's range):
        batches from row ``start`` on (the first offset may be earlier, see ``rank_loader``), read only up to
        ``stop`` where the data can be read by index; the caller trims them to the range."""
        start, stop = rows if rows is not None else (0, None)
        offset = start
        loader = self.train_dataloader
        cuda = self.device.type == "cuda"
        vec = self._vectorised()
        rule = label_rule(self.loss_fn)
        batches: Iterator[Any]
        if rule is not None and not self._labels_checked and (vec is not None or tensor_fast_path(loader)):
            self._check_all_train_labels(vec, rule)  # every label at once, before the pass
        if vec is not None:  # torchvision CIFAR: the transform on whole blocks of the uint8 array, exactly
            step = self.copy_rows if cuda else max(loader.batch_size or 1, min_rows)
            batches = vec.batches(step, self.device, start, stop)
            batches = _merge_batches(batches, min_rows) if cuda and min_rows else batches
        elif tensor_fast_path(loader) and cuda:
            # pinned chunks: an asynchronous copy at full PCIe speed (a pageable one is ~10x slower and stalls
            # the GPU); the chunks are merged on the device
            batches = (
                to_device(tuple(t.pin_memory() if t.device.type == "cpu" else t for t in b), self.device)
                for b in iter_tensor_batches(loader, self.copy_rows, start, stop)
            )
            batches = _merge_batches(batches, min_rows) if min_rows else batches
        elif tensor_fast_path(loader):
            batches = iter_tensor_batches(loader, min_rows, start, stop)
        else:
            if self._own_loader:  # workers only here: the paths above read arrays directly
                loader = pass_loader(loader, self.num_workers, self.device, self._auto_workers)
            if rows is not None:
                loader, offset = rank_loader(loader, *rows)
            # labels checked on the host, before the copy: no device sync
            batches = self._labels_per_batch(iter(loader), rule, offset)
            if self.device.type != "cpu":
                batches = (to_device(b, self.device) if isinstance(b, (list, tuple)) else b for b in batches)
            if min_rows:
                batches = _merge_batches(batches, min_rows)
        for batch in batches:
            if isinstance(batch, (torch.Tensor, dict)) or len(batch) < 2:
                raise ValueError(
                    "train_dataset batches must be (features..., labels); the dataset yields "
                    f"{type(batch).__name__} batches"
                    + (
                        " (a dict: return (features, label) tuples from the collate_fn or the dataset's __getitem__)."
                        if isinstance(batch, dict)
                        else " without labels."
                    )
                )
            batch = to_device(tuple(batch), self.device)
            n = batch_len(batch)
            yield offset, batch
            offset += n

    def _output_tail(self, batch: tuple, what: str, cached: bool = True, show_progress: bool = False) -> tuple:
        """The model output's shape after the batch dimension, from a forward of the batch's first two rows
        at the first checkpoint (the class count of a classifier is its first entry). ``cached=False``: run the
        forward anyway (to check that the model takes ``batch`` before any long pass)."""
        if cached and self._out_tail is not None:
            return self._out_tail
        n = batch_len(batch)
        rows = min(2, n)
        feats = tuple(
            x[:rows] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n else x for x in batch[:-1]
        )
        states, _ = self._checkpoint_states(show_progress)
        with self._computing(), torch.no_grad():
            out = self._forward(states[0], to_device(feats, self.device), what)
        self._out_tail = tuple(out.shape[1:]) if out.dim() >= 2 and out.shape[0] == rows else ()
        return self._out_tail

    def _check_all_train_labels(self, vec: VectorisedImages | None, rule: tuple[str, int]) -> None:
        """Every training label of a TensorDataset (or recognised CIFAR arrays) against the class count."""
        if vec is not None:
            first = vec.block(0, min(2, vec.n), torch.device("cpu"))
            labels = torch.from_numpy(vec.targets if vec.index is None else vec.targets[vec.index])
        else:
            tensors = self.train_dataloader.dataset.tensors  # type: ignore[attr-defined]
            first, labels = tuple(t[:2] for t in tensors), tensors[-1]
        if labels.dim() == 0 or labels.shape[0] == 0:
            return
        check_labels(labels, self._output_tail(first, "training batch"), rule, "train_dataset", 0)
        self._labels_checked = True

    def _labels_per_batch(self, batches: Iterator, rule: tuple[str, int] | None, offset: int = 0) -> Iterator:
        """Check each loader batch's labels as it arrives (the error names the global row; the first batch
        starts at row ``offset``)."""
        for b in batches:
            if isinstance(b, (list, tuple)) and len(b) >= 2:
                if isinstance(b[-1], torch.Tensor) and b[-1].dim() == 0:
                    raise ValueError(
                        "train_dataset yields single examples with a 0-dim label, not batches: a DataLoader with "
                        "batch_size=None does not batch. Pass the Dataset itself, or DataLoader(dataset, "
                        "batch_size=..., shuffle=False)."
                    )
                n = batch_len(tuple(b))
                if n and rule is not None:
                    check_labels(b[-1], self._output_tail(tuple(b), "training batch"), rule, "train_dataset", offset)
                offset += n
            yield b

    def _vectorised(self) -> VectorisedImages | None:
        if not self._own_loader:
            return None
        if self._vector_source is False:
            self._vector_source = vectorised_source(self.train_dataset)
        return self._vector_source  # type: ignore[return-value]

    def _n_train(self) -> int | None:
        try:
            return len(self.train_dataloader.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None

    def _test_batches(
        self, inputs: Any, what: str = "inputs", loss: str = "test", show_progress: bool = False
    ) -> list[tuple]:
        """``inputs`` as batches on the compute device, checked before any long pass: the model takes them
        (a forward of two rows; again only when the feature shapes change) and, for a loss that takes class
        indices (``loss``: "test" for ``test_loss_fn``, else ``loss_fn``), every label is a class."""
        return list(self._checked_batches(iter_input_batches(inputs, what), what, loss, show_progress))

    def _checked_batches(
        self, batches: Iterable[tuple], what: str = "inputs", loss: str = "test", show_progress: bool = False
    ) -> Iterator[tuple]:
        """``_test_batches`` one batch at a time (each moved and checked as it comes), for callers that stream
        ``inputs`` instead of holding all of it."""
        self._test_rows = None  # not known until the last batch: messages say later rows were not checked
        rule = label_rule(self.test_loss_fn if loss == "test" else self.loss_fn)
        offset, seen, tail = 0, None, ()
        for b in batches:
            b = to_device(b, self.device)
            shapes = [(tuple(x.shape[1:]), x.dtype) if isinstance(x, torch.Tensor) else type(x) for x in b[:-1]]
            if shapes != seen:
                probe = "test batch" if loss == "test" else "batch"
                tail, seen = self._output_tail(b, probe, cached=False, show_progress=show_progress), shapes
            if rule is not None:
                check_labels(b[-1], tail, rule, what, offset)
            offset += batch_len(b)
            yield b
        self._test_rows = offset

    def _train_row(self, i: int) -> Any:
        """Training example ``i`` as the dataset gives it (to say why its gradients are not finite)."""
        loader = self.train_dataloader
        if tensor_fast_path(loader):
            return tuple(t[i] for t in loader.dataset.tensors)  # type: ignore[attr-defined]
        return loader.dataset[i]

    def _check_weights(self, state: dict[str, torch.Tensor], path: str) -> None:
        """A checkpoint with a NaN/inf weight makes every score NaN: name it when it is loaded (one sync)."""
        floats = [(k, v) for k, v in state.items() if v.is_floating_point() or v.is_complex()]
        if not floats:
            return
        ok = torch.stack([torch.isfinite(v).all() for _, v in floats])
        if bool(ok.all()):
            return
        bad = [(k, int((~torch.isfinite(v)).sum())) for (k, v), f in zip(floats, ok.tolist(), strict=True) if not f]
        names = ", ".join(f"{k} ({c} value{'s' * (c != 1)})" for k, c in bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise ValueError(
            f"checkpoint {path!r} has non-finite (NaN or inf) weights: {names}. Every score would be NaN. The "
            "training run had probably diverged by then: drop this file from `checkpoints`."
        )

    def _raise_nonfinite(
        self, masks: dict[str, torch.Tensor], offset: int, what: str, row_of: Callable[[int], Any], complete: bool
    ) -> None:
        """``masks[quantity][i, c]``: that quantity of row ``offset + i`` is non-finite at checkpoint c.
        Raise a ValueError naming the rows and why: their features or labels are non-finite, or (inputs and
        weights finite) the model or loss overflows on them. Returns when no row is non-finite."""
        bad = functools.reduce(torch.logical_or, masks.values())
        rows = bad.any(1).nonzero().flatten().cpu()
        if rows.numel() == 0:
            return
        src = "train_dataset" if what.startswith("train") else "inputs"
        n_rows = bad.shape[0]
        first, glob = int(rows[0]), [offset + int(r) for r in rows]
        ckpt = int(bad[first].nonzero()[0])
        quantity = next(q for q, m in masks.items() if bool(m[first, ckpt]))
        total = self._n_train() if src == "train_dataset" else self._test_rows
        if total is not None and offset + n_rows >= total:
            complete = True  # the rows before ``offset`` were checked already
        scope = "" if complete else f"; rows after {offset + n_rows - 1} were not checked yet"

        def show(ix: list[int]) -> str:
            return ", ".join(map(str, ix[:5])) + (", ..." if len(ix) > 5 else "")

        in_rows: list[int] = []
        feat = lab = False
        if src == "train_dataset" and tensor_fast_path(self.train_dataloader):
            found, feat, lab = nonfinite_rows(self.train_dataloader.dataset.tensors)  # type: ignore[attr-defined]
            in_rows, scope_in = found.tolist(), ""
        else:
            scope_in = scope
            for i in glob[:20]:
                try:
                    bad_feat, bad_lab = nonfinite_parts(row_of(i))
                except Exception:  # a row that cannot be read back: say the cause is unknown
                    continue
                if bad_feat or bad_lab:
                    in_rows.append(i)
                    feat, lab = feat or bad_feat, lab or bad_lab
        if in_rows:
            parts = " and ".join(p for p, b in (("features", feat), ("labels", lab)) if b)
            raise ValueError(
                f"{src} has non-finite (NaN or inf) {parts} in row(s) {show(in_rows)} ({len(in_rows)} row(s)"
                f"{scope_in}): every influence score involving them would be NaN. Fix or drop these rows (e.g. "
                "torch.utils.data.Subset(dataset, kept_indices))."
            )
        raise ValueError(
            f"{src} row(s) {show(glob)} ({len(glob)} row(s){scope}) give non-finite (NaN or inf) {quantity} at "
            f"checkpoint {self.checkpoints[ckpt]!r}, although their features and labels and the checkpoint's "
            "weights are finite: the model or the loss overflows on them (very large feature values? float16?). "
            "Rescale these rows' features, or drop them (torch.utils.data.Subset)."
        )

    @staticmethod
    def _check_finite(t: torch.Tensor, path: str, what: str) -> None:
        if not bool(torch.isfinite(t.sum())):  # one reduction: NaN/inf anywhere makes the sum non-finite
            raise ValueError(
                f"non-finite (NaN or inf) {what} at checkpoint {path!r}: the scores would be NaN. Check that "
                "checkpoint's weights (a diverged training step?) or drop it from `checkpoints`."
            )

    def _check_all_finite(self, sums: torch.Tensor, whats: list[str], locate: Callable[[], None] | None = None) -> None:
        """``sums[j, c]``: a sum over quantity ``whats[j]`` at checkpoint c. One device sync for all of them
        (a per-tensor check would stall the GPU once per checkpoint and block). On failure ``locate`` raises
        naming the rows (see ``_raise_nonfinite``); if it returns, every value is finite and only a sum
        overflowed."""
        ok = torch.isfinite(sums)
        if bool(ok.all()):
            return
        if locate is not None:
            locate()
            return
        j, c = (int(v) for v in (~ok).nonzero()[0])
        self._check_finite(sums[j, c], self.checkpoints[c], whats[j])

    # ------------------------------------------------------------------ disk cache (influence/_cache.py)
    def _compute_fingerprint(self, extra: str) -> str:
        if self._fingerprint is None:
            _, lrs = self._checkpoint_states()  # the learning rates are part of the key
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
            )
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
    @staticmethod
    def _chunk_rows(n_test: int, n_ckpt: int, budget: int = 1 << 25) -> int:
        return max(1024, budget // max(1, n_test * max(1, n_ckpt)))

    @staticmethod
    def _finish_topk(best: tuple[torch.Tensor, torch.Tensor] | None, n_test: int) -> KMostInfluentialResults:
        return finish_topk(best, n_test)

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

    def _train_rows(self, indices: torch.Tensor) -> tuple:
        """Training rows ``indices`` as one batch ``(*features, labels)`` on the compute device, read from the
        dataset item by item (a few rows: no pass over the training data)."""
        loader = self.train_dataloader
        if tensor_fast_path(loader):
            tensors = loader.dataset.tensors  # type: ignore[attr-defined]
            return to_device(tuple(t[indices] for t in tensors), self.device)
        ds = loader.dataset
        if isinstance(ds, torch.utils.data.IterableDataset):
            raise TypeError(
                "train_indices needs training rows read by index, but train_dataset is an IterableDataset: pass a "
                "map-style Dataset (with __getitem__) to the engine."
            )
        batch = loader.collate_fn([ds[int(i)] for i in indices.tolist()])
        if isinstance(batch, (torch.Tensor, dict)) or len(batch) < 2:
            raise ValueError("train_dataset items must be (features..., label) to score single training rows.")
        return to_device(tuple(batch), self.device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, checkpoints={len(self.checkpoints)}, "
            f"n_train={self._n_train()}, device={self.device})"
        )


def sqrt_lr(lr: float, path: str) -> float:
    if lr < 0:
        raise ValueError(f"learning rate {lr} for checkpoint {path!r} is negative; TracIn needs lr >= 0.")
    return math.sqrt(lr)
