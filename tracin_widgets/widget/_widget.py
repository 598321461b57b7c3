"""``InfluenceExplorer``: the anywidget controller. Traits + observers + one message handler; no HTML, no heavy logic
(that lives in ``_payload.py``, ``_data.py``, ``_flags.py`` and ``_tasks.py``)."""

from __future__ import annotations

import difflib
import logging
import operator
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import anywidget
import numpy as np
import traitlets as t

from . import _flags, _payload
from ._protocols import InfluenceSource
from ._tasks import LatestWorker, Progress, cancelled_class

log = logging.getLogger("tracin_widgets.widget")

_STATIC = Path(__file__).parent / "static"
_MISSING_BUNDLE = (
    "export default { render({ el }) { const d = document.createElement('div');"
    " d.textContent = 'tracin_widgets: the JS bundle is missing. Run: cd js && npm ci && npm run build';"
    " d.style.cssText = 'padding:8px;border:1px solid #d32f2f;color:#d32f2f'; el.append(d); } };"
)
_ARGS = (
    "model", "checkpoints", "train_dataset", "test_dataset", "checkpoints_load_func", "final_fc_layer", "loss_fn",
    "engine", "class_names", "k", "is_mislabelled", "flags_path", "to_image", "batch_size", "device", "test_indices",
    "cache_dir",
)  # fmt: skip
_ALIASES = {"topk": "k", "top_k": "k", "n": "k", "layer": "final_fc_layer", "layers": "final_fc_layer",
            "loss": "loss_fn", "tracer": "engine", "influence": "engine", "classes": "class_names",
            "labels": "class_names", "mislabelled": "is_mislabelled", "is_mislabeled": "is_mislabelled",
            "cache": "cache_dir", "cache_path": "cache_dir"}  # fmt: skip
_THUMB_CACHE = 4096
_TopK = tuple  # (indices (k,) int64, scores (k,) float64)
_SCORE_CACHE = 32  # influence rows of recent queries (n_train float64 each)


def _suggest(name: str) -> Optional[str]:
    if name in _ALIASES:
        return _ALIASES[name]
    m = difflib.get_close_matches(name, _ARGS, 1, cutoff=0.6)
    return m[0] if m else None


class _IndexList(t.List):
    """``List(Int)`` that also takes numpy / torch integers and any iterable of them (e.g. ``np.flatnonzero(mask)``)."""

    def validate(self, obj, value):
        if value is not None and not isinstance(value, (list, str, bytes, dict)) and hasattr(value, "__iter__"):
            value = list(value.tolist() if hasattr(value, "tolist") else value)
        if isinstance(value, list):
            value = [int(v) if hasattr(v, "__index__") and not isinstance(v, bool) else v for v in value]
            bad = [(i, v) for i, v in enumerate(value) if not isinstance(v, int) or isinstance(v, bool)][:1]
            if bad:
                i, v = bad[0]
                raise t.TraitError(
                    f"{self.name} must be a list of training indices (ints), got {type(v).__name__} {v!r} at position "
                    f"{i}: give each example by its integer index."
                )
        return super().validate(obj, value)


def _k_error(value: Any) -> str:
    return (
        f"k must be a positive int, got {type(value).__name__} {value!r}: set k to the number of proponents and of "
        "opponents to show (1 or more)."
    )


class _PositiveInt(t.Int):
    """``Int`` of at least 1 that also takes numpy / torch integers; bools and floats are refused."""

    def validate(self, obj, value):
        if hasattr(value, "__index__") and not isinstance(value, (bool, int)):
            try:
                value = operator.index(value)  # numpy / torch integers; a float tensor raises, never truncates
            except TypeError:
                pass
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise t.TraitError(_k_error(value))
        return value


def _single_string_error(value: Any) -> str:
    return (
        f"class_names must be a list with one name per class, got the single string {value!r}: pass a list, "
        "e.g. ['cat', 'dog']."
    )


def _names(n: int) -> str:
    return f"{n} name" if n == 1 else f"{n} names"


class _ClassNames(t.List):
    """``List(Unicode)`` that refuses a single string (which a list() would split into letters, and traitlets'
    ``List.set`` would silently wrap)."""

    def set(self, obj, value):
        if isinstance(value, (str, bytes)):
            raise t.TraitError(_single_string_error(value))
        super().set(obj, value)

    def validate(self, obj, value):
        if isinstance(value, (str, bytes)):
            raise t.TraitError(_single_string_error(value))
        return super().validate(obj, value)


class InfluenceExplorer(anywidget.AnyWidget):
    """Explore TracIn influence in a notebook: proponents/opponents of test predictions, self-influence ranking of the
    training set (likely mislabelled examples first), and flags shared by every view.

    ``InfluenceExplorer(model, checkpoints, train_dataset, test_dataset=None, *, ...)`` builds a ``TracInCPFast``
    (final linear layer found by tracing, cross-entropy loss with ``reduction="sum"``) unless ``engine=`` gives one
    (any object with ``influence(inputs, k, proponents)`` and ``self_influence()``). Predictions, the training
    factors and self-influence are computed in a background thread; call :meth:`wait` to block until done.
    ``cache_dir=`` saves the default engine's training factors there (keyed by model, checkpoints and data), so
    the next explorer on the same inputs skips the factor pass.
    """

    _esm = _STATIC / "widget.js" if (_STATIC / "widget.js").exists() else _MISSING_BUNDLE
    _css = _STATIC / "widget.css" if (_STATIC / "widget.css").exists() else ""

    # --- shared state (both sides write) ----------------------------------------------------------------------------
    flagged = _IndexList(t.Int()).tag(sync=True)
    """Flagged training indices (sorted, unique): the user's output. Shared by the galleries and the table."""
    k = _PositiveInt(10).tag(sync=True)
    """Number of proponents and of opponents shown."""
    selected_test = t.Int(-1).tag(sync=True)
    """Dataset index of the selected test example (-1: none)."""
    query = t.Dict().tag(sync=True)
    """What the galleries explain: ``{"source": "test" | "train", "index": int}`` ({} = nothing)."""
    test_page = t.Int(0).tag(sync=True)
    test_page_size = t.Int(24).tag(sync=True)
    misclassified_only = t.Bool(False).tag(sync=True)
    """Test strip filter: only test examples whose prediction differs from their label."""
    error = t.Unicode("").tag(sync=True)
    """Last error (engine, data, flags file), shown as a banner; the frontend clears it when dismissed."""

    # --- Python -> JS ---------------------------------------------------------------------------------------------
    class_names = _ClassNames(t.Unicode()).tag(sync=True)
    status = t.Unicode("idle").tag(sync=True)
    """``idle`` | ``running`` | ``ready`` | ``cancelled`` | ``error`` (state of the background computation)."""
    progress = t.Float(0.0).tag(sync=True)
    """Fraction done of the current background phase, in [0, 1]."""
    progress_info = t.Dict().tag(sync=True)
    """``{"phase", "done", "total", "fraction", "eta_s", "step", "steps"}`` of the background computation."""
    info = t.Dict().tag(sync=True)
    """``{"n_train", "n_test", "has_truth", "engine", "n_classes"}``."""
    test_strip = t.Dict().tag(sync=True)
    """The current page of test examples: ``{"page", "n_pages", "total", "page_size", "filtered", "items"}``."""
    gallery = t.Dict().tag(sync=True)
    """Last computed galleries: ``{"query", "k", "request", "item", "proponents", "opponents", "error"}``."""
    stats = t.Dict().tag(sync=True)
    """Self-influence summary: ``{"histogram", "roc", "found", "flags", "has_preds"}``."""

    def __init__(
        self,
        model: Any,
        checkpoints: Any = None,
        train_dataset: Any = None,
        test_dataset: Any = None,
        *,
        checkpoints_load_func: Optional[Callable] = None,
        final_fc_layer: Any = None,
        loss_fn: Any = None,
        engine: Optional[InfluenceSource] = None,
        class_names: Optional[Sequence[str]] = None,
        k: int = 10,
        is_mislabelled: Any = None,
        flags_path: Any = None,
        to_image: Optional[Callable[[Any], Any]] = None,
        batch_size: int = 256,
        device: Any = None,
        test_indices: Optional[Sequence[int]] = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ):
        if kwargs:
            bad = sorted(kwargs)
            hints = [f"{b!r} (did you mean {m!r}?)" if (m := _suggest(b)) else repr(b) for b in bad]
            raise TypeError(
                f"InfluenceExplorer() got unexpected keyword argument(s) {', '.join(hints)}. "
                f"Valid arguments: {', '.join(_ARGS)}."
            )
        if train_dataset is None:
            raise TypeError("InfluenceExplorer() needs train_dataset (a map-style dataset of (features, label) items).")
        for name, ds in (("train_dataset", train_dataset), ("test_dataset", test_dataset)):
            if ds is not None and not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
                raise TypeError(
                    f"{name} must be a map-style dataset (with __len__ and __getitem__), got {type(ds).__name__}."
                )
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(_k_error(k))
        if class_names is not None:
            if isinstance(class_names, (str, bytes)):
                raise TypeError(_single_string_error(class_names))
            if not hasattr(class_names, "__iter__"):
                raise TypeError(
                    f"class_names must be a list with one name per class, got {type(class_names).__name__}: pass a "
                    "list, e.g. ['cat', 'dog']."
                )
            class_names = [str(c) for c in class_names]
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if to_image is not None and not callable(to_image):
            raise TypeError("to_image must be a callable (tensor -> HxWxC uint8 or float image in [0, 1]).")

        from . import _data  # torch

        self._model = model
        self._train = train_dataset
        self._test = test_dataset
        self._n_train = len(train_dataset)
        if self._n_train == 0:
            raise ValueError("train_dataset is empty.")
        _data.check_item(train_dataset[0], "train_dataset[i]")
        self._n_outputs: Optional[int] = None  # classes the model outputs (width of its logits), once known
        if class_names:  # one forward pass, so a wrong count is refused now rather than after the long passes
            import torch

            if isinstance(model, torch.nn.Module):
                self._n_outputs = _data.n_outputs(model, train_dataset[0], device=device)
        self._to_image = to_image
        self._batch_size = batch_size
        self._device = device
        if test_dataset is None:
            if test_indices is not None:
                raise ValueError("test_indices needs a test_dataset.")
            self._test_ids = np.zeros(0, dtype=np.int64)
        else:
            n_test = len(test_dataset)
            ids = np.arange(n_test) if test_indices is None else np.asarray(list(test_indices), dtype=np.int64)
            if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= n_test)):
                raise ValueError(f"test_indices must be indices into test_dataset, i.e. in [0, {n_test}).")
            self._test_ids = ids
            if ids.size:
                _data.check_item(test_dataset[int(ids[0])], "test_dataset[i]")
        self._test_pos = {int(v): i for i, v in enumerate(self._test_ids)}

        self._source = self._make_source(model, checkpoints, engine, checkpoints_load_func, final_fc_layer, loss_fn,
                                         cache_dir)  # fmt: skip
        self._truth = None if is_mislabelled is None else _payload.mislabelled_mask(is_mislabelled, self._n_train)
        self._flags_path = None if flags_path is None else _flags.check_suffix(flags_path, "flags_path")
        restored = []
        if self._flags_path is not None and self._flags_path.exists():
            restored = _flags.read(self._flags_path, self._n_train)  # a corrupt file raises here, untouched

        # computed state (filled by the background pipeline)
        self._lock = threading.RLock()  # guards the computed arrays and request generations
        self._engine_lock = threading.Lock()  # one user of the model / engine at a time
        self._cancel = threading.Event()  # set only while what it cancels is in flight (see _request_cancel)
        self._run = 0  # id of the latest background computation (progress_info["run"]); a cancel names it
        self._pipeline_running = False
        self._gallery_busy = 0  # gallery computations in flight
        self._fitted = threading.Event()  # set once galleries may query the engine (fitted, or the pipeline ended)
        self._fit_done = False
        self._thumb_lock = threading.Lock()
        self._progress_cb = Progress(self._publish_progress, self._cancel)
        self._user_progress_cb = None
        self._self_infl: Optional[np.ndarray] = None
        self._rank: Optional[np.ndarray] = None
        self._train_labels: Optional[np.ndarray] = _data.fast_labels(train_dataset)
        self._train_preds: Optional[np.ndarray] = None
        self._train_probs: Optional[np.ndarray] = None
        self._test_labels: Optional[np.ndarray] = None
        self._test_preds: Optional[np.ndarray] = None
        self._test_probs: Optional[np.ndarray] = None
        self._thumbs: OrderedDict = OrderedDict()
        self._order_cache: dict = {}
        self._score_cache: OrderedDict = OrderedDict()
        self._gallery_gen = 0
        self._history: list[list[int]] = []
        self._undoing = False
        self.last_exception: Optional[BaseException] = None
        self._pipeline_thread: Optional[threading.Thread] = None
        self._gallery_worker = LatestWorker("tracin-gallery")
        self._names_reported = False
        if class_names and (problem := self._class_names_problem(class_names)):
            raise ValueError(problem)

        super().__init__(
            k=k,
            class_names=class_names if class_names is not None else [],
            flagged=restored,
            info={
                "n_train": self._n_train,
                "n_test": int(len(self._test_ids)),
                "has_truth": self._truth is not None,
                "engine": type(self._source).__name__,
                "n_classes": len(class_names) if class_names is not None else None,
            },
        )
        self.on_msg(self._on_msg)
        self.observe(self._on_flagged, names=["flagged"])
        self.observe(self._on_selected_test, names=["selected_test"])
        self.observe(self._on_query, names=["query", "k"])
        self.observe(self._on_strip_params, names=["test_page", "test_page_size", "misclassified_only"])
        self._update_stats()
        self._refresh_strip()
        if len(self._test_ids):
            self.selected_test = int(self._test_ids[0])
        self.start()

    # ------------------------------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------------------------------
    @property
    def source(self) -> InfluenceSource:
        """The influence engine behind the explorer."""
        return self._source

    @property
    def self_influence(self) -> Optional[np.ndarray]:
        """Self-influence of every training example, ``(n_train,)`` float64, or None until computed."""
        with self._lock:
            return None if self._self_infl is None else self._self_infl.copy()

    def start(self) -> "InfluenceExplorer":
        """(Re)start the background computation (after a cancel or an error); no-op while it runs."""
        with self._lock:
            if self._pipeline_thread is not None and self._pipeline_thread.is_alive() or self.status == "ready":
                return self
            self._cancel.clear()
            if not self._fit_done:
                self._fitted.clear()
            self.last_exception = None
            if self.status in ("error", "cancelled"):
                self.error = ""
            self._run += 1
            self._pipeline_running = True
            self.progress_info = {**self.progress_info, "run": self._run}  # before the Cancel button shows
            self.status = "running"
            self._pipeline_thread = threading.Thread(target=self._pipeline, name="tracin-explorer", daemon=True)
            self._pipeline_thread.start()
        if self.query and self.gallery.get("error"):
            self._schedule_gallery()
        return self

    def cancel(self) -> None:
        """Abort the background computation (and any gallery computation) in flight at the engine's next progress
        callback (``Cancelled``). With nothing in flight it does nothing: later computations are never cancelled."""
        self._request_cancel(None)

    def _request_cancel(self, run: Optional[int]) -> bool:
        """Cancel what is in flight now: the background run ``run`` only (the id the page showed in
        ``progress_info["run"]``), or everything when ``run`` is None. A late cancel (its run already over) is
        dropped, so it never cancels a later computation. True if something was cancelled."""
        with self._lock:
            if run is not None:
                target = self._pipeline_running and run == self._run
            else:
                target = self._pipeline_running or self._gallery_busy > 0
            if target:
                self._cancel.set()
            return target

    def _settle_cancel(self) -> None:
        """Called (under ``_lock``) when a computation ends: once nothing is in flight a cancel has done its job and
        is cleared, except after a cancelled background run (galleries then wait for Resume)."""
        if not self._pipeline_running and self._gallery_busy == 0 and self.status != "cancelled":
            self._cancel.clear()

    def wait(self, timeout: Optional[float] = None) -> "InfluenceExplorer":
        """Block until the background computation and pending gallery requests are done.

        Re-raises (once) the last exception of the background computation or of a gallery request (its text
        stays in ``error``).
        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        th = self._pipeline_thread
        if th is not None:
            th.join(timeout)
            if th.is_alive():
                raise TimeoutError(f"the explorer's background computation is still running after {timeout} s.")
        if not self._gallery_worker.join(timeout):
            raise TimeoutError(f"the gallery request is still running after {timeout} s.")
        exc, self.last_exception = self.last_exception, None
        if exc is not None:
            raise exc
        return self

    def undo(self) -> None:
        """Undo the last change of ``flagged`` (from any view or from Python)."""
        with self._lock:
            if not self._history:
                return
            prev = self._history.pop()
            self._undoing = True
        try:
            self.flagged = prev
        finally:
            self._undoing = False

    def export_flagged(self, path: Any) -> Path:
        """Write the flagged indices to ``path``: ``.json`` (a list) or ``.csv`` (an ``index`` column)."""
        return _flags.write(path, list(self.flagged))

    def cleaned_dataset(self):
        """The training set without the flagged examples, as a ``torch.utils.data.Subset``."""
        from torch.utils.data import Subset

        drop = set(self.flagged)
        return Subset(self._train, [i for i in range(self._n_train) if i not in drop])

    def close(self) -> None:
        cancel = getattr(self, "_cancel", None)  # close() also runs from __del__ of a half-built widget
        if cancel is not None:
            cancel.set()
        super().close()

    # ------------------------------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------------------------------
    def _make_source(self, model, checkpoints, engine, load_func, final_fc_layer, loss_fn, cache_dir) -> InfluenceSource:
        if engine is not None:
            given = [n for n, v in (("checkpoints_load_func", load_func), ("final_fc_layer", final_fc_layer),
                                    ("loss_fn", loss_fn), ("cache_dir", cache_dir)) if v is not None]  # fmt: skip
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
            return engine
        if checkpoints is None:
            raise TypeError("InfluenceExplorer() needs checkpoints (a list of paths or a directory), or engine=.")
        import torch
        from torch import nn

        from ..influence import TracInCPFast, find_final_linear_layer
        from . import _data

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if final_fc_layer is None:
            batch = _data.collate_one(_data.check_item(self._train[0], "train_dataset[i]"))
            dev = _data.model_device(model, self._device)
            example = tuple(b.to(dev) if isinstance(b, torch.Tensor) else b for b in batch[:-1])
            final_fc_layer = find_final_linear_layer(model, example)[0]
        return TracInCPFast(
            model,
            final_fc_layer,
            self._train,
            checkpoints,
            checkpoints_load_func=load_func,
            loss_fn=loss_fn if loss_fn is not None else nn.CrossEntropyLoss(reduction="sum"),
            batch_size=self._batch_size,
            device=self._device,
            progress_callback=self._engine_progress,
            cache_dir=cache_dir,
        )

    def _engine_progress(self, phase: str, done: int, total: int) -> None:
        self._progress_cb(phase, done, total)
        if self._user_progress_cb is not None:
            self._user_progress_cb(phase, done, total)

    def _call_engine(self, fn: Callable[[], Any]) -> Any:
        """Call the engine holding the engine lock, with our progress callback (and any of the user's) installed."""
        src = self._source
        with self._engine_lock:
            if self._cancel.is_set():
                raise cancelled_class()("cancelled")
            swap = hasattr(src, "progress_callback") and getattr(src, "progress_callback") != self._engine_progress
            if swap:
                old = src.progress_callback
                self._user_progress_cb = old
                src.progress_callback = self._engine_progress
            try:
                return fn()
            finally:
                if swap:
                    src.progress_callback = old
                    self._user_progress_cb = None

    # ------------------------------------------------------------------------------------------------------------------
    # background pipeline
    # ------------------------------------------------------------------------------------------------------------------
    def _publish_progress(self, info: dict) -> None:
        with self.hold_sync():
            self.progress_info = {**self.progress_info, **info}
            self.progress = info["fraction"]

    def _pipeline(self) -> None:
        steps: list[tuple[str, Callable[[], None]]] = []
        if len(self._test_ids) and self._test_preds is None:
            steps.append(("Predicting test examples", self._step_test_predictions))
        if not self._fit_done:
            steps.append(("Training factors", self._step_fit))
        if self._self_infl is None:
            steps.append(("Self-influence", self._step_self_influence))
        if self._train_preds is None:
            steps.append(("Predicting training examples", self._step_train_predictions))
        run, status = self._run, None
        try:
            for i, (name, fn) in enumerate(steps):
                with self.hold_sync():
                    self.progress_info = {"phase": name, "done": 0, "total": 0, "fraction": 0.0, "eta_s": None,
                                          "step": i + 1, "steps": len(steps), "run": run}  # fmt: skip
                    self.progress = 0.0
                fn()
            status = "ready"
        except cancelled_class():
            status = "cancelled"
        except Exception as e:  # surfaced in the widget, the log and wait()
            self._fail(e, "background computation")
        finally:
            with self._lock:  # status and the end of the run change together, so a cancel sees one or the other
                self._pipeline_running = False
                if status is not None:
                    self.status = status
                self._settle_cancel()  # a cancel that came after the last step cancels nothing
            self._fitted.set()  # never leave gallery requests waiting (they fail or compute lazily)

    def _fail(self, e: BaseException, where: str, prefix: str = "") -> None:
        self.last_exception = e
        log.error("InfluenceExplorer %s failed: %s: %s", where, type(e).__name__, e, exc_info=e)
        with self.hold_sync():
            self.error = f"{prefix}{type(e).__name__}: {e}"
            if where == "background computation":
                self.status = "error"

    def _predict(self, dataset, ids, phase: Optional[str]):
        from . import _data

        def progress(done, total):
            self._progress_cb(phase, done, total)

        return _data.predict(self._model, dataset, ids, batch_size=self._batch_size, device=self._device,
                             lock=self._engine_lock, progress=progress if phase else None,
                             on_width=self._note_width)  # fmt: skip

    def _note_width(self, width: int) -> None:
        with self._lock:
            self._n_outputs = width

    def _step_test_predictions(self) -> None:
        labels, preds, probs = self._predict(self._test, self._test_ids.tolist(), "test predictions")
        with self._lock:
            self._test_labels, self._test_preds, self._test_probs = labels, preds, probs
        self._note_classes()
        self._refresh_strip()

    def _step_fit(self) -> None:
        fit = getattr(self._source, "fit", None)
        if callable(fit):
            self._call_engine(fit)
        self._fit_done = True
        self._fitted.set()

    def _step_self_influence(self) -> None:
        scores = self._call_engine(lambda: self._source.self_influence())
        scores = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64)
        scores = scores.reshape(-1)
        if len(scores) != self._n_train:
            raise ValueError(
                f"the engine's self_influence() returned {len(scores)} scores but train_dataset has {self._n_train} "
                "examples: the engine must be built on the same training set."
            )
        with self._lock:
            self._self_infl = scores
            self._rank = _payload.ranks_from_scores(scores)
            self._order_cache.clear()
        self._update_stats()

    def _step_train_predictions(self) -> None:
        labels, preds, probs = self._predict(self._train, None, "training predictions")
        with self._lock:
            self._train_labels, self._train_preds, self._train_probs = labels, preds, probs
            self._order_cache.clear()
        self._note_classes()
        self._update_stats()

    def _note_classes(self) -> None:
        names = list(self.class_names)
        problem = self._class_names_problem(names) if names else None
        if problem and not self._names_reported:  # e.g. labels beyond the names, seen only once predicted
            self._names_reported = True
            self._fail(ValueError(problem), "class names")
        if self.info.get("n_classes") is None:
            arrays = (self._train_labels, self._train_preds, self._test_labels, self._test_preds)
            seen = [a for a in arrays if a is not None and len(a)]
            if seen:
                self.info = {**self.info, "n_classes": int(max(int(a.max()) for a in seen) + 1)}

    def _class_names_problem(self, names: Sequence[str]) -> Optional[str]:
        """Why ``names`` cannot name the classes (None if they can): the count must match what the model outputs and
        cover every label seen so far."""
        with self._lock:
            width = self._n_outputs
            labels = [a for a in (self._train_labels, self._test_labels) if a is not None and len(a)]
        if width is not None and len(names) != width:
            return (
                f"class_names has {_names(len(names))} but the model outputs {width} classes: pass one name per "
                "class, in class-index order (or leave class_names out)."
            )
        top = max((int(a.max()) for a in labels), default=None)
        if top is not None and len(names) <= top:
            return (
                f"class_names has {_names(len(names))} but the labels go up to {top}: pass one name per class (at "
                f"least {top + 1}), in class-index order (or leave class_names out)."
            )
        return None

    @t.validate("class_names")
    def _validate_class_names(self, proposal):
        names = proposal["value"]
        if names and (problem := self._class_names_problem(names)):
            raise t.TraitError(problem)
        return names

    # ------------------------------------------------------------------------------------------------------------------
    # data access (cached)
    # ------------------------------------------------------------------------------------------------------------------
    def _item(self, split: str, index: int) -> tuple:
        from . import _data

        ds = self._train if split == "train" else self._test
        return _data.check_item(ds[int(index)], f"{split}_dataset[i]")

    def _image(self, split: str, index: int, size: int = _payload.THUMB_SIZE) -> dict:
        key = (split, int(index), size)
        with self._thumb_lock:
            img = self._thumbs.get(key)
        if img is None:
            img = _payload.encode_image(self._item(split, index)[0], self._to_image, size)
            with self._thumb_lock:
                self._thumbs[key] = img
                while len(self._thumbs) > _THUMB_CACHE:
                    self._thumbs.popitem(last=False)
        return img

    def _train_label(self, i: int) -> int:
        from . import _data

        lab = self._train_labels
        return int(lab[i]) if lab is not None else _data.as_int(self._item("train", i)[-1])

    def _prediction(self, split: str, index: int) -> tuple[Optional[int], Optional[float]]:
        if split == "train" and self._train_preds is not None:
            return int(self._train_preds[index]), float(self._train_probs[index])
        if split == "test" and self._test_preds is not None and index in self._test_pos:
            p = self._test_pos[index]
            return int(self._test_preds[p]), float(self._test_probs[p])
        _, preds, probs = self._predict(self._train if split == "train" else self._test, [index], None)
        return int(preds[0]), float(probs[0])

    def _query_row(self, split: str, index: int, size: int) -> dict:
        from . import _data

        label = _data.as_int(self._item(split, index)[-1])
        pred, prob = self._prediction(split, index)
        rank = score = None
        if split == "train" and self._rank is not None:
            rank, score = int(self._rank[index]), float(self._self_infl[index])
        return _payload.item_row(index, label, pred=pred, prob=prob, rank=rank, score=score,
                                 image=self._image(split, index, size))  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------------
    # test strip
    # ------------------------------------------------------------------------------------------------------------------
    def _on_strip_params(self, change) -> None:
        self._refresh_strip()

    def _refresh_strip(self) -> None:
        from . import _data

        try:
            with self._lock:
                preds, labels, probs = self._test_preds, self._test_labels, self._test_probs
            filtered = bool(self.misclassified_only and preds is not None)
            pos = np.flatnonzero(preds != labels) if filtered else np.arange(len(self._test_ids))
            size = max(1, int(self.test_page_size))
            n_pages = max(1, -(-len(pos) // size))
            page = min(max(0, int(self.test_page)), n_pages - 1)
            items = []
            for p in pos[page * size : (page + 1) * size].tolist():
                idx = int(self._test_ids[p])
                lab = int(labels[p]) if labels is not None else _data.as_int(self._item("test", idx)[-1])
                items.append(_payload.item_row(
                    idx, lab, pred=None if preds is None else int(preds[p]), prob=None if probs is None else probs[p],
                    image=self._image("test", idx),
                ))  # fmt: skip
            self.test_strip = {"page": page, "n_pages": n_pages, "total": int(len(pos)), "page_size": size,
                               "filtered": filtered, "has_preds": preds is not None, "items": items}  # fmt: skip
        except Exception as e:
            self._fail(e, "test strip")

    # ------------------------------------------------------------------------------------------------------------------
    # galleries
    # ------------------------------------------------------------------------------------------------------------------
    def _on_selected_test(self, change) -> None:
        v = int(change["new"])
        if v >= 0 and self.query != {"source": "test", "index": v}:
            self.query = {"source": "test", "index": v}

    def _on_query(self, change) -> None:
        self._schedule_gallery()

    def _check_query(self, q: dict) -> tuple[str, int]:
        src, idx = q.get("source"), q.get("index")
        if src not in ("test", "train") or not isinstance(idx, int) or isinstance(idx, bool):
            raise ValueError(f"query must be {{'source': 'test' | 'train', 'index': int}}, got {q!r}.")
        n = self._n_train if src == "train" else (len(self._test) if self._test is not None else 0)
        if not 0 <= idx < n:
            raise ValueError(f"query index {idx} is outside the {src} set [0, {n}).")
        return src, idx

    def _schedule_gallery(self) -> Optional[int]:
        q, k = dict(self.query), int(self.k)
        with self._lock:
            self._gallery_gen += 1
            gen = self._gallery_gen
        if not q:
            return None
        self._gallery_worker.submit(lambda: self._compute_gallery(q, k, gen))
        return gen

    def _influence_both(self, batch: tuple, k: int, key: Optional[tuple] = None) -> tuple[_TopK, _TopK]:
        """(indices, scores) of the k proponents (descending) and k opponents (ascending) of one query.

        One ``influence(batch, k=None)`` call (one pass over the training factors) gives both; sources built around
        a neighbour index (``TracInCPFastRandProj``) are asked for their k proponents and opponents instead.
        Score rows are cached by ``key`` (the query), so going back or changing k costs no engine call.
        """

        def arr(x, dtype=None):
            return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=dtype)

        if type(self._source).__name__ != "TracInCPFastRandProj":
            with self._lock:
                scores = self._score_cache.get(key) if key is not None else None
                if scores is not None:
                    self._score_cache.move_to_end(key)
            if scores is None:
                scores = arr(self._call_engine(lambda: self._source.influence(batch, k=None)), np.float64).reshape(-1)
                if len(scores) != self._n_train:
                    raise ValueError(
                        f"the engine's influence() returned {len(scores)} scores but train_dataset has {self._n_train} "
                        "examples: the engine must be built on the same training set."
                    )
                if key is not None:
                    with self._lock:
                        self._score_cache[key] = scores
                        while len(self._score_cache) > _SCORE_CACHE:
                            self._score_cache.popitem(last=False)
            pro = _payload.top_k(scores, k, largest=True)
            opp = _payload.top_k(scores, k, largest=False)
            return (pro, scores[pro]), (opp, scores[opp])
        out = []
        for proponents in (True, False):
            res = self._call_engine(lambda: self._source.influence(batch, k=k, proponents=proponents))
            out.append((arr(res[0]).reshape(-1), arr(res[1], np.float64).reshape(-1)))
        return out[0], out[1]

    def _compute_gallery(self, q: dict, k: int, gen: int) -> bool:
        """Compute the galleries of query ``q``; publish only if no newer request came meanwhile. True if published."""
        with self._lock:
            self._gallery_busy += 1
        try:
            return self._compute_gallery_now(q, k, gen)
        finally:
            with self._lock:
                self._gallery_busy -= 1
                self._settle_cancel()

    def _compute_gallery_now(self, q: dict, k: int, gen: int) -> bool:
        from . import _data

        try:
            if gen != self._gallery_gen:
                return False
            src, idx = self._check_query(q)
            self._fitted.wait()
            if gen != self._gallery_gen:
                return False
            item = self._query_row(src, idx, _payload.DETAIL_SIZE)
            batch = _data.collate_one(self._item(src, idx))
            tops = self._influence_both(batch, min(k, self._n_train), key=(src, idx))
            with self._lock:
                rank, preds = self._rank, self._train_preds
            rows = {}
            for name, (ind, sc), is_pro in (("proponents", tops[0], True), ("opponents", tops[1], False)):
                rows[name] = _payload.topk_rows(ind, sc, self._train_label, query_pred=item["pred"], proponents=is_pro,
                                                image=lambda i: self._image("train", i), rank=rank, preds=preds)  # fmt: skip
            payload = {"query": {"source": src, "index": idx}, "k": k, "request": gen, "item": item, **rows,
                       "error": None}  # fmt: skip
        except Exception as e:
            if gen != self._gallery_gen:
                return False
            if isinstance(e, cancelled_class()):
                again = "select it again to compute" if self.status == "ready" else "press Resume to compute"
                payload = {"query": dict(q), "k": k, "request": gen, "item": None, "proponents": [], "opponents": [],
                           "error": f"Cancelled: {again}."}  # fmt: skip
            else:
                self._fail(e, "gallery")
                payload = {"query": dict(q), "k": k, "request": gen, "item": None, "proponents": [], "opponents": [],
                           "error": f"{type(e).__name__}: {e}"}  # fmt: skip
        with self._lock:
            if gen != self._gallery_gen:  # a newer selection won: never overwrite it with this stale answer
                return False
            self.gallery = payload
        return True

    # ------------------------------------------------------------------------------------------------------------------
    # flags
    # ------------------------------------------------------------------------------------------------------------------
    @t.validate("flagged")
    def _validate_flagged(self, proposal):
        try:
            return _flags.normalise(proposal["value"], self._n_train)
        except ValueError as e:
            raise t.TraitError(f"{e} Flag only indices into train_dataset.") from None

    def _on_flagged(self, change) -> None:
        if change["old"] == change["new"]:
            return
        if not self._undoing:
            with self._lock:
                self._history.append(list(change["old"]))
                del self._history[:-1000]
        with self._lock:
            self._order_cache = {k: v for k, v in self._order_cache.items() if k[3] != "flagged"}
        self._update_stats(flags_only=True)
        if self._flags_path is not None:
            try:
                _flags.write(self._flags_path, list(change["new"]))
            except Exception as e:  # never lose the failure: banner + log
                self._fail(e, "autosave", prefix=f"could not save flags to {self._flags_path}: ")

    # ------------------------------------------------------------------------------------------------------------------
    # stats
    # ------------------------------------------------------------------------------------------------------------------
    def _update_stats(self, flags_only: bool = False) -> None:
        try:
            flags = _payload.flag_metrics(list(self.flagged), self._n_train, self._truth)
            if flags_only and self.stats:
                self.stats = {**self.stats, "flags": flags}
                return
            with self._lock:
                s, has_preds = self._self_infl, self._train_preds is not None
            out: dict = {"flags": flags, "has_preds": has_preds, "ready": s is not None}
            if s is not None:
                out["histogram"] = _payload.histogram(s)
                out["score_min"], out["score_max"] = float(np.min(s)), float(np.max(s))
                if self._truth is not None:
                    out["roc"] = _payload.roc(s, self._truth)
                    out["found"] = _payload.found_vs_inspected(s, self._truth)
            self.stats = out
        except Exception as e:
            self._fail(e, "statistics")

    # ------------------------------------------------------------------------------------------------------------------
    # state updates from the frontend
    # ------------------------------------------------------------------------------------------------------------------
    def set_state(self, sync_data: dict) -> None:
        """Apply a state update from the frontend. An invalid one (a flag outside the training set, ``k = 0``, ...)
        changes nothing (traitlets rolls the whole update back): the page is sent the kernel's values of those keys
        again and the error banner says what was refused; the TraitError still propagates (ipywidgets logs it)."""
        try:
            super().set_state(sync_data)
        except t.TraitError as e:
            keys = [name for name in sync_data if name in self.keys]
            log.warning("InfluenceExplorer refused a state update of %s from the frontend: %s", keys, e)
            self.send_state(keys)  # the page shows what it sent until told otherwise
            self.error = f"The page sent an invalid {', '.join(keys)} (not applied; the previous value is kept): {e}"
            raise

    # ------------------------------------------------------------------------------------------------------------------
    # custom messages (quak pattern: {"kind", "id"} requests answered with the same id)
    # ------------------------------------------------------------------------------------------------------------------
    def _reply(self, content: dict) -> None:
        packed, buffers = _payload.pack_buffers(content)
        self.send(packed, buffers)

    def _on_msg(self, widget, content, buffers) -> None:
        kind = content.get("kind") if isinstance(content, dict) else None
        rid = content.get("id") if isinstance(content, dict) else None
        try:
            if kind == "rows":
                self._reply(self._rows(content))
            elif kind == "detail":
                index = content.get("index")
                if not isinstance(index, int) or isinstance(index, bool):
                    raise ValueError(
                        f"detail request: index must be an int training index in [0, {self._n_train}), got "
                        f"{type(index).__name__} {index!r}: send the example's integer index."
                    )
                if not 0 <= index < self._n_train:
                    raise ValueError(
                        f"detail request: index {index} is outside the training set [0, {self._n_train}): send the "
                        "index of a training example."
                    )
                item = self._query_row("train", index, _payload.DETAIL_SIZE)
                self._reply({"kind": "detail", "id": rid, "item": item})
            elif kind == "cancel":
                run = content.get("run")
                if run is not None and (not isinstance(run, int) or isinstance(run, bool)):
                    raise ValueError(
                        f"cancel request: run must be the int id of progress_info['run'] (or absent), got "
                        f"{type(run).__name__} {run!r}."
                    )
                self._request_cancel(run)
            elif kind == "start":
                self.start()
            elif kind == "undo":
                self.undo()
            else:
                raise ValueError(f"unknown message kind {kind!r}.")
        except Exception as e:
            log.error("InfluenceExplorer message %r failed: %s", kind, e, exc_info=e)
            self._reply({"kind": "error", "id": rid, "request": kind, "message": f"{type(e).__name__}: {e}"})

    def _rows(self, msg: dict) -> dict:
        rid = msg.get("id")
        offset = max(0, int(msg.get("offset", 0)))
        limit = min(500, max(1, int(msg.get("limit", 50))))
        with self._lock:
            scores, rank = self._self_infl, self._rank
            labels, preds, probs = self._train_labels, self._train_preds, self._train_probs
        if scores is None:
            return {"kind": "rows", "id": rid, "pending": True, "total": 0, "offset": offset, "rows": []}
        label = msg.get("label")
        sr = msg.get("score_range")
        key = (msg.get("sort", "rank"), bool(msg.get("descending", False)), None if label is None else int(label),
               msg.get("only", "all"), None if sr is None else tuple(float(v) for v in sr))  # fmt: skip
        order = self._order_cache.get(key)
        if order is None:
            order = _payload.table_order(scores, sort=key[0], descending=key[1], labels=labels, preds=preds,
                                         label=key[2], only=key[3], flagged=self.flagged,
                                         is_mislabelled=self._truth, score_range=key[4])  # fmt: skip
            with self._lock:
                if len(self._order_cache) > 32:
                    self._order_cache.clear()
                self._order_cache[key] = order
        rows = [
            _payload.item_row(i, self._train_label(i), score=scores[i], rank=rank[i],
                              pred=None if preds is None else preds[i], prob=None if probs is None else probs[i],
                              image=self._image("train", i))  # fmt: skip
            for i in order[offset : offset + limit].tolist()
        ]
        return {"kind": "rows", "id": rid, "pending": False, "total": int(len(order)), "offset": offset, "rows": rows}
