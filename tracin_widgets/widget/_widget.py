"""``InfluenceExplorer``: the anywidget controller. The public API and the observers of the traits (declared and
documented in ``_state.ExplorerState``); no HTML and no heavy logic. The engine is used through
``_engine.EngineAdapter``, the examples and their computed arrays live in ``_examples.Examples``, the background run
and the cancel rules in ``_pipeline.Pipeline``, the galleries in ``_galleries.py``, the page's messages in
``_messages.py``, the table, its statistics and the test strip in ``_table.py``, the suggested labels in
``_suggest.py``, the review file, flags file and undo history in ``_review.ReviewStore``, the snapshot in ``_html.py``,
the wire format in ``_protocols.py``. The pipeline and the
galleries reach the explorer through one ``_host.Host``."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import traitlets as t

from . import _flags, _html, _review, _stats
from ._engine import EngineAdapter
from ._examples import Examples
from ._galleries import Galleries
from ._host import ExplorerHost
from ._messages import Messages
from ._pipeline import SELF_INFLUENCE, SUGGESTIONS, TEST_PREDICTIONS, Pipeline
from ._protocols import Gallery, InfluenceSource
from ._state import ExplorerState
from ._table import Table
from ._tasks import Progress
from ._traits import check_arguments, check_view

log = logging.getLogger("tracin_widgets.widget")


class InfluenceExplorer(ExplorerState):
    """Explore TracIn influence in a notebook: proponents/opponents of test predictions, self-influence ranking of the
    training set (likely mislabelled examples first), suggested labels (the checkpoints' average prediction), and
    flags and relabels shared by every view, kept in a review file.

    Builds a ``TracInCPFast`` (final linear layer found by tracing, cross-entropy loss with ``reduction="sum"``)
    unless ``engine=`` gives one. Predictions, the training factors and self-influence are computed in a background
    thread; call :meth:`wait` to block until done.

    Args:
        model: the trained ``torch.nn.Module``, called as ``model(*features)``; it must return logits of shape
            ``(batch, n_classes)``. The predictions shown are its own (never a checkpoint's weights).
        checkpoints: the checkpoint files of the default engine: a list of paths, one file or a folder (see
            ``TracInCPFast``). Required unless ``engine=`` is given.
        train_dataset: the training set: a map-style dataset (``__len__``, ``__getitem__``) of
            ``(*features, label)`` items, labels being class indices. Required.
        test_dataset: the test set, same form (default None: no test tab; a training example chosen in the ranking
            is explained instead).
        checkpoints_load_func: ``f(model, path) -> lr`` for the default engine (default None: ``TracInCPFast``'s
            loader). Not with ``engine=``.
        final_fc_layer: the default engine's last fully-connected layer, as the module or its name (default None:
            found by tracing one training example). Not with ``engine=``.
        loss_fn: the default engine's training loss (default None: ``nn.CrossEntropyLoss(reduction="sum")``).
            Not with ``engine=``.
        engine: the influence engine to explore (default None: a ``TracInCPFast`` built from the arguments
            above): ``TracInCP``, ``TracInCPFast``, ``TracInCPFastRandProj``, Captum's classes, or any object with
            ``influence(inputs, k, proponents)`` and ``self_influence()`` (see ``InfluenceSource``), built on the
            same ``train_dataset``.
        class_names: one name per class, in class-index order (default None: classes shown by index). Refused
            when the count differs from the model's outputs or does not cover every label.
        k: proponents and opponents shown per query, at least 1 (default 10); the ``k`` trait.
        is_mislabelled: the ground truth, when known (default None): a boolean (or 0/1) mask over
            ``train_dataset`` or a collection of its mislabelled indices. Adds the ROC and found-vs-inspected
            charts, the flags' precision and recall, and the ranking's "mislabelled" filter.
        flags_path: a ``.json`` or ``.csv`` file of flagged training indices (default None): read at start
            (restoring the flags; a corrupt file raises ``ValueError`` and is left untouched) and written
            atomically after every change.
        to_image: ``f(x) -> image`` for the thumbnails, ``x`` being an example's first feature; the image is an
            ``HxWxC`` (C in 1, 3, 4) or ``HxW`` array of uint8 or of floats in ``[0, 1]`` (default None: ``x`` itself,
            CHW, HWC or a square vector, min-max scaled per image).
        batch_size: rows per forward pass of the predictions and of the default engine (default 256).
        device: where the predictions and the default engine compute, e.g. ``"cuda"`` (default None: the
            model's device).
        test_indices: the indices into ``test_dataset`` to show, in that order (default None: all). Needs a
            ``test_dataset``.
        cache_dir: a folder where the default engine saves its training factors, keyed by model, checkpoints
            and data, so the next explorer on the same inputs skips the factor pass (default None: memory only).
            Not with ``engine=``.
        view: the first tab: ``"test"`` (the test predictions and their galleries; the default with a test set)
            or ``"ranking"`` (the self-influence ranking; the default without one); the ``view`` trait.
        review_path: the review file (``.json``): flags, relabels and their undo history, restored at start and
            saved after every change (default None: ``<cache_dir>/review-<data fingerprint>.json`` with a
            ``cache_dir``, else ``<user cache dir>/tracin_widgets/reviews/<data fingerprint>.json``, the user cache
            dir being ``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux; ``False``: none). ``flags_path``'s flags win.

    Examples:
        >>> from tracin_widgets import InfluenceExplorer
        >>> explorer = InfluenceExplorer(
        ...     net, ["epoch-1.pt", "epoch-2.pt"], train_set, test_set, class_names=classes, flags_path="flags.json"
        ... )
        >>> explorer  # the last line of a cell shows the widget
        >>> explorer.wait().save_html("review.html")  # once computed: a snapshot to share
        >>> clean = explorer.cleaned_dataset()  # without the flagged examples, with the new labels
    """

    def __init__(
        self,
        model: Any,
        checkpoints: Any = None,
        train_dataset: Any = None,
        test_dataset: Any = None,
        *,
        checkpoints_load_func: Callable | None = None,
        final_fc_layer: Any = None,
        loss_fn: Any = None,
        engine: InfluenceSource | None = None,
        class_names: Sequence[str] | None = None,
        k: int = 10,
        is_mislabelled: Any = None,
        flags_path: Any = None,
        to_image: Callable[[Any], Any] | None = None,
        batch_size: int = 256,
        device: Any = None,
        test_indices: Sequence[int] | None = None,
        cache_dir: Any = None,
        view: str | None = None,
        review_path: Any = None,
        **kwargs: Any,
    ):
        class_names = check_arguments(kwargs, train_dataset, test_dataset, k, class_names, batch_size, to_image)
        self._lock = threading.RLock()  # guards the computed arrays, request generations and the run state
        ex = Examples(
            model,
            train_dataset,
            test_dataset,
            test_indices,
            to_image=to_image,
            batch_size=batch_size,
            device=device,
            lock=self._lock,
        )
        view = check_view(view, len(ex.test_ids))
        if class_names:  # one forward pass, so a wrong count is refused now rather than after the long passes
            ex.check_width()
        self._examples = ex
        self._n_train = ex.n_train
        self._cancel = threading.Event()  # set only while what it cancels is in flight (see Pipeline.request_cancel)
        progress = Progress(self._publish_progress, self._cancel)
        self._engine = EngineAdapter.create(
            engine,
            model=model,
            checkpoints=checkpoints,
            train_dataset=train_dataset,
            checkpoints_load_func=checkpoints_load_func,
            final_fc_layer=final_fc_layer,
            loss_fn=loss_fn,
            cache_dir=cache_dir,
            batch_size=batch_size,
            device=device,
            progress=progress,
            cancel=self._cancel,
        )
        ex.truth = None if is_mislabelled is None else _stats.mislabelled_mask(is_mislabelled, self._n_train)
        # a corrupt file raises here, untouched
        self._review = _review.open_store(flags_path, review_path, ex, self._engine.cache_dir, self._lock)
        self._names_reported = False
        self.last_exception: BaseException | None = None
        self._table = Table(ex)
        host = ExplorerHost(self)
        self._pipeline = Pipeline(
            ex, self._engine, self._table, lock=self._lock, cancel=self._cancel, progress=progress, host=host
        )
        self._galleries = Galleries(
            ex,
            self._engine,
            lock=self._lock,
            fitted=self._pipeline.fitted,
            in_flight=self._pipeline.gallery,
            host=host,
        )
        self._messages = Messages(
            self,
            examples=ex,
            engine=self._engine,
            table=self._table,
            galleries=self._galleries,
            pipeline=self._pipeline,
        )
        if class_names and (problem := ex.class_names_problem(class_names)):
            raise ValueError(problem)

        super().__init__(
            k=k,
            view=view,
            class_names=class_names if class_names is not None else [],
            flagged=self._review.restored.flagged,
            relabels=self._review.restored.relabels,
            info={
                "n_train": self._n_train,
                "n_test": int(len(ex.test_ids)),
                "has_truth": ex.truth is not None,
                "engine": self._engine.name,
                "n_classes": len(class_names) if class_names is not None else None,
                "notes": self._engine.notes(),
            },
        )
        self.on_msg(self._messages.on_msg)
        self.observe(self._on_review, names=["flagged", "relabels"])
        self.observe(self._on_selected_test, names=["selected_test"])
        self.observe(self._on_query, names=["query", "k", "explain"])
        self.observe(self._on_strip_params, names=["test_page", "test_page_size", "misclassified_only"])
        self._update_stats()
        self._refresh_strip()
        if len(ex.test_ids):
            self.selected_test = int(ex.test_ids[0])
        self.start()

    # ------------------------------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------------------------------
    @property
    def source(self) -> InfluenceSource:
        """The influence engine behind the explorer."""
        return self._engine.source

    @property
    def self_influence(self) -> np.ndarray | None:
        """Self-influence of every training example, ``(n_train,)`` float64, or None until computed."""
        with self._lock:
            s = self._examples.self_infl
            return None if s is None else s.copy()

    @property
    def suggested_labels(self) -> np.ndarray | None:
        """Each training example's suggested label, ``(n_train,)`` int64: the argmax of the checkpoints' average
        softmax where it differs from the given label, else ``-1``; None until computed (or without class labels)."""
        with self._lock:
            s = self._examples.suggestions
            return None if s is None else s.labels.copy()

    @property
    def review_path(self) -> Path | None:
        """The review file (flags, relabels and their undo history), or None when ``review_path=False``."""
        return self._review.path

    def start(self) -> InfluenceExplorer:
        """(Re)start the background computation (after a cancel or an error); no-op while it runs."""
        if self._pipeline.start() and self.query and self.gallery.get("error"):
            self._schedule_gallery()
        return self

    def cancel(self) -> None:
        """Abort the background computation (and any gallery computation) in flight at the engine's next progress
        callback (``Cancelled``). With nothing in flight it does nothing: later computations are never cancelled."""
        self._pipeline.request_cancel(None)

    def wait(self, timeout: float | None = None) -> InfluenceExplorer:
        """Block until the background computation and pending gallery requests are done.

        Re-raises (once) the last exception of the background computation or of a gallery request (its text
        stays in ``error``).
        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        if not self._pipeline.join(timeout):
            raise TimeoutError(f"the explorer's background computation is still running after {timeout} s.")
        if not self._galleries.worker.join(timeout):
            raise TimeoutError(f"the gallery request is still running after {timeout} s.")
        if not self._messages.worker.join(timeout):
            raise TimeoutError(f"the per-checkpoint breakdown is still running after {timeout} s.")
        exc, self.last_exception = self.last_exception, None
        if exc is not None:
            raise exc
        return self

    def undo(self) -> None:
        """Undo the last change of ``flagged`` or ``relabels`` (from any view or from Python)."""
        self._review.undo(self._review_state(), self._assign_review)

    def export_flagged(self, path: Any) -> Path:
        """Write one record per flagged or relabelled training example to ``path``, ``.json`` (a list of objects) or
        ``.csv`` (a header row): ``index, given_label, suggested_label, new_label, flagged, self_influence`` (none:
        ``null`` / empty). It reads back as a flags file (``flags_path``: its flagged rows)."""
        _flags.check_suffix(path)
        return _flags.write_records(path, _review.export_records(self._review_state(), self._examples))

    def merge_review(self, path: Any) -> dict[int, tuple[int, int]]:
        """Merge a second reviewer's review file (or flags file) into this review, as one undo step: the union of
        the flags, their relabels where this review has none. Returns the conflicts, ``{index: (ours, theirs)}``
        where both relabelled an example differently (ours kept; a warning names them)."""
        state, conflicts = _review.merged(self._review_state(), path, self._n_train, self._review.fingerprint)
        with self._review.one_step(self._review_state):
            self._assign_review(state)
        if conflicts:
            warnings.warn(_review.conflicts_note(conflicts, path), UserWarning, stacklevel=2)
        return conflicts

    def checkpoint_contributions(
        self, test_index: int, train_index: int, *, source: str = "test", explain: str | None = None
    ) -> list[dict]:
        """Each checkpoint's term ``lr_c (g_t . g_i)(a_t . a_i)`` of the influence of training example
        ``train_index`` on test example ``test_index``: whether that influence comes from early or late training.
        The terms sum to the score the galleries show (the details panel draws them as bars).

        ``source="train"`` takes ``test_index`` from the training set (a walked-to query); ``explain`` (default:
        the ``explain`` trait) says which label's score: ``"label"`` or ``"prediction"``. Returns one dict per
        checkpoint, in the engine's order: ``{"checkpoint": file name, "lr": float | None, "contribution": float}``.
        Raises ValueError for an index outside its set, NotImplementedError for an engine that cannot split its
        scores by checkpoint (it has no ``influence_by_checkpoint``).
        """
        explain = self.explain if explain is None else explain
        return [dict(term) for term in self._messages.checkpoint_terms(source, test_index, train_index, explain)]

    def save_html(self, path: Any, *, top: int = 50) -> Path:
        """Write one self-contained HTML file of this review, to share or archive: the current query with its
        galleries, the ``top`` rows (at most 500) of the self-influence ranking with thumbnails, and the flags.

        The file is a static snapshot (the widget's CSS inlined, images as ``data:`` PNGs, no scripts, no external
        URLs): it opens offline in any browser, without a kernel. Parts not computed yet (galleries, self-influence)
        are named in the file and in a warning: call :meth:`wait` first for a complete snapshot.
        """
        _html.check_top(top)
        _html.check_path(path)
        text, missing = _html.snapshot(self, top)
        out = _html.write(path, text)
        if missing:
            warnings.warn(
                f"save_html: {' and '.join(missing)} not computed yet; {out} says so. Call explorer.wait() before "
                "save_html for a complete snapshot.",
                UserWarning,
                stacklevel=2,
            )
        return out

    def cleaned_dataset(self) -> Any:
        """The training set without the flagged examples and with the new label of each relabelled one: a
        ``torch.utils.data.Subset`` without relabels, else a ``RelabelledSubset`` (same ``dataset`` and ``indices``;
        its items carry the new labels). Examples both flagged and relabelled are dropped."""
        return _review.cleaned(self._examples.train, self._n_train, list(self.flagged), dict(self.relabels))

    def __repr__(self) -> str:
        return _review.summary(dict(self.info), len(self.flagged), len(self.relabels), self.estimated_mislabelled)

    def close(self) -> None:
        cancel = getattr(self, "_cancel", None)  # close() also runs from __del__ of a half-built widget
        if cancel is not None:
            cancel.set()
        super().close()

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
    # what the pipeline and the galleries ask for (through _host.ExplorerHost)
    # ------------------------------------------------------------------------------------------------------------------
    def _begin_run(self, run: int) -> None:
        """A new background run (called under ``_lock`` before its thread starts)."""
        self.last_exception = None
        if self.status in ("error", "cancelled"):
            self.error = ""
        self.progress_info = {**self.progress_info, "run": run}  # before the Cancel button shows
        self.status = "running"

    def _show(self, **traits: Any) -> None:
        """Set ``traits`` in one sync, with the engine's warnings so far (raised on a background thread, they reach
        no cell)."""
        with self.hold_sync():
            for name, value in traits.items():
                setattr(self, name, value)
            notes = self._engine.notes()
            if notes != self.info.get("notes"):
                self.info = {**self.info, "notes": notes}

    def _publish_progress(self, info: dict) -> None:
        with self.hold_sync():
            self.progress_info = {**self.progress_info, **info}
            self.progress = info["fraction"]

    def _fail(self, e: BaseException, where: str, prefix: str = "") -> None:
        self.last_exception = e
        log.error("InfluenceExplorer %s failed: %s: %s", where, type(e).__name__, e, exc_info=e)
        with self.hold_sync():
            self.error = f"{prefix}{type(e).__name__}: {e}"
            if where == "background computation":
                self.status = "error"

    def _on_computed(self, what: str) -> None:
        """Refresh the views once a pipeline step stored new arrays."""
        self._show()  # the engine's notes
        if what != SELF_INFLUENCE:  # predictions: labels beyond the class names, the number of classes
            self._note_classes()
        if what == SUGGESTIONS:
            with self._lock:
                sugg = self._examples.suggestions
            self.set_trait("estimated_mislabelled", None if sugg is None else sugg.count)
        if what == TEST_PREDICTIONS:
            self._refresh_strip()
        else:
            self._update_stats()
            self._rebadge()

    def _rebadge(self) -> None:
        """Redraw the tiles: their predictions, ranks, suggestions, badges and new labels as they are now."""
        with self._lock:
            if self.gallery.get("proponents") or self.gallery.get("opponents"):
                shown = cast(Gallery, self.gallery)  # the trait only ever holds Gallery payloads
                self.gallery = dict(self._galleries.rebadge(shown, list(self.class_names), dict(self.relabels)))

    def _note_classes(self) -> None:
        names = list(self.class_names)
        problem = self._examples.class_names_problem(names) if names else None
        if problem and not self._names_reported:  # e.g. labels beyond the names, seen only once predicted
            self._names_reported = True
            self._fail(ValueError(problem), "class names")
        if self.info.get("n_classes") is None and (n := self._examples.seen_classes()) is not None:
            self.info = {**self.info, "n_classes": n}

    # ------------------------------------------------------------------------------------------------------------------
    # observers and validators
    # ------------------------------------------------------------------------------------------------------------------
    @t.validate("class_names")
    def _validate_class_names(self, proposal: Any) -> list[str]:
        names = proposal["value"]
        if names and (problem := self._examples.class_names_problem(names)):
            raise t.TraitError(problem)
        return names

    @t.validate("flagged")
    def _validate_flagged(self, proposal: Any) -> list[int]:
        try:
            return _flags.normalise(proposal["value"], self._n_train)
        except ValueError as e:
            raise t.TraitError(f"{e} Flag only indices into train_dataset.") from None

    @t.validate("relabels")
    def _validate_relabels(self, proposal: Any) -> dict[int, int]:
        names = len(self.class_names) if self.class_names else None
        try:
            n = self._examples.n_outputs or names
            return _review.normalise_relabels(proposal["value"], self._n_train, n, self._examples.train_label)
        except ValueError as e:
            raise t.TraitError(str(e)) from None

    def _review_state(self) -> _review.State:
        return _review.State(list(self.flagged), dict(self.relabels))

    def _assign_review(self, state: _review.State) -> None:
        with self.hold_sync():
            self.flagged = state.flagged
            self.relabels = state.relabels

    def _on_review(self, change: Any) -> None:
        """``flagged`` or ``relabels`` changed: filters, stats or tiles, the undo history, the files' autosave."""
        if change["old"] == change["new"]:
            return
        self._table.forget_orders(flagged_only=True)
        now = self._review_state()
        try:
            self._review.changed(now._replace(**{change["name"]: change["old"]}), now)
        except Exception as e:  # never lose the failure: banner + log
            self._fail(e, "autosave", prefix=f"could not save flags to {self._review.failed}: ")
        if change["name"] == "flagged":
            self._update_stats(flags_only=True)
        else:
            self._rebadge()

    def _update_stats(self, flags_only: bool = False) -> None:
        try:
            self.stats = self._table.stats(self.flagged, self.stats, flags_only)
        except Exception as e:
            self._fail(e, "statistics")

    def _on_strip_params(self, change: Any) -> None:
        self._refresh_strip()

    def _refresh_strip(self) -> None:
        try:
            self.test_strip = dict(self._table.test_strip(self.test_page, self.test_page_size, self.misclassified_only))
        except Exception as e:
            self._fail(e, "test strip")

    def _on_selected_test(self, change: Any) -> None:
        v = int(change["new"])
        if v >= 0 and self.query != {"source": "test", "index": v}:
            self.query = {"source": "test", "index": v}

    def _on_query(self, change: Any) -> None:
        self._schedule_gallery()

    def _schedule_gallery(self) -> int | None:
        """Ask for the galleries of the current query; returns the request id (None for no query)."""
        q, names = dict(self.query), list(self.class_names)
        return self._galleries.request(q, int(self.k), str(self.explain), names, dict(self.relabels))
