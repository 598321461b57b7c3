"""The explorer's examples: the datasets, what was computed about them (labels, predictions, self-influence, ranks)
and one example's row or thumbnail (cached). Shared by the galleries, the table and the details view."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import _codec, _data, _engine, _stats, _suggest
from ._protocols import ImageData, Row
from ._threads import query_threads
from ._traits import names

THUMB_CACHE = 4096  # encoded thumbnails kept (train and test)


class Examples:
    """The training and test sets and the arrays the background computation fills in.

    Arrays are replaced whole, under ``lock`` (the explorer's), never modified in place, so a reader that took them
    under the lock sees a consistent set.
    """

    def __init__(
        self,
        model: Any,
        train_dataset: Any,
        test_dataset: Any,
        test_indices: Sequence[int] | None,
        *,
        to_image: Callable[[Any], Any] | None,
        batch_size: int,
        device: Any,
        lock: threading.RLock,
    ):
        self.model = model
        self.train = train_dataset
        self.test = test_dataset
        self.n_train = len(train_dataset)
        if self.n_train == 0:
            raise ValueError("train_dataset is empty.")
        _data.check_item(train_dataset[0], "train_dataset[i]")
        self.to_image = to_image
        self.batch_size = batch_size
        self.device = device
        self.lock = lock
        if test_dataset is None:
            if test_indices is not None:
                raise ValueError("test_indices needs a test_dataset.")
            self.test_ids = np.zeros(0, dtype=np.int64)
        else:
            n_test = len(test_dataset)
            ids = np.arange(n_test) if test_indices is None else np.asarray(list(test_indices), dtype=np.int64)
            if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= n_test)):
                raise ValueError(f"test_indices must be indices into test_dataset, i.e. in [0, {n_test}).")
            self.test_ids = ids
            if ids.size:
                _data.check_item(test_dataset[int(ids[0])], "test_dataset[i]")
        self.test_pos = {int(v): i for i, v in enumerate(self.test_ids)}
        self.n_outputs: int | None = None  # classes the model outputs (width of its logits), once known
        self.truth: np.ndarray | None = None  # the user's is_mislabelled mask
        self.self_infl: np.ndarray | None = None
        self.rank: np.ndarray | None = None
        self.train_labels: np.ndarray | None = _data.fast_labels(train_dataset)
        self.train_preds: np.ndarray | None = None
        self.train_probs: np.ndarray | None = None
        self.test_labels: np.ndarray | None = None
        self.test_preds: np.ndarray | None = None
        self.test_probs: np.ndarray | None = None
        self.suggestions: _suggest.Suggestions | None = None  # the checkpoints' average predictions
        self._thumbs: OrderedDict = OrderedDict()
        self._thumb_lock = threading.Lock()

    def check_width(self) -> None:
        """Learn the model's number of outputs now (one forward pass), so wrong class names are refused early."""
        if isinstance(self.model, torch.nn.Module):
            self.n_outputs = _engine.n_outputs(self.model, self.train, device=self.device)

    # --- one example ----------------------------------------------------------------------------------------------
    def item(self, split: str, index: int) -> tuple:
        ds = self.train if split == "train" else self.test
        return _data.check_item(ds[int(index)], f"{split}_dataset[i]")

    def image(self, split: str, index: int, size: int = _codec.THUMB_SIZE) -> ImageData:
        key = (split, int(index), size)
        with self._thumb_lock:
            img = self._thumbs.get(key)
        if img is None:
            img = _codec.encode_image(self.item(split, index)[0], self.to_image, size)
            with self._thumb_lock:
                self._thumbs[key] = img
                while len(self._thumbs) > THUMB_CACHE:
                    self._thumbs.popitem(last=False)
        return img

    def train_label(self, i: int) -> int:
        lab = self.train_labels
        return int(lab[i]) if lab is not None else _data.as_int(self.item("train", i)[-1])

    def test_label(self, i: int) -> int:
        return _data.as_int(self.item("test", i)[-1])

    def prediction(self, split: str, index: int, lock: threading.Lock) -> tuple[int | None, float | None]:
        preds, probs = (self.train_preds, self.train_probs) if split == "train" else (self.test_preds, self.test_probs)
        pos = index if split == "train" else self.test_pos.get(index)
        if preds is not None and probs is not None and pos is not None:
            return int(preds[pos]), float(probs[pos])
        with query_threads():  # interactive: one example, on a laptop's busy cores
            _, preds, probs = self.predict(split, [index], lock=lock)
        return int(preds[0]), float(probs[0])

    def query_row(self, split: str, index: int, size: int, lock: threading.Lock) -> Row:
        """The row of the example a gallery or the details view shows (prediction computed now if not yet)."""
        label = _data.as_int(self.item(split, index)[-1])
        pred, prob = self.prediction(split, index, lock)
        rank = score = None
        ranks, scores = self.rank, self.self_infl
        if split == "train" and ranks is not None and scores is not None:
            rank, score = int(ranks[index]), float(scores[index])
        image = self.image(split, index, size)
        return _codec.item_row(index, label, pred=pred, prob=prob, rank=rank, score=score, image=image)

    def reviewed(self, row: Row, relabels: Mapping[int, int], names: Sequence[str] = ()) -> Row:
        """A training row with its suggested label and badge (from the suggestions computed now) and its new label
        (from ``relabels``); ``names`` are the class names of the badge's words."""
        i = row["index"]
        with self.lock:
            sugg = self.suggestions
        suggested = badge = None
        if sugg is not None and sugg.labels[i] != _suggest.NONE:
            suggested = int(sugg.labels[i])
            name = functools.partial(_codec.class_label, names=list(names))
            badge = _suggest.badge(
                row["label"], suggested, float(sugg.p_given[i]), float(sugg.p_suggested[i]), name=name
            )
        new = relabels.get(i)
        return {**row, "suggested": suggested, "badge": badge, "new_label": None if new is None else int(new)}

    # --- predictions ----------------------------------------------------------------------------------------------
    def predict(
        self,
        split: str,
        ids: Sequence[int] | None,
        *,
        lock: threading.Lock,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, predictions and probabilities of ``ids`` of ``split`` (all when None), holding ``lock`` (the
        engine's) per batch."""
        return _engine.predict(
            self.model,
            self.train if split == "train" else self.test,
            ids,
            batch_size=self.batch_size,
            device=self.device,
            lock=lock,
            progress=progress,
            on_width=self.note_width,
        )

    def note_width(self, width: int) -> None:
        """Record the number of classes the model outputs (the width of its logits)."""
        with self.lock:
            self.n_outputs = width

    def set_self_influence(self, scores: np.ndarray, rank: np.ndarray | None = None) -> None:
        """New scores with their ranks (``rank``: ``_stats.ranks_from_scores(scores)`` when the caller sorted them
        already, e.g. before taking the lock)."""
        rank = _stats.ranks_from_scores(scores) if rank is None else rank
        with self.lock:
            self.self_infl, self.rank = scores, rank

    def seen_classes(self) -> int | None:
        """Number of classes seen in the labels and predictions so far (None before any)."""
        arrays = (self.train_labels, self.train_preds, self.test_labels, self.test_preds)
        seen = [a for a in arrays if a is not None and len(a)]
        return int(max(int(a.max()) for a in seen) + 1) if seen else None

    def class_names_problem(self, class_names: Sequence[str]) -> str | None:
        """Why ``class_names`` cannot name the classes (None if they can): the count must match what the model
        outputs and cover every label seen so far."""
        with self.lock:
            width = self.n_outputs
            labels = [a for a in (self.train_labels, self.test_labels) if a is not None and len(a)]
        if width is not None and len(class_names) != width:
            return (
                f"class_names has {names(len(class_names))} but the model outputs {width} classes: pass one name per "
                "class, in class-index order (or leave class_names out)."
            )
        top = max((int(a.max()) for a in labels), default=None)
        if top is not None and len(class_names) <= top:
            return (
                f"class_names has {names(len(class_names))} but the labels go up to {top}: pass one name per class "
                f"(at least {top + 1}), in class-index order (or leave class_names out)."
            )
        return None
