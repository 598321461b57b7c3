"""Reading the data: training batches (merged, on the compute device, labels checked), test batches checked
before any long pass, and single training rows read by index."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from ._batch import Batch, as_batch, iter_input_batches
from ._data import check_labels, iter_tensor_batches, label_rule, pass_loader, tensor_fast_path
from ._distributed import rank_loader
from ._types import EngineFields
from ._vision import VectorisedImages, vectorised_source

PROBED_SHAPES = 16  # feature shapes whose probe forward is remembered (the oldest forgotten first)


def _merge_batches(batches: Iterable[Batch], min_rows: int) -> Iterator[Batch]:
    """Consecutive batches joined up to ``min_rows`` rows, only where they are row-aligned and of the same shapes
    (``Batch.joins``); any other batch is passed on as it is."""
    pending: list[Batch] = []
    rows = 0
    for b in batches:
        if pending and not pending[0].joins(b):
            yield Batch.cat(pending)
            pending, rows = [], 0
        if not b.joinable:
            yield b
            continue
        pending.append(b)
        rows += b.n
        if rows >= min_rows:
            yield Batch.cat(pending)
            pending, rows = [], 0
    if pending:
        yield Batch.cat(pending)


def _tuples(batches: Iterable[tuple]) -> Iterator[Batch]:
    return (Batch(b[:-1], b[-1]) for b in batches)


def train_batch(raw: Any, label_key: str | None) -> Batch:
    """A training loader's batch as a ``Batch``, or the error that says what the dataset yields instead."""
    if isinstance(raw, torch.Tensor) or (not isinstance(raw, (Mapping, list, tuple))) or len(raw) < 2:
        raise ValueError(
            "train_dataset batches must be (features..., labels) or dicts holding the labels; the dataset yields "
            f"{type(raw).__name__} batches without labels."
        )
    return as_batch(raw, "train_dataset batch", label_key)


class _Reader(EngineFields):
    """``TracInCPBase``'s reading of the training and test data."""

    def _train_batches(self, min_rows: int = 0, rows: tuple[int, int] | None = None) -> Iterator[tuple[int, Batch]]:
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

    def _read_train_batches(self, min_rows: int, rows: tuple[int, int] | None) -> Iterator[tuple[int, Batch]]:
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
            batches = _tuples(vec.batches(step, self.device, start, stop))
            batches = _merge_batches(batches, min_rows) if cuda and min_rows else batches
        elif tensor_fast_path(loader) and cuda:
            # pinned chunks: an asynchronous copy at full PCIe speed (a pageable one is ~10x slower and stalls
            # the GPU); the chunks are merged on the device
            batches = (
                b.to(self.device, pin=True) for b in _tuples(iter_tensor_batches(loader, self.copy_rows, start, stop))
            )
            batches = _merge_batches(batches, min_rows) if min_rows else batches
        elif tensor_fast_path(loader):
            batches = _tuples(iter_tensor_batches(loader, min_rows, start, stop))
        else:
            if self._own_loader:  # workers only here: the paths above read arrays directly
                loader = pass_loader(loader, self.num_workers, self.device, self._auto_workers)
            if rows is not None:
                loader, offset = rank_loader(loader, *rows)
            # labels checked on the host, before the copy: no device sync
            batches = self._labels_per_batch(iter(loader), rule, offset)
            if self.device.type != "cpu":
                batches = (b.to(self.device) for b in batches)
            if min_rows:
                batches = _merge_batches(batches, min_rows)
        for batch in batches:
            if batch.device != self.device:
                batch = batch.to(self.device)
            yield offset, batch
            offset += batch.n

    def _output_tail(self, batch: Batch, what: str, cached: bool = True, show_progress: bool = False) -> tuple:
        """The model output's shape after the batch dimension, from a forward of the batch's first two rows
        (all of them when it is not row-aligned) at the first checkpoint (the class count of a classifier is its
        first entry). ``cached=False``: run the forward anyway (to check that the model takes ``batch`` before
        any long pass)."""
        if cached and self._out_tail is not None:
            return self._out_tail
        probe = batch.rows(0, min(2, batch.n)) if batch.aligned else batch
        states, _ = self._checkpoint_states(show_progress)
        with self._computing(), torch.no_grad():
            out = self._forward(states[0], probe.to(self.device), what)
        self._out_tail = tuple(out.shape[1:]) if out.dim() >= 2 and out.shape[0] == probe.n else ()
        return self._out_tail

    def _check_all_train_labels(self, vec: VectorisedImages | None, rule: tuple[str, int | None]) -> None:
        """Every training label of a TensorDataset (or recognised CIFAR arrays) against the class count."""
        if vec is not None:
            block = vec.block(0, min(2, vec.n), torch.device("cpu"))
            first = Batch(block[:-1], block[-1])
            labels = torch.from_numpy(vec.targets if vec.index is None else vec.targets[vec.index])
        else:
            tensors = self.train_dataloader.dataset.tensors  # type: ignore[attr-defined]
            first, labels = Batch([t[:2] for t in tensors[:-1]], tensors[-1][:2]), tensors[-1]
        if labels.dim() == 0 or labels.shape[0] == 0:
            return
        check_labels(labels, self._output_tail(first, "training batch"), rule, "train_dataset", 0)
        self._labels_checked = True

    def _labels_per_batch(
        self, batches: Iterator, rule: tuple[str, int | None] | None, offset: int = 0
    ) -> Iterator[Batch]:
        """Each loader batch as a ``Batch``, its labels checked as it arrives (the error names the global row; the
        first batch starts at row ``offset``)."""
        for raw in batches:
            b = train_batch(raw, self.label_key)
            if isinstance(b.labels, torch.Tensor) and b.labels.dim() == 0:
                raise ValueError(
                    "train_dataset yields single examples with a 0-dim label, not batches: a DataLoader with "
                    "batch_size=None does not batch. Pass the Dataset itself, or DataLoader(dataset, "
                    "batch_size=..., shuffle=False)."
                )
            if b.n and rule is not None:
                check_labels(b.labels, self._output_tail(b, "training batch"), rule, "train_dataset", offset)
            offset += b.n
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
    ) -> list[Any]:  # of Batch (a list[Any] also for callers that annotate the batches as tuples)
        """``inputs`` as batches on the compute device, checked before any long pass: the model takes them
        (a forward of two rows; again only when the feature shapes change) and, for a loss that takes class
        indices (``loss``: "test" for ``test_loss_fn``, else ``loss_fn``), every label is a class."""
        batches = iter_input_batches(inputs, what, self.label_key)
        return list(self._checked_batches(batches, what, loss, show_progress))

    def _checked_batches(
        self, batches: Iterable[Batch], what: str = "inputs", loss: str = "test", show_progress: bool = False
    ) -> Iterator[Batch]:
        """``_test_batches`` one batch at a time (each moved and checked as it comes), for callers that stream
        ``inputs`` instead of holding all of it."""
        self._test_rows = None  # not known until the last batch: messages say later rows were not checked
        rule = label_rule(self.test_loss_fn if loss == "test" else self.loss_fn)
        offset = 0
        for b in batches:
            shapes = b.key
            tail = None if shapes is None else self._probed.get(shapes)
            if tail is None or b.device != self.device:  # (shapes checked before: their form was too)
                self._check_form(b, what)
            if b.device != self.device:
                b = b.to(self.device)
            if tail is None:  # shapes this engine has not run yet: the model must take them
                probe = "test batch" if loss == "test" else "batch"
                tail = self._output_tail(b, probe, cached=False, show_progress=show_progress)
                self._remember_probe(shapes, tail)
            if rule is not None:
                check_labels(b.labels, tail, rule, what, offset)
            offset += b.n
            yield b
        self._test_rows = offset

    def _check_form(self, b: Batch, what: str) -> None:
        """A batch on the ``meta`` device (no data) or a single example without its batch dimension (features
        shaped like one training example) is a ``ValueError`` saying the fix, before any forward."""
        tensors = [t for t in (*b.args, *b.kwargs.values(), b.labels) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "meta" for t in tensors):
            raise ValueError(
                f"{what} is on the 'meta' device, which holds shapes but no values to compute influence from. Fix: "
                f"pass {what} with its data, e.g. on the CPU or the engine's device ({self.device})."
            )
        example = getattr(self, "_example_shapes", None)
        feats = list(b.args) if not b.keyword else list(b.kwargs.values())
        if not example or len(example) != len(feats) or not feats:
            return
        single = all(
            isinstance(f, torch.Tensor) and isinstance(s, tuple) and tuple(f.shape) == s
            for f, s in zip(feats, example, strict=True)
        )
        if single and any(isinstance(f, torch.Tensor) and len(s) for f, s in zip(feats, example, strict=True)):
            shapes = ", ".join(str(tuple(f.shape)) for f in feats)
            want = ", ".join("(" + ", ".join(map(str, ("n", *s))) + ")" for s in example)
            raise ValueError(
                f"{what} is a single example without its batch dimension: features of shape {shapes}, where the "
                f"model takes batches of shape {want}. Fix: add the batch dimension, e.g. (x.unsqueeze(0), "
                "y.unsqueeze(0)) for one example x with its label y."
            )

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

    def _train_rows(self, indices: torch.Tensor) -> Batch:
        """Training rows ``indices`` as one batch on the compute device, read from the dataset item by item (a few
        rows: no pass over the training data)."""
        loader = self.train_dataloader
        if tensor_fast_path(loader):
            tensors = loader.dataset.tensors  # type: ignore[attr-defined]
            return Batch([t[indices] for t in tensors[:-1]], tensors[-1][indices]).to(self.device)
        ds = loader.dataset
        if isinstance(ds, torch.utils.data.IterableDataset):
            raise TypeError(
                "train_indices needs training rows read by index, but train_dataset is an IterableDataset: pass a "
                "map-style Dataset (with __getitem__) to the engine."
            )
        raw = loader.collate_fn([ds[int(i)] for i in indices.tolist()])
        if isinstance(raw, torch.Tensor) or not isinstance(raw, (Mapping, list, tuple)) or len(raw) < 2:
            raise ValueError("train_dataset items must be (features..., label) to score single training rows.")
        return as_batch(raw, "train_dataset", self.label_key).to(self.device)
