"""``InfluenceExplorer``: the anywidget controller. Traits, observers and the dispatch of the page's custom messages;
no HTML and no heavy logic. The engine is used through ``_engine.EngineAdapter``, the examples and their computed
arrays live in ``_examples.Examples``, the background run and the cancel rules in ``_pipeline.Pipeline``, the galleries
in ``_galleries.py``, the table, its statistics and the test strip in ``_table.py``, the flags file and undo history in
``_flagstore.FlagStore``, the wire format in ``_protocols.py``."""

from __future__ import annotations

import datetime
import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets as t
from torch.utils.data import Subset

from . import _data, _flags, _payload
from ._engine import EngineAdapter
from ._examples import Examples
from ._flagstore import FlagStore
from ._galleries import Galleries
from ._pipeline import SELF_INFLUENCE, TEST_PREDICTIONS, Pipeline
from ._protocols import (
    CancelRequest,
    ContributionsReply,
    ContributionsRequest,
    DetailReply,
    DetailRequest,
    ErrorReply,
    Gallery,
    InfluenceSource,
    Reply,
    RowsReply,
    RowsRequest,
)
from ._table import Table
from ._tasks import LatestWorker, Progress
from ._traits import ClassNames, IndexList, PositiveInt, View, check_arguments, check_view

log = logging.getLogger("tracin_widgets.widget")
MAX_HTML_ROWS = 500  # save_html: most ranking rows and flagged rows (with thumbnails) written to the file

_STATIC = Path(__file__).parent / "static"
_MISSING_BUNDLE = (
    "export default { render({ el }) { const d = document.createElement('div');"
    " d.textContent = 'tracin_widgets: the JS bundle is missing. Run: cd js && npm ci && npm run build';"
    " d.style.cssText = 'padding:8px;border:1px solid #d32f2f;color:#d32f2f'; el.append(d); } };"
)


class InfluenceExplorer(anywidget.AnyWidget):
    """Explore TracIn influence in a notebook: proponents/opponents of test predictions, self-influence ranking of the
    training set (likely mislabelled examples first), and flags shared by every view.

    ``InfluenceExplorer(model, checkpoints, train_dataset, test_dataset=None, *, ...)`` builds a ``TracInCPFast``
    (final linear layer found by tracing, cross-entropy loss with ``reduction="sum"``) unless ``engine=`` gives one
    (any object with ``influence(inputs, k, proponents)`` and ``self_influence()``). Predictions, the training
    factors and self-influence are computed in a background thread; call :meth:`wait` to block until done.
    ``cache_dir=`` saves the default engine's training factors there (keyed by model, checkpoints and data), so
    the next explorer on the same inputs skips the factor pass. ``view=`` picks the first tab: ``"test"`` (the test
    predictions, the default with a test set) or ``"ranking"`` (the self-influence ranking, the default without one;
    a training example chosen there is explained by the first tab's galleries).
    """

    _esm = _STATIC / "widget.js" if (_STATIC / "widget.js").exists() else _MISSING_BUNDLE
    _css = _STATIC / "widget.css" if (_STATIC / "widget.css").exists() else ""

    # --- shared state (both sides write) ----------------------------------------------------------------------------
    flagged = IndexList(t.Int()).tag(sync=True)
    """
    Flagged training indices: the user's output, shared by the galleries, the table and ``flags_path``.

    - Type: list of int (sorted, unique, each in ``[0, n_train)``); numpy / torch integers are accepted.
    - Default: ``[]``, or the indices read from ``flags_path``.
    - Written by: both sides (the flag buttons, ``undo()``, Python).
    """
    k = PositiveInt(10).tag(sync=True)
    """
    Number of proponents and of opponents shown in the galleries.

    - Type: int, at least 1.
    - Default: ``10``.
    - Written by: both sides.
    """
    selected_test = t.Int(-1).tag(sync=True)
    """
    Dataset index of the selected test example; selecting one makes it the galleries' ``query``.

    - Type: int (``-1``: none).
    - Default: the first of ``test_indices``, or ``-1`` without a test set.
    - Written by: both sides.
    """
    query = t.Dict().tag(sync=True)
    """
    What the galleries explain.

    - Type: ``{"source": "test" | "train", "index": int}``, or ``{}`` for nothing.
    - Default: the selected test example.
    - Written by: both sides (walking to a training example makes it the query).
    """
    explain = t.Enum(("label", "prediction"), "label").tag(sync=True)
    """
    Which label's score the galleries explain: proponents raised it, opponents lowered it.

    - Type: ``"label"`` (the query's own label, as in the tutorial: which training examples support the truth) |
      ``"prediction"`` (the model's prediction for it: which pushed the model toward its answer, right or wrong).
    - Default: ``"label"``. When the two agree the galleries are the same (computed once; the page says so).
    - Written by: both sides (the page's label choice).
    """
    test_page = t.Int(0).tag(sync=True)
    """
    Page of the test strip shown.

    - Type: int (clamped to the pages there are).
    - Default: ``0``.
    - Written by: both sides.
    """
    test_page_size = t.Int(24).tag(sync=True)
    """
    Test examples per page of the test strip.

    - Type: int (at least 1 is used).
    - Default: ``24``; the page sets it to the number of whole tiles that fit its width (and moves ``test_page`` so
      that the selected test example stays shown).
    - Written by: both sides.
    """
    misclassified_only = t.Bool(False).tag(sync=True)
    """
    Test strip filter: only test examples whose prediction differs from their label (once predicted).

    - Type: bool.
    - Default: ``False``.
    - Written by: both sides.
    """
    view = View("test").tag(sync=True)
    """
    The tab shown: ``"test"`` (test predictions and the galleries) or ``"ranking"`` (the self-influence ranking).
    Without a test set the ``"test"`` tab explains a training example chosen from the ranking.

    - Type: ``"test"`` | ``"ranking"``.
    - Default: the constructor's ``view=``: ``"test"`` with a test set, else ``"ranking"``.
    - Written by: both sides (the tabs write it).
    """
    error = t.Unicode("").tag(sync=True)
    """
    Last error (engine, data, flags file, refused update), shown as a banner.

    - Type: str (``""``: none).
    - Default: ``""``.
    - Written by: Python; the page clears it when the banner is dismissed.
    """

    # --- Python -> JS ---------------------------------------------------------------------------------------------
    class_names = ClassNames(t.Unicode()).tag(sync=True)
    """
    Name of each class, in class-index order; refused when the count differs from the model's outputs or does not
    cover every label.

    - Type: list of str.
    - Default: ``[]`` (classes are shown by index).
    - Written by: Python.
    """
    status = t.Unicode("idle").tag(sync=True)
    """
    State of the background computation.

    - Type: ``"idle"`` | ``"running"`` | ``"ready"`` | ``"cancelled"`` | ``"error"``.
    - Default: ``"idle"`` (``"running"`` as soon as the explorer is built).
    - Written by: Python.
    """
    progress = t.Float(0.0).tag(sync=True)
    """
    Fraction done of the current background phase.

    - Type: float in ``[0, 1]``.
    - Default: ``0.0``.
    - Written by: Python.
    """
    progress_info = t.Dict().tag(sync=True)
    """
    Progress of the background computation; ``run`` names it, so a Cancel never cancels a later one.

    - Type: ``{"phase", "done", "total", "fraction", "eta_s", "step", "steps", "run"}``.
    - Default: ``{}``.
    - Written by: Python.
    """
    info = t.Dict().tag(sync=True)
    """
    What the explorer works on.

    - Type: ``{"n_train", "n_test", "has_truth", "engine", "n_classes", "notes"}`` (``n_classes`` None until
      known; ``notes`` the engine's ``TracInWarning`` messages so far, e.g. scores that are not exact last-layer
      gradients, a cache that cannot be written, factors in host memory: shown above the views).
    - Written by: Python.
    """
    test_strip = t.Dict().tag(sync=True)
    """
    The current page of test examples.

    - Type: ``{"page", "n_pages", "total", "page_size", "filtered", "has_preds", "items"}``, items being rows
      (``_protocols.Row``).
    - Written by: Python.
    """
    gallery = t.Dict().tag(sync=True)
    """
    The last computed galleries (or why there are none).

    - Type: ``_protocols.Gallery``: ``{"query", "k", "request", "item", "proponents", "opponents", "error"}``.
    - Default: ``{}``.
    - Written by: Python.
    """
    stats = t.Dict().tag(sync=True)
    """
    Self-influence summary for the table's charts.

    - Type: ``{"ready", "has_preds", "flags", "histogram", "score_min", "score_max", "roc", "found"}`` (the
      score keys once self-influence is known, ``roc`` and ``found`` with ``is_mislabelled``).
    - Written by: Python.
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
        ex.truth = None if is_mislabelled is None else _payload.mislabelled_mask(is_mislabelled, self._n_train)
        self._flag_store = FlagStore(flags_path, self._n_train, self._lock)  # a corrupt file raises here, untouched
        self._names_reported = False
        self.last_exception: BaseException | None = None
        self._table = Table(ex)
        self._pipeline = Pipeline(
            ex,
            self._engine,
            self._table,
            lock=self._lock,
            cancel=self._cancel,
            progress=progress,
            status=lambda: self.status,
            begin=self._begin_run,
            show=self._show,
            fail=self._fail,
            computed=self._on_computed,
        )
        self._breakdown_worker = LatestWorker("tracin-breakdown")  # contributions asked while the engine is busy
        self._galleries = Galleries(
            ex,
            self._engine,
            lock=self._lock,
            fitted=self._pipeline.fitted,
            publish=self._publish_gallery,
            fail=self._fail,
            status=lambda: self.status,
            class_name=self._class_name,
        )
        if class_names and (problem := ex.class_names_problem(class_names)):
            raise ValueError(problem)

        super().__init__(
            k=k,
            view=view,
            class_names=class_names if class_names is not None else [],
            flagged=self._flag_store.restored,
            info={
                "n_train": self._n_train,
                "n_test": int(len(ex.test_ids)),
                "has_truth": ex.truth is not None,
                "engine": self._engine.name,
                "n_classes": len(class_names) if class_names is not None else None,
                "notes": self._engine_notes(),
            },
        )
        self.on_msg(self._on_msg)
        self.observe(self._on_flagged, names=["flagged"])
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
        if not self._breakdown_worker.join(timeout):
            raise TimeoutError(f"the per-checkpoint breakdown is still running after {timeout} s.")
        exc, self.last_exception = self.last_exception, None
        if exc is not None:
            raise exc
        return self

    def undo(self) -> None:
        """Undo the last change of ``flagged`` (from any view or from Python)."""
        self._flag_store.undo(lambda prev: setattr(self, "flagged", prev))

    def export_flagged(self, path: Any) -> Path:
        """Write the flagged indices to ``path``: ``.json`` (a list) or ``.csv`` (an ``index`` column)."""
        return _flags.write(path, list(self.flagged))

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
        if explain not in ("label", "prediction"):
            raise ValueError(f"explain must be 'label' or 'prediction', got {explain!r}.")
        src, idx = self._galleries.check_query({"source": source, "index": test_index})
        _, j = self._galleries.check_query({"source": "train", "index": train_index})
        self._pipeline.fitted.wait()
        item = self._examples.query_row(src, idx, _payload.THUMB_SIZE, self._engine.lock)
        batch, _ = self._galleries.explained_batch(src, idx, item, explain)
        return [dict(term) for term in self._engine.checkpoint_terms(batch, j)]

    def save_html(self, path: Any, *, top: int = 50) -> Path:
        """Write one self-contained HTML file of this review, to share or archive: the current query with its
        galleries, the ``top`` rows (at most 500) of the self-influence ranking with thumbnails, and the flags.

        The file is a static snapshot (the widget's CSS inlined, images as ``data:`` PNGs, no scripts, no external
        URLs): it opens offline in any browser, without a kernel. Parts not computed yet (galleries, self-influence)
        are named in the file and in a warning: call :meth:`wait` first for a complete snapshot.
        """
        from . import _html

        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_HTML_ROWS:
            raise ValueError(
                f"top must be an int in [0, {MAX_HTML_ROWS}] (rows of the self-influence ranking to include), "
                f"got {top!r}."
            )
        _html.check_path(path)
        flagged, q, g = list(self.flagged), dict(self.query), dict(self.gallery)
        missing: list[str] = []
        gallery, why = None, "No example was selected when this file was saved."
        if q:
            what = f"{'test' if q.get('source') == 'test' else 'training'} #{q.get('index')}"
            if g.get("query") == q and g.get("k") == self.k and not g.get("error"):
                gallery = g
            else:
                error = f" ({g['error']})" if g.get("query") == q and g.get("error") else ""
                why = f"The galleries of {what} were not computed when this file was saved{error}."
                missing.append(f"the galleries of {what}")
        top_rows: list | None = []
        if top:
            reply = self._table.rows({"sort": "rank", "offset": 0, "limit": top}, flagged)
            top_rows = None if reply["pending"] else reply["rows"]
        ex = self._examples
        with self._lock:
            scores, rank, preds = ex.self_infl, ex.rank, ex.train_preds
        if scores is None:
            missing.append("self-influence (the ranking)")
        flagged_rows = [
            _payload.item_row(
                i,
                ex.train_label(i),
                score=None if scores is None else scores[i],
                rank=None if rank is None else rank[i],
                pred=None if preds is None else preds[i],
                image=ex.image("train", i),
            )
            for i in flagged[:MAX_HTML_ROWS]
        ]
        text = _html.render(
            info=dict(self.info),
            class_names=list(self.class_names),
            gallery=gallery,
            gallery_missing=why,
            top_rows=top_rows,
            flagged=flagged,
            flagged_rows=flagged_rows,
            flag_metrics=dict(self.stats.get("flags") or {}),
            auc=(self.stats.get("roc") or {}).get("auc"),
            saved_at=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        )
        out = _html.write(path, text)
        if missing:
            warnings.warn(
                f"save_html: {' and '.join(missing)} not computed yet; {out} says so. Call explorer.wait() before "
                "save_html for a complete snapshot.",
                UserWarning,
                stacklevel=2,
            )
        return out

    def cleaned_dataset(self) -> Subset:
        """The training set without the flagged examples, as a ``torch.utils.data.Subset``."""
        keep = np.ones(self._n_train, dtype=bool)
        keep[np.asarray(self.flagged, dtype=np.int64)] = False  # a mask, not a Python loop over the training set
        return Subset(self._examples.train, np.flatnonzero(keep).tolist())

    def close(self) -> None:
        cancel = getattr(self, "_cancel", None)  # close() also runs from __del__ of a half-built widget
        if cancel is not None:
            cancel.set()
        super().close()

    # the computed arrays, read by tests and debugging sessions
    @property
    def _train_preds(self) -> np.ndarray | None:
        return self._examples.train_preds

    @property
    def _train_probs(self) -> np.ndarray | None:
        return self._examples.train_probs

    @property
    def _test_preds(self) -> np.ndarray | None:
        return self._examples.test_preds

    @property
    def _test_probs(self) -> np.ndarray | None:
        return self._examples.test_probs

    # ------------------------------------------------------------------------------------------------------------------
    # background run (computed by _pipeline.Pipeline on its thread)
    # ------------------------------------------------------------------------------------------------------------------
    def _begin_run(self, run: int) -> None:
        """A new background run (called under ``_lock`` before its thread starts)."""
        self.last_exception = None
        if self.status in ("error", "cancelled"):
            self.error = ""
        self.progress_info = {**self.progress_info, "run": run}  # before the Cancel button shows
        self.status = "running"

    def _show(self, **traits: Any) -> None:
        with self.hold_sync():
            for name, value in traits.items():
                setattr(self, name, value)
            self._sync_notes()

    def _engine_notes(self) -> list[str]:
        return [str(n) for n in getattr(self._engine.source, "notes", None) or []]

    def _sync_notes(self) -> None:
        """Show the engine's warnings so far (raised on the background thread, they reach no cell)."""
        notes = self._engine_notes()
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
        self._sync_notes()
        if what != SELF_INFLUENCE:  # predictions: labels beyond the class names, the number of classes
            self._note_classes()
        if what == TEST_PREDICTIONS:
            self._refresh_strip()
        else:
            self._update_stats()
            with self._lock:  # the badges need the training predictions and ranks: redraw the tiles
                if self.gallery.get("proponents") or self.gallery.get("opponents"):
                    self.gallery = self._galleries.rebadge(self.gallery)

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
    def _validate_class_names(self, proposal):
        names = proposal["value"]
        if names and (problem := self._examples.class_names_problem(names)):
            raise t.TraitError(problem)
        return names

    @t.validate("flagged")
    def _validate_flagged(self, proposal):
        try:
            return _flags.normalise(proposal["value"], self._n_train)
        except ValueError as e:
            raise t.TraitError(f"{e} Flag only indices into train_dataset.") from None

    def _on_flagged(self, change) -> None:
        if change["old"] == change["new"]:
            return
        self._table.forget_orders(flagged_only=True)
        self._update_stats(flags_only=True)
        try:  # the undo history and the autosave to flags_path
            self._flag_store.changed(change["old"], change["new"])
        except Exception as e:  # never lose the failure: banner + log
            self._fail(e, "autosave", prefix=f"could not save flags to {self._flag_store.path}: ")

    def _update_stats(self, flags_only: bool = False) -> None:
        try:
            self.stats = self._table.stats(self.flagged, self.stats, flags_only)
        except Exception as e:
            self._fail(e, "statistics")

    def _on_strip_params(self, change) -> None:
        self._refresh_strip()

    def _refresh_strip(self) -> None:
        try:
            self.test_strip = self._table.test_strip(self.test_page, self.test_page_size, self.misclassified_only)
        except Exception as e:
            self._fail(e, "test strip")

    def _on_selected_test(self, change) -> None:
        v = int(change["new"])
        if v >= 0 and self.query != {"source": "test", "index": v}:
            self.query = {"source": "test", "index": v}

    def _on_query(self, change) -> None:
        self._schedule_gallery()

    def _class_name(self, c: int) -> str:
        """Class ``c`` in words: ``8 (cat)`` with class names (just ``8`` when its name is ``"8"``)."""
        names = list(self.class_names)
        name = names[c] if 0 <= c < len(names) else None
        return f"{c} ({name})" if name is not None and name != str(c) else str(c)

    # ------------------------------------------------------------------------------------------------------------------
    # galleries (computed by _galleries.Galleries on its worker thread)
    # ------------------------------------------------------------------------------------------------------------------
    @property
    def _gallery_gen(self) -> int:
        """Id of the newest gallery request (benchmarks/bench_widget.py bumps it to time one request)."""
        return self._galleries.generation

    @_gallery_gen.setter
    def _gallery_gen(self, value: int) -> None:
        self._galleries.generation = value

    def _schedule_gallery(self) -> int | None:
        """Ask for the galleries of the current query; returns the request id (None for no query)."""
        q, k, explain = dict(self.query), int(self.k), str(self.explain)
        gen = self._galleries.new_request()
        if not q:
            return None
        self._galleries.worker.submit(lambda: self._compute_gallery(q, k, gen, explain))
        return gen

    def _compute_gallery(self, q: dict, k: int, gen: int, explain: str = "label") -> bool:
        """Compute the galleries of query ``q``; publish only if no newer request came meanwhile. True if published."""
        with self._pipeline.gallery():  # in flight: a Cancel reaches it
            return self._galleries.compute(q, k, gen, explain)

    def _publish_gallery(self, payload: Gallery) -> None:
        # badged against the arrays as they are now, under the lock the pipeline's redraw takes: a gallery computed
        # before the training predictions or self-influence arrived never keeps its stale badges
        with self._lock:
            if payload.get("proponents") or payload.get("opponents"):
                payload = self._galleries.rebadge(payload)
            with self.hold_sync():
                self.gallery = payload
                self._sync_notes()  # a query's own warnings (e.g. an index that could not be saved)

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
    # custom messages (quak pattern: {"kind", "id"} requests answered with the same id; _protocols.py has the shapes)
    # ------------------------------------------------------------------------------------------------------------------
    def _reply(self, content: Reply) -> None:
        packed, buffers = _payload.pack_buffers(content)
        self.send(packed, buffers)

    def _on_msg(self, widget, content, buffers) -> None:
        kind = content.get("kind") if isinstance(content, dict) else None
        rid = content.get("id") if isinstance(content, dict) else None
        try:
            if kind == "rows":
                self._reply(self._rows(content))
            elif kind == "detail":
                self._reply(self._detail(content))
            elif kind == "contributions":
                self._on_contributions(content)
            elif kind == "cancel":
                self._on_cancel(content)
            elif kind == "start":
                self.start()
            elif kind == "undo":
                self.undo()
            else:
                raise ValueError(f"unknown message kind {kind!r}.")
        except Exception as e:
            log.error("InfluenceExplorer message %r failed: %s", kind, e, exc_info=e)
            self._reply(ErrorReply(kind="error", id=rid, request=kind, message=f"{type(e).__name__}: {e}"))

    def _rows(self, msg: RowsRequest) -> RowsReply:
        return self._table.rows(msg, self.flagged)

    def _detail(self, msg: DetailRequest) -> DetailReply:
        return self._table.detail(msg, self._engine.lock)

    def _on_contributions(self, msg: ContributionsRequest) -> None:
        """Answer now when the engine is free; while it is busy (the background run, a gallery) on a worker thread,
        so the kernel keeps handling the page's messages meanwhile (the newest request wins)."""
        self._check_contributions(msg)  # a bad request is answered now, with an error reply
        if self._pipeline.fitted.is_set() and not self._engine.lock.locked():
            self._reply(self._contributions(msg))
            return

        def job() -> None:
            try:
                self._reply(self._contributions(msg))
            except Exception as e:
                log.error("InfluenceExplorer message 'contributions' failed: %s", e, exc_info=e)
                self._reply(
                    ErrorReply(
                        kind="error", id=msg.get("id"), request="contributions", message=f"{type(e).__name__}: {e}"
                    )
                )

        self._breakdown_worker.submit(job)

    def _check_contributions(self, msg: ContributionsRequest) -> tuple[str, int, int, int]:
        q, label, index = msg.get("query"), msg.get("label"), msg.get("index")
        src, idx = self._galleries.check_query(q if isinstance(q, dict) else {})
        _, j = self._galleries.check_query({"source": "train", "index": index})
        if not isinstance(label, int) or isinstance(label, bool):
            raise ValueError(
                f"contributions request: label must be the int explained_label of the gallery, got {label!r}."
            )
        return src, idx, j, label

    def _contributions(self, msg: ContributionsRequest) -> ContributionsReply:
        """The breakdown of one (query, training example) pair for the explained ``label``; an engine that cannot
        split its scores answers with ``error`` (the panel says why) rather than an error reply."""
        src, idx, j, label = self._check_contributions(msg)
        self._pipeline.fitted.wait()
        features = self._examples.item(src, idx)
        batch = _data.collate_one((*features[:-1], label))
        reply = ContributionsReply(
            kind="contributions",
            id=msg.get("id"),
            query={"source": src, "index": idx},
            label=label,
            index=j,
            checkpoints=[],
            total=None,
            error=None,
        )
        try:
            terms = self._engine.checkpoint_terms(batch, j)
        except NotImplementedError as e:
            return {**reply, "error": str(e)}
        return {**reply, "checkpoints": terms, "total": float(sum(t["contribution"] for t in terms))}

    def _on_cancel(self, msg: CancelRequest) -> None:
        run = msg.get("run")
        if run is not None and (not isinstance(run, int) or isinstance(run, bool)):
            raise ValueError(
                f"cancel request: run must be the int id of progress_info['run'] (or absent), got "
                f"{type(run).__name__} {run!r}."
            )
        self._pipeline.request_cancel(run)
