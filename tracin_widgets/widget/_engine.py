"""``EngineAdapter``: the one place that knows how an influence engine gives the explorer what it shows, and the
only widget module that imports ``tracin_widgets.influence`` (its public names only).

Builds the default engine (``TracInCPFast``) or checks the user's, calls it under the engine lock with the
explorer's progress callback installed (so Cancel works), and turns its answers into numpy: top-k proponents and
opponents of a query (with a cache of recent score rows), the self-influence of the training set, the training
predictions read off the factors, the engine's notes, and the model's predictions through the engine's reader.
What an engine is asked is decided by what it can do, never by its class name.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..influence import Cancelled, TracInCPFast, find_final_linear_layer
from ..influence import predict as engine_predict
from . import _data, _stats
from ._protocols import CheckpointTerm, InfluenceSource
from ._threads import query_threads

__all__ = ["Cancelled", "EngineAdapter", "n_outputs", "predict"]

SCORE_CACHE = 32  # influence rows of recent queries (n_train float64 each) ...
SCORE_CACHE_BYTES = 32 * 2**20  # ... within this many bytes (at least 2 rows): a constant, whatever n_train
TopK = tuple[np.ndarray, np.ndarray]  # (indices (k,) int64, scores (k,) float64)
ProgressFn = Callable[[str, int, int], None]


class FromFactors(NamedTuple):
    """Training predictions read off the factors: per row its label, predicted class and that class's probability;
    and the number of classes the model outputs."""

    labels: np.ndarray  # (n_train,) int64
    preds: np.ndarray  # (n_train,) int64
    probs: np.ndarray  # (n_train,) float64
    width: int


def predict(
    model: nn.Module,
    dataset: Any,
    indices: Sequence[int] | None,
    *,
    batch_size: int,
    device: Any = None,
    lock: threading.Lock | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_width: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predicted classes and predicted-class probabilities (softmax) of ``dataset[indices]``.

    The engine's batched path (:func:`tracin_widgets.influence.predict`): rows read in blocks by the engine's
    readers where it knows the dataset, the model called as ``model(*batch[:-1])`` in eval mode without gradients
    with the engine's exact fast CPU kernels; its train/eval flag is restored after each block, module by module.
    The model's own lock (shared with every engine) and ``lock`` are held per block, so no engine's checkpoint
    weights are ever in the model while it predicts. ``on_width`` gets the number of classes the model outputs
    (the logits' width) of each block.
    """

    def check(out: Any) -> None:
        _data.check_logits(out)
        if on_width:
            on_width(int(out.shape[1]))

    res = engine_predict(
        model,
        dataset,
        indices,
        batch_size=batch_size,
        device=_data.model_device(model, device),
        lock=lock,
        progress=progress,
        on_logits=check,
    )
    return res.labels, res.preds, res.probs


def n_outputs(model: nn.Module, dataset: Any, *, device: Any = None) -> int:
    """The number of classes ``model`` outputs (the width of its logits), from one forward pass on ``dataset[0]``,
    holding the model's own lock and restoring every module's train/eval flag, as :func:`predict` does."""
    widths: list[int] = []
    predict(model, dataset, [0], batch_size=1, device=device, on_width=widths.append)
    return widths[0]


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a numpy array."""
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=dtype)


def answers_top_k_from_an_index(source: Any) -> bool:
    """True for engines that find the k most influential examples through a nearest-neighbour index
    (``TracInCPFastRandProj``, ours or Captum's): their ``influence(k=None)`` scores are projections, so they are
    asked for their k proponents and k opponents instead of a full score row."""
    return getattr(source, "nearest_neighbors", None) is not None


class EngineAdapter:
    """How the explorer uses any influence engine (see ``InfluenceSource``).

    ``progress`` gets every progress update of the engine (and raises ``Cancelled`` to abort it); ``cancel`` is the
    explorer's cancel event, checked before each engine call. ``lock`` is held during every engine call and every
    prediction batch: one user of the model at a time.
    """

    def __init__(self, source: InfluenceSource, n_train: int, progress: ProgressFn, cancel: threading.Event):
        self.source = source
        self.n_train = n_train
        self.lock = threading.Lock()
        self._progress = progress
        self._cancel = cancel
        self._user_progress: ProgressFn | None = None
        self._score_cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()
        self.score_cache_rows = max(2, min(SCORE_CACHE, SCORE_CACHE_BYTES // max(1, 8 * n_train)))
        self._row_net: nn.Module | None = None  # the copy of the model the details load checkpoints into
        self._row_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        engine: Any,
        *,
        model: Any,
        checkpoints: Any,
        train_dataset: Any,
        checkpoints_load_func: Callable | None,
        final_fc_layer: Any,
        loss_fn: Any,
        cache_dir: Any,
        batch_size: int,
        device: Any,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> EngineAdapter:
        """The user's ``engine`` (checked), or a ``TracInCPFast`` built from the other arguments."""
        n_train = len(train_dataset)
        if engine is not None:
            given = [
                name
                for name, value in (
                    ("checkpoints_load_func", checkpoints_load_func),
                    ("final_fc_layer", final_fc_layer),
                    ("loss_fn", loss_fn),
                    ("cache_dir", cache_dir),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"engine= was given together with {', '.join(given)}: these configure the default engine only. "
                    "Pass them to the engine you construct instead."
                )
            if not isinstance(engine, InfluenceSource):
                raise TypeError(
                    "engine must have influence(inputs, k, proponents) and self_influence() (TracInCP, TracInCPFast "
                    f"or TracInCPFastRandProj), got {type(engine).__name__}."
                )
            _data.check_loss(getattr(engine, "loss_fn", None), "the engine's loss_fn")
            return cls(engine, n_train, progress, cancel)
        _data.check_loss(loss_fn, "loss_fn")
        if checkpoints is None:
            raise TypeError("InfluenceExplorer() needs checkpoints (a list of paths or a directory), or engine=.")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if final_fc_layer is None:
            batch = _data.collate_one(_data.check_item(train_dataset[0], "train_dataset[i]"))
            dev = _data.model_device(model, device)
            example = tuple(b.to(dev) if isinstance(b, torch.Tensor) else b for b in batch[:-1])
            final_fc_layer = find_final_linear_layer(model, example)[0]
        default = TracInCPFast(
            model,
            final_fc_layer,
            train_dataset,
            checkpoints,
            checkpoints_load_func=checkpoints_load_func,
            loss_fn=loss_fn if loss_fn is not None else nn.CrossEntropyLoss(reduction="sum"),
            batch_size=batch_size,
            device=device,
            cache_dir=cache_dir,
        )
        adapter = cls(default, n_train, progress, cancel)
        default.progress_callback = adapter.progress_callback  # its progress is the explorer's, also when called
        return adapter

    @property
    def name(self) -> str:
        return type(self.source).__name__

    @property
    def cache_dir(self) -> Path | None:
        """The engine's cache folder (``cache_dir``), or None."""
        folder = getattr(self.source, "cache_dir", None)
        return None if folder is None else Path(folder)

    def progress_callback(self, phase: str, done: int, total: int) -> None:
        """What the engine calls: the explorer's progress (which may raise ``Cancelled``), then the user's own."""
        self._progress(phase, done, total)
        if self._user_progress is not None:
            self._user_progress(phase, done, total)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Call the engine holding the engine lock, with our progress callback (and any of the user's) installed."""
        src: Any = self.source  # ``progress_callback`` is an optional attribute (see ``InfluenceSource``)
        with self.lock:
            if self._cancel.is_set():
                raise Cancelled("cancelled")
            old = getattr(src, "progress_callback", None)
            swap = hasattr(src, "progress_callback") and old != self.progress_callback
            if swap:
                self._user_progress = old
                src.progress_callback = self.progress_callback
            try:
                return fn()
            finally:
                if swap:
                    src.progress_callback = old
                    self._user_progress = None

    def notes(self) -> list[str]:
        """The engine's notes so far (``TracInCPBase.notes``: its ``TracInWarning`` messages); [] for an engine
        without them."""
        return [str(n) for n in getattr(self.source, "notes", None) or []]

    def reads_off_factors(self) -> bool:
        """True for engines whose training factors, once fitted, give the training predictions
        (``train_probabilities()``) and the self-influence at the cost of a query at most (``TracInCPFast`` and
        ``TracInCPFastRandProj``)."""
        return callable(getattr(self.source, "train_probabilities", None))

    def train_predictions(
        self, train_dataset: Any, model: Any, labels: np.ndarray | None, label_of: Callable[[int], int]
    ) -> tuple[FromFactors | None, str]:
        """The training predictions read off the engine's factors, without a forward pass, and why (or why not):
        ``(None, reason)`` unless that is exact (an engine on the explorer's ``train_dataset`` and ``model``, whose
        weights equal the last checkpoint's, trained with a plain cross-entropy: see
        ``TracInCPFast.train_probabilities``). ``label_of(i)`` reads one training label, only where needed."""
        src: Any = self.source
        if not self.reads_off_factors() or getattr(src, "train_dataset", None) is not train_dataset:
            return (
                None,
                "the engine does not read predictions off its factors (train_probabilities) on this training set",
            )

        def read(rows: Any) -> np.ndarray:
            return np.array([label_of(int(i)) for i in rows], np.int64)

        probs, labels_read, why = self.call(lambda: src.train_probabilities(model, labels, read))
        if probs is None or labels_read is None:
            return None, why
        conf, cls = probs.max(dim=1)
        return (  # no copies of the (n_train,) arrays that are int64 already
            FromFactors(
                labels_read.numpy().astype(np.int64, copy=False),
                cls.numpy().astype(np.int64, copy=False),
                conf.double().numpy(),
                int(probs.shape[1]),
            ),
            why,
        )

    def fit(self) -> None:
        """Precompute the training factors, if the engine can (``fit()``); others compute them lazily."""
        fit = getattr(self.source, "fit", None)
        if callable(fit):
            self.call(fit)

    def self_influence(self) -> np.ndarray:
        """Self-influence of every training example, ``(n_train,)`` float64."""
        scores = to_numpy(self.call(lambda: self.source.self_influence()), np.float64).reshape(-1)
        self._check_length(scores, "self_influence()")
        return scores

    def top_k(self, batch: tuple, k: int, key: Hashable | None = None) -> tuple[TopK, TopK]:
        """(indices, scores) of the k proponents (descending) and k opponents (ascending) of one query.

        One ``influence(batch, k=None)`` call (one pass over the training factors) gives both; engines that answer
        from a neighbour index are asked for their k proponents and opponents instead. Score rows are cached by
        ``key`` (the query), so going back or changing k costs no engine call.
        """
        if answers_top_k_from_an_index(self.source):
            return self._asked_top_k(batch, k, True), self._asked_top_k(batch, k, False)
        scores = self.scores(batch, key)
        pro = _stats.top_k(scores, k, largest=True)
        opp = _stats.top_k(scores, k, largest=False)
        return (pro, scores[pro]), (opp, scores[opp])

    def _asked_top_k(self, batch: tuple, k: int, proponents: bool) -> TopK:
        with query_threads():
            res = self.call(lambda: self.source.influence(batch, k=k, proponents=proponents))
        return to_numpy(res[0]).reshape(-1), to_numpy(res[1], np.float64).reshape(-1)

    def scores(self, batch: tuple, key: Hashable | None = None) -> np.ndarray:
        """The ``(n_train,)`` float64 influence of every training example on the query ``batch`` (cached by key)."""
        with self._cache_lock:
            scores = self._score_cache.get(key) if key is not None else None
            if scores is not None:
                self._score_cache.move_to_end(key)
                return scores
        with query_threads():
            scores = to_numpy(self.call(lambda: self.source.influence(batch, k=None)), np.float64).reshape(-1)
        self._check_length(scores, "influence()")
        if key is not None:
            with self._cache_lock:
                self._score_cache[key] = scores
                while len(self._score_cache) > self.score_cache_rows:
                    self._score_cache.popitem(last=False)
        return scores

    def checkpoint_terms(self, batch: tuple, train_index: int) -> list[CheckpointTerm]:
        """Each checkpoint's term of the influence of training example ``train_index`` on the query ``batch``, from
        the engine's ``influence_by_checkpoint`` (the file's name, its learning rate, the term).

        Raises NotImplementedError for an engine without ``influence_by_checkpoint`` (Captum's classes, others).
        """
        src = self.source
        split = getattr(src, "influence_by_checkpoint", None)
        if not callable(split):
            raise NotImplementedError(
                f"{self.name} cannot split its scores by checkpoint (it has no influence_by_checkpoint): use "
                "tracin_widgets.influence's TracInCP, TracInCPFast or TracInCPFastRandProj for the breakdown."
            )
        terms = to_numpy(self.call(lambda: split(batch, [int(train_index)])), np.float64).reshape(-1)
        rates = getattr(src, "learning_rates", None)
        lrs = list(self.call(rates)) if callable(rates) else [None] * len(terms)
        paths = [str(p) for p in getattr(src, "checkpoints", [])]
        if len(paths) != len(terms):
            paths = [f"checkpoint {c + 1}" for c in range(len(terms))]
        return [
            CheckpointTerm(checkpoint=Path(p).name, lr=None if lr is None else float(lr), contribution=float(v))
            for p, lr, v in zip(paths, lrs, terms, strict=True)
        ]

    def _ensemble(self, model: Any) -> tuple[list[str], Callable[[Any, str], Any] | None]:
        """The engine's checkpoint paths and loader; ``([], None)`` for an engine without them (the model itself is
        then the one member)."""
        src: Any = self.source
        paths = [str(p) for p in getattr(src, "checkpoints", None) or []]
        load = getattr(src, "checkpoints_load_func", None)
        if not paths or not callable(load) or not isinstance(model, nn.Module):
            return [], None
        return paths, load

    def _copy(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` to load checkpoints into (the user's model never holds a checkpoint's weights)."""
        with self.lock:  # no engine call has a checkpoint's weights in the model while it is copied
            return copy.deepcopy(model)

    def _softmax(
        self,
        net: nn.Module,
        dataset: Any,
        *,
        batch_size: int,
        device: Any,
        locked: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """``net``'s softmax ``(n, C)`` float32 over ``dataset`` through :func:`predict`'s batched path (holding the
        engine lock per block when ``locked``: the user's model, one user at a time)."""
        blocks: list[np.ndarray] = []

        def keep(out: Any) -> None:
            blocks.append(torch.softmax(_data.check_logits(out).detach().float(), dim=1).cpu().numpy())

        engine_predict(
            net,
            dataset,
            None,
            batch_size=batch_size,
            device=_data.model_device(net, device),
            lock=self.lock if locked else None,
            progress=progress,
            on_logits=keep,
        )
        return np.concatenate(blocks)

    def checkpoint_probabilities(
        self,
        model: Any,
        dataset: Any,
        *,
        batch_size: int,
        device: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """``(checkpoint name, softmax (n, C) float32)`` for each of the engine's checkpoints, in order, over
        ``dataset`` (what ``_suggest.from_checkpoints`` reads, one checkpoint at a time).

        Each checkpoint is loaded by the engine's ``checkpoints_load_func`` into a copy of ``model`` and run through
        :func:`predict`'s batched path. An engine without ``checkpoints`` and ``checkpoints_load_func`` gives the
        model's own probabilities as its one member (named "the model"). ``progress(done, total)`` counts rows over
        all checkpoints (and may raise ``Cancelled``).
        """
        paths, load = self._ensemble(model)
        n = len(dataset)
        total = n * max(1, len(paths))

        def counted(c: int) -> Callable[[int, int], None]:
            return lambda done, _: None if progress is None else progress(c * n + done, total)

        if load is None:
            yield (
                "the model",
                self._softmax(model, dataset, batch_size=batch_size, device=device, locked=True, progress=counted(0)),
            )
            return
        net = self._copy(model)
        for c, path in enumerate(paths):
            load(net, path)
            probs = self._softmax(net, dataset, batch_size=batch_size, device=device, locked=False, progress=counted(c))
            yield Path(path).name, probs

    def row_probabilities(self, model: Any, item: tuple, device: Any = None) -> np.ndarray:
        """The softmax ``(K, C)`` of one training example (``item``: as the dataset gives it) at each checkpoint,
        as :meth:`checkpoint_probabilities` computes it (its row, one forward per checkpoint, into a copy of the
        model kept for these requests)."""
        paths, load = self._ensemble(model)
        if load is None:
            return self._softmax(model, [item], batch_size=1, device=device, locked=True)
        rows = []
        with self._row_lock:  # one request at a time loads checkpoints into the copy
            if self._row_net is None:
                self._row_net = self._copy(model)
            for path in paths:
                load(self._row_net, path)
                rows.append(self._softmax(self._row_net, [item], batch_size=1, device=device, locked=False)[0])
        return np.stack(rows)

    def _check_length(self, scores: np.ndarray, what: str) -> None:
        if len(scores) != self.n_train:
            raise ValueError(
                f"the engine's {what} returned {len(scores)} scores but train_dataset has {self.n_train} "
                "examples: the engine must be built on the same training set."
            )
