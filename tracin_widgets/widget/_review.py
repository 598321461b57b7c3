"""Reviews that last: the flags, the relabels and their one undo history, kept in a review file (restored by the next
explorer on the same data), merged from a second reviewer's file, and the ``flags_path`` file; plus the relabels'
checks and the cleaned training set. No widget imports."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import atomic_write
from . import _flags

FORMAT = "tracin_widgets review"
VERSION = 1
HISTORY = 1000  # undo steps kept (and saved)
SAMPLED_ROWS = 16  # rows of the training set read into its fingerprint (with its length and every label known)

Relabels = dict[int, int]


class State(NamedTuple):
    """What one undo step restores: the flags and the relabels."""

    flagged: list[int]
    relabels: Relabels


class Step(NamedTuple):
    """One undo step, as the change it undoes: flags added and removed, and the previous value of each relabel
    it changed (None: it had none)."""

    added: list[int]
    removed: list[int]
    relabels: dict[int, int | None]


# --- where the review lives ----------------------------------------------------------------------------------------
def user_cache_dir() -> Path:
    """The platform's per-user cache folder: ``$XDG_CACHE_HOME`` or ``~/.cache`` (Linux and others),
    ``~/Library/Caches`` (macOS), ``%LOCALAPPDATA%`` (Windows)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"


def _item_bytes(x: Any) -> bytes:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous().numpy().tobytes() + str(tuple(x.shape)).encode()
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).tobytes() + str(x.shape).encode()
    if isinstance(x, (tuple, list)):
        return b"(" + b",".join(_item_bytes(v) for v in x) + b")"
    return repr(x).encode()


def data_fingerprint(dataset: Any, labels: np.ndarray | None) -> str:
    """A short fingerprint of a training set: its length, ``SAMPLED_ROWS`` evenly spaced items (features and
    labels) and, when known without reading every item, all its labels."""
    n = len(dataset)
    h = hashlib.sha256(f"{type(dataset).__name__}:{n}".encode())
    for i in sorted({int(v) for v in np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).round()}):
        h.update(_item_bytes(dataset[i]))
    if labels is not None:
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def default_path(cache_dir: Path | None, fingerprint: str) -> Path:
    """``<cache_dir>/review-<fingerprint>.json`` when the engine has a cache folder, else
    ``<user cache dir>/tracin_widgets/reviews/<fingerprint>.json``."""
    if cache_dir is not None:
        return Path(cache_dir) / f"review-{fingerprint}.json"
    return user_cache_dir() / "tracin_widgets" / "reviews" / f"{fingerprint}.json"


def check_review_path(review_path: Any) -> Path | None | Literal[False]:
    """``review_path`` checked: a ``.json`` path, ``False`` (no review file) or None (the default)."""
    if review_path is None or review_path is False:
        return review_path
    if review_path is True or not isinstance(review_path, (str, os.PathLike)):
        raise TypeError(
            f"review_path must be a path ending in .json, False (no review file) or None (the default file), got "
            f"{type(review_path).__name__} {review_path!r}."
        )
    p = Path(review_path)
    if p.suffix.lower() != ".json":
        raise ValueError(f"review_path must end in .json, got {str(p)!r}: pass e.g. 'review.json' (or False).")
    return p


# --- relabels --------------------------------------------------------------------------------------------------------
def _as_int(v: Any, what: str) -> int:
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise ValueError(f"{what} must be an int, got {type(v).__name__} {v!r}")
    return int(v)


def normalise_relabels(value: Any, n_train: int, n_classes: int | None, given: Callable[[int], int]) -> Relabels:
    """``{train_index: new_label}`` with int keys and values, each index in ``[0, n_train)`` and each label a class
    index (in ``[0, n_classes)`` once the number of classes is known). A relabel to the given label is dropped (it
    changes nothing). Raises ValueError naming what is wrong."""
    if not isinstance(value, Mapping):
        raise ValueError(f"relabels must be a dict {{train_index: new_label}}, got {type(value).__name__}.")
    out: Relabels = {}
    for k, v in value.items():
        i = _as_int(k, f"relabels key {k!r} (a training index)")
        if not 0 <= i < n_train:
            raise ValueError(f"relabels key {i} is outside the training set [0, {n_train}): relabel a training index.")
        label = _as_int(v, f"relabels[{i}] (the new label)")
        if label < 0 or (n_classes is not None and label >= n_classes):
            top = "" if n_classes is None else f" in [0, {n_classes})"
            raise ValueError(f"relabels[{i}] = {label} is not a class index{top}: give the new label's class index.")
        if label != given(i):
            out[i] = label
    return dict(sorted(out.items()))


def relabels_to_json(value: Mapping[int, int], widget: Any = None) -> dict[str, int]:
    """The trait on the wire: JSON keys are strings (``{"12": 3}``)."""
    return {str(int(k)): int(v) for k, v in value.items()}


def relabels_from_json(value: Any, widget: Any = None) -> Any:
    """The page's ``{"12": 3}`` back to int keys (left as they are when not digits: the validator says why)."""
    if not isinstance(value, dict):
        return value
    return {int(k) if isinstance(k, str) and k.strip().lstrip("-").isdigit() else k: v for k, v in value.items()}


class RelabelledSubset(Dataset):
    """The cleaned training set when some labels were changed: ``dataset[indices[j]]`` with the label replaced by
    ``relabels[indices[j]]`` where there is one (a tensor label stays a tensor of its dtype). Not a ``Subset``, so
    that no reader bypasses ``__getitem__`` and reads the old labels."""

    def __init__(self, dataset: Any, indices: Sequence[int], relabels: Mapping[int, int]):
        self.dataset = dataset
        self.indices = list(indices)
        self.relabels = dict(relabels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Any:
        i = self.indices[j]
        item = self.dataset[i]
        new = self.relabels.get(i)
        if new is None:
            return item
        old = item[-1]
        label: Any = torch.tensor(new, dtype=old.dtype) if isinstance(old, torch.Tensor) else new
        return (*item[:-1], label)


# --- the review file --------------------------------------------------------------------------------------------------
def _step_json(s: Step) -> dict:
    return {"added": s.added, "removed": s.removed, "relabels": {str(k): v for k, v in s.relabels.items()}}


def _step_of(d: Any) -> Step:
    if not isinstance(d, dict):
        raise ValueError(f"an undo step is not an object: {d!r:.60}")
    rel = d.get("relabels") or {}
    return Step(
        [int(v) for v in d.get("added") or []],
        [int(v) for v in d.get("removed") or []],
        {int(k): None if v is None else int(v) for k, v in rel.items()},
    )


def read_review(path: Path, n_train: int, fingerprint: str | None) -> tuple[list[int], Relabels, list[Step]]:
    """The flags, relabels and undo history of a review file. Raises ValueError naming the file when it is corrupt,
    not a review file, or saved for another training set (``fingerprint`` None: not checked); never modifies it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f'not a review file (no "format": {FORMAT!r})')
        flagged = _flags.normalise(data.get("flagged") or [], n_train, what="flagged")
        relabels = {int(k): int(v) for k, v in (data.get("relabels") or {}).items()}
        if any(not 0 <= k < n_train for k in relabels) or any(v < 0 for v in relabels.values()):
            raise ValueError(f"relabels outside the training set [0, {n_train}) or not class indices")
        history = [_step_of(s) for s in data.get("history") or []]
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"review file {str(path)!r} is corrupt or not a review file ({e}). It was left untouched: fix or delete "
            "it, pass another review_path, or review_path=False."
        ) from e
    saved_for, saved_n = data.get("data"), data.get("n_train")
    if saved_n != n_train or (fingerprint is not None and saved_for not in (None, fingerprint)):
        raise ValueError(
            f"review file {str(path)!r} was saved for another training set ({saved_n} examples, data {saved_for}; "
            f"this one has {n_train}, data {fingerprint}): pass the review file of this training set, or another "
            "review_path."
        )
    return flagged, dict(sorted(relabels.items())), history[-HISTORY:]


class ReviewStore:
    """The flags file, the review file and the undo history of one explorer.

    Both files are checked and read at once (a corrupt one raises here and is left untouched): ``restored`` holds
    what they say (the flags of ``flags_path`` win over the review file's). :meth:`changed` records a change of the
    flags or the relabels as one undo step (all changes inside :meth:`one_step` make one step) and saves the files.
    """

    def __init__(
        self,
        flags_path: Any,
        review_path: Path | None,
        n_train: int,
        fingerprint: str | None,
        lock: threading.RLock,
    ):
        self.flags_path: Path | None = None if flags_path is None else _flags.check_suffix(flags_path, "flags_path")
        self.path = review_path
        self.n_train = n_train
        self.fingerprint = fingerprint
        self.lock = lock
        self.history: list[Step] = []
        flagged: list[int] = []
        relabels: Relabels = {}
        if self.path is not None and self.path.exists():
            flagged, relabels, self.history = read_review(self.path, n_train, fingerprint)
        if self.flags_path is not None and self.flags_path.exists():
            flagged = _flags.read(self.flags_path, n_train)
        self.restored = State(flagged, relabels)
        self._undoing = False
        self.failed: Path | None = None  # the file a failed save could not write
        self._batch: State | None = None  # the state when the outermost one_step began
        self._depth = 0

    # --- changes ------------------------------------------------------------------------------------------------
    def changed(self, old: State, new: State) -> None:
        """Record the change from ``old`` to ``new`` (unless :meth:`undo` or :meth:`one_step` made it) and save
        ``new`` (raises when a file cannot be written)."""
        if self._depth:
            return
        if not self._undoing:
            self._push(old, new)
        self.save(new)

    @contextmanager
    def one_step(self, current: Callable[[], State]) -> Iterator[None]:
        """Every change inside the block is one undo step; the files are saved once, at its end."""
        with self.lock:
            if self._depth == 0:
                self._batch = current()
            self._depth += 1
        try:
            yield
        finally:
            with self.lock:
                self._depth -= 1
                start = self._batch if self._depth == 0 else None
            if start is not None:
                new = current()
                if new != start:
                    self._push(start, new)
                    self.save(new)

    def _push(self, old: State, new: State) -> None:
        o, n = set(old.flagged), set(new.flagged)
        keys = set(old.relabels) | set(new.relabels)
        rel = {k: old.relabels.get(k) for k in sorted(keys) if old.relabels.get(k) != new.relabels.get(k)}
        step = Step(sorted(n - o), sorted(o - n), rel)
        if step.added or step.removed or step.relabels:
            with self.lock:
                self.history.append(step)
                del self.history[:-HISTORY]

    def undo(self, current: State, assign: Callable[[State], None]) -> bool:
        """Give the state before the last step to ``assign`` (which sets the traits); False without history."""
        with self.lock:
            if not self.history:
                return False
            step = self.history.pop()
            self._undoing = True
        flagged = (set(current.flagged) - set(step.added)) | set(step.removed)
        relabels = dict(current.relabels)
        for k, v in step.relabels.items():
            if v is None:
                relabels.pop(k, None)
            else:
                relabels[k] = v
        try:
            assign(State(sorted(flagged), dict(sorted(relabels.items()))))
        finally:
            self._undoing = False
        return True

    # --- files --------------------------------------------------------------------------------------------------
    def save(self, state: State) -> None:
        """Write the flags file (if any) and the review file (if any), atomically; ``failed`` names the file that
        could not be written (the error propagates)."""
        self.failed = self.flags_path
        if self.flags_path is not None:
            _flags.write(self.flags_path, list(state.flagged))
        self.failed = self.path
        if self.path is not None:
            doc = {
                "format": FORMAT,
                "version": VERSION,
                "data": self.fingerprint,
                "n_train": self.n_train,
                "flagged": list(state.flagged),
                "relabels": {str(k): v for k, v in state.relabels.items()},
                "history": [_step_json(s) for s in self.history],
            }
            data = (json.dumps(doc) + "\n").encode("utf-8")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda f: f.write(data))


def open_store(flags_path: Any, review_path: Any, examples: Any, cache_dir: Path | None, lock: Any) -> ReviewStore:
    """The review store of an explorer on ``examples`` (``_examples.Examples``): ``review_path`` checked, its
    default (:func:`default_path`) resolved, the files read (a corrupt one raises, untouched)."""
    path = check_review_path(review_path)
    fingerprint = None if path is False else data_fingerprint(examples.train, examples.train_labels)
    if path is None:
        path = default_path(cache_dir, str(fingerprint))
    where = None if path is False else path
    return ReviewStore(flags_path, where, examples.n_train, fingerprint, lock)


def conflicts_note(conflicts: Mapping[int, tuple[int, int]], path: Any) -> str:
    shown = ", ".join(f"#{i}: ours {a}, theirs {b}" for i, (a, b) in list(conflicts.items())[:5])
    return f"merge_review: {len(conflicts)} example(s) relabelled differently in {path} ({shown}); ours kept."


def merged(ours: State, path: Any, n_train: int, fingerprint: str | None) -> tuple[State, dict[int, tuple[int, int]]]:
    """``ours`` merged with the review file at ``path`` (a second reviewer's): the union of the flags; their
    relabels where we have none; ``conflicts`` ``{index: (ours, theirs)}`` where both relabelled a row differently
    (ours kept). A flags file (``.json`` list or ``.csv``) is merged as flags only."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"merge_review: {str(p)!r} does not exist: pass the path of a review or flags file.")
    try:
        head = json.loads(p.read_text(encoding="utf-8")) if p.suffix.lower() == ".json" else None
    except (ValueError, UnicodeDecodeError):
        head = None
    if isinstance(head, dict) and head.get("format") == FORMAT:
        flags, theirs, _ = read_review(p, n_train, fingerprint)
    else:
        flags, theirs = _flags.read(p, n_train), {}
    relabels = dict(ours.relabels)
    conflicts: dict[int, tuple[int, int]] = {}
    for k, v in theirs.items():
        if k not in relabels:
            relabels[k] = v
        elif relabels[k] != v:
            conflicts[k] = (relabels[k], v)
    return State(sorted(set(ours.flagged) | set(flags)), dict(sorted(relabels.items()))), conflicts


# --- what the review gives -------------------------------------------------------------------------------------------
def cleaned(dataset: Any, n_train: int, flagged: Sequence[int], relabels: Mapping[int, int]) -> Any:
    """The training set without the ``flagged`` rows, with the new label of each relabelled one: a ``Subset``
    without relabels, else a :class:`RelabelledSubset` (rows both flagged and relabelled are dropped)."""
    from torch.utils.data import Subset

    keep = np.ones(n_train, dtype=bool)
    keep[np.asarray(list(flagged), dtype=np.int64)] = False  # a mask, not a Python loop over the training set
    indices = np.flatnonzero(keep).tolist()
    kept = {i: v for i, v in relabels.items() if keep[i]}
    return RelabelledSubset(dataset, indices, kept) if kept else Subset(dataset, indices)


def export_records(state: State, examples: Any) -> list[dict]:
    """One record per flagged or relabelled row, by index (``_flags.EXPORT_COLUMNS``), from ``examples``
    (``_examples.Examples``: the given labels, the suggestions and the self-influence computed now)."""
    with examples.lock:
        sugg, scores = examples.suggestions, examples.self_infl
    suggested = None if sugg is None else sugg.labels
    fl = set(state.flagged)
    out = []
    for i in sorted(fl | set(state.relabels)):
        s = None if suggested is None or suggested[i] < 0 else int(suggested[i])
        out.append(
            {
                "index": i,
                "given_label": examples.train_label(i),
                "suggested_label": s,
                "new_label": state.relabels.get(i),
                "flagged": i in fl,
                "self_influence": None if scores is None else float(scores[i]),
            }
        )
    return out


def summary(info: Mapping[str, Any], n_flagged: int, n_relabelled: int, estimate: int | None) -> str:
    """The explorer's plain-text line (its ``repr``, shown where the widget cannot render)."""
    text = f"InfluenceExplorer: {info.get('n_train', 0):,} training / {info.get('n_test', 0):,} test examples"
    text += f", {info.get('engine', '')}, {n_flagged:,} flagged, {n_relabelled:,} relabelled"
    if estimate is not None:
        text += f", ~{estimate:,} labels estimated wrong"
    return text
