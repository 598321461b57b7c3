"""Reading the data: training batches (merged, on the compute device, labels checked), test batches checked
before any long pass, and single training rows read by index."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ._data import (
    batch_len,
    check_labels,
    iter_input_batches,
    iter_tensor_batches,
    label_rule,
    pass_loader,
    tensor_fast_path,
    to_device,
)
from ._distributed import rank_loader
from ._types import EngineFields
from ._vision import VectorisedImages, vectorised_source

PROBED_SHAPES = 16  # feature shapes whose probe forward is remembered (the oldest forgotten first)


def feature_key(batch: tuple) -> tuple | None:
    """What a probe forward depends on: each feature's shape after the batch dimension and dtype. None when a
    feature is not a tensor (its contents may matter: such batches are probed every time)."""
    if not all(isinstance(x, torch.Tensor) for x in batch[:-1]):
        return None
    return tuple((tuple(x.shape[1:]), x.dtype) for x in batch[:-1])


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


class _Reader(EngineFields):
    """``TracInCPBase``'s reading of the training and test data."""

    def _train_batches(self, min_rows: int = 0, rows: tuple[int, int] | None = None) -> Iterator[tuple[int, tuple]]:
        """Training batches on the compute device with their row offset. ``min_rows`` merges consecutive
        loader batches (fewer, larger launches; scores do not depend on the batching). On a GPU each loader
        batch is copied first and the merge happens there. ``rows=(start, stop)`` (a torchrun rank's range):
        batches from row ``start`` on (the first offset may be earlier, see ``rank_loader``), read only up to
        ``stop`` where the data can be read by index; the caller trims them to the range."""
        self._passing += 1
        try:
            yield from self._read_train_batches(min_rows, rows)
        finally:
            self._passing -= 1
            self._rows_memo.clear()  # the pass may have changed what memory is free

    def _read_train_batches(self, min_rows: int, rows: tuple[int, int] | None) -> Iterator[tuple[int, tuple]]:
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
        offset = 0
        for b in batches:
            b = to_device(b, self.device)
            shapes = feature_key(b)
            tail = None if shapes is None else self._probed.get(shapes)
            if tail is None:  # shapes this engine has not run yet: the model must take them
                probe = "test batch" if loss == "test" else "batch"
                tail = self._output_tail(b, probe, cached=False, show_progress=show_progress)
                self._remember_probe(shapes, tail)
            if rule is not None:
                check_labels(b[-1], tail, rule, what, offset)
            offset += batch_len(b)
            yield b
        self._test_rows = offset

    def _remember_probe(self, shapes: tuple | None, tail: tuple) -> None:
        """Keep what a probe forward of ``shapes`` gave (the oldest of ``PROBED_SHAPES`` forgotten first), and work
        out rows per forward again for them."""
        self._rows_memo.clear()
        if shapes is None:
            return
        if len(self._probed) >= PROBED_SHAPES:
            self._probed.pop(next(iter(self._probed)))
        self._probed[shapes] = tail

    def _train_row(self, i: int) -> Any:
        """Training example ``i`` as the dataset gives it (to say why its gradients are not finite)."""
        loader = self.train_dataloader
        if tensor_fast_path(loader):
            return tuple(t[i] for t in loader.dataset.tensors)  # type: ignore[attr-defined]
        return loader.dataset[i]

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
