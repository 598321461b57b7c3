"""The explorer's background run: test predictions, the engine's fit (training factors), self-influence, training
predictions and the suggested labels (each checkpoint's predictions averaged), one step after another on a daemon
thread, each with its progress; and the cancel rules it shares with the gallery requests (a cancel names its run, a
late one cancels nothing)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from . import _stats, _suggest
from ._engine import Cancelled, EngineAdapter
from ._examples import Examples
from ._host import Host
from ._table import Table
from ._tasks import Progress
from ._threads import background_threads

# what a step stored, as passed to ``computed``
TEST_PREDICTIONS, SELF_INFLUENCE, TRAIN_PREDICTIONS = "test predictions", "self-influence", "training predictions"
SUGGESTIONS = "suggested labels"
log = logging.getLogger("tracin_widgets.widget")


class Pipeline:
    """The background run of one explorer, and what a Cancel reaches.

    A run computes only what is still missing, so a Resume after a cancel or an error goes on where it stopped.
    ``run`` is the id of the latest run (the page's ``progress_info["run"]``): a Cancel naming an earlier one is
    dropped. A Cancel sets ``cancel`` (checked by the engine and by ``progress``) only while something is in flight:
    the run, or a gallery computation inside :meth:`gallery`; once nothing is, it is cleared again (except after a
    cancelled run: galleries then wait for Resume). ``fitted`` is set once galleries may query the engine.

    The explorer is reached through ``host`` (``_host.Host``), all but ``show`` and ``computed`` called under
    ``lock``; ``computed(what)`` gets one of ``TEST_PREDICTIONS``, ``SELF_INFLUENCE``, ``TRAIN_PREDICTIONS``,
    ``SUGGESTIONS``.
    """

    def __init__(
        self,
        examples: Examples,
        engine: EngineAdapter,
        table: Table,
        *,
        lock: threading.RLock,
        cancel: threading.Event,
        progress: Progress,
        host: Host,
    ):
        self.examples = examples
        self.engine = engine
        self.table = table
        self.lock = lock
        self.cancel = cancel
        self.progress = progress
        self.host = host
        self.run = 0  # id of the latest run; a cancel names it
        self.running = False
        self.fitted = threading.Event()  # set once galleries may query the engine (fitted, or the run ended)
        self.fit_done = False
        self._gallery_busy = 0  # gallery computations in flight
        self._thread: threading.Thread | None = None
        self.threads = background_threads()  # torch threads of the run (the caller's: all cores by default)
        self.train_path = ""  # how the training predictions were computed ("factors: ..." or "predict: ...")
        self.suggest_done = False  # the suggestions were computed, or cannot be (``suggest_note`` says why)
        self.suggest_note = ""
        self._self_influence: np.ndarray | None = None  # asked of the engine with its fit (see _step_fit)

    def start(self) -> bool:
        """Start a run on a new thread, unless one is alive or all is computed (``ready``). True if started."""
        with self.lock:
            if self._thread is not None and self._thread.is_alive() or self.host.status == "ready":
                return False
            self.cancel.clear()
            if not self.fit_done:
                self.fitted.clear()
            self.run += 1
            self.running = True
            self.threads = background_threads()
            self.host.begin(self.run)
            self._thread = threading.Thread(target=self._main, name="tracin-explorer", daemon=True)
            self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run's thread (if any); False on timeout."""
        th = self._thread
        if th is None:
            return True
        th.join(timeout)
        return not th.is_alive()

    # --- cancel ---------------------------------------------------------------------------------------------------
    def request_cancel(self, run: int | None) -> bool:
        """Cancel what is in flight now: the run ``run`` only (the id the page showed in ``progress_info["run"]``),
        or everything when ``run`` is None. A late cancel (its run already over) is dropped, so it never cancels a
        later computation. True if something was cancelled."""
        with self.lock:
            if run is not None:
                target = self.running and run == self.run
            else:
                target = self.running or self._gallery_busy > 0
            if target:
                self.cancel.set()
            return target

    def _settle_cancel(self) -> None:
        """Called (under ``lock``) when a computation ends: once nothing is in flight a cancel has done its job and
        is cleared, except after a cancelled run (galleries then wait for Resume)."""
        if not self.running and self._gallery_busy == 0 and self.host.status != "cancelled":
            self.cancel.clear()

    @contextmanager
    def gallery(self) -> Iterator[None]:
        """Count a gallery computation as in flight (a Cancel reaches it) for the ``with`` block."""
        with self.lock:
            self._gallery_busy += 1
        try:
            yield
        finally:
            with self.lock:
                self._gallery_busy -= 1
                self._settle_cancel()

    # --- the run ----------------------------------------------------------------------------------------------------
    def _main(self) -> None:
        # a new thread starts with torch's global count, which a gallery query may have lowered for its duration
        torch.set_num_threads(self.threads)
        ex = self.examples
        steps: list[tuple[str, Callable[[], None]]] = []
        if len(ex.test_ids) and ex.test_preds is None:
            steps.append(("Predicting test examples", self._step_test_predictions))
        if not self.fit_done:
            steps.append(("Training factors", self._step_fit))
        if ex.self_infl is None:
            steps.append(("Self-influence", self._step_self_influence))
        if ex.train_preds is None:
            steps.append(("Predicting training examples", self._step_train_predictions))
        if not self.suggest_done:
            steps.append(("Suggested labels (each checkpoint's predictions)", self._step_suggestions))
        run, status = self.run, None
        try:
            for i, (name, fn) in enumerate(steps):
                info = {"phase": name, "done": 0, "total": 0, "fraction": 0.0, "eta_s": None}
                self.host.show(progress_info={**info, "step": i + 1, "steps": len(steps), "run": run}, progress=0.0)
                fn()
            status = "ready"
        except Cancelled:
            status = "cancelled"
        except Exception as e:  # surfaced in the widget, the log and wait()
            self.host.fail(e, "background computation")
        finally:
            with self.lock:  # status and the end of the run change together, so a cancel sees one or the other
                self.running = False
                if status is not None:
                    self.host.show(status=status)
                self._settle_cancel()  # a cancel that came after the last step cancels nothing
            self.fitted.set()  # never leave gallery requests waiting (they fail or compute lazily)

    def _predict(self, split: str, ids: list[int] | None, phase: str) -> tuple:
        return self.examples.predict(
            split, ids, lock=self.engine.lock, progress=lambda done, total: self.progress(phase, done, total)
        )

    def _step_test_predictions(self) -> None:
        ex = self.examples
        labels, preds, probs = self._predict("test", ex.test_ids.tolist(), "test predictions")
        with self.lock:
            ex.test_labels, ex.test_preds, ex.test_probs = labels, preds, probs
        self.host.computed(TEST_PREDICTIONS)

    def _step_fit(self) -> None:
        self.engine.fit()
        if self.engine.reads_off_factors() and self.examples.self_infl is None:
            # its self-influence is read off the factors just made (norms, or one product: a query's cost at
            # most): asked now, before the galleries may query, so that it never waits behind a query holding the
            # engine (a streamed store's query reads all of it) and the table's first page comes right away
            self._self_influence = self.engine.self_influence()
        self.fit_done = True
        self.fitted.set()

    def _step_self_influence(self) -> None:
        early, self._self_influence = self._self_influence, None
        scores = self.engine.self_influence() if early is None else early
        rank = _stats.ranks_from_scores(scores)  # sorted before taking the lock: the page's requests do not wait
        with self.lock:  # new scores and no order sorted by the old ones, together
            self.examples.set_self_influence(scores, rank)
            self.table.forget_orders()
        self.host.computed(SELF_INFLUENCE)

    def _step_train_predictions(self) -> None:
        ex = self.examples
        from_factors = self._train_predictions_from_factors()
        if from_factors is not None:
            labels, preds, probs = from_factors
        else:
            labels, preds, probs = self._predict("train", None, "training predictions")
        with self.lock:  # new predictions and no order sorted by the old ones, together
            ex.train_labels, ex.train_preds, ex.train_probs = labels, preds, probs
            self.table.forget_orders()
        self.host.computed(TRAIN_PREDICTIONS)

    def _step_suggestions(self) -> None:
        """Each checkpoint's softmax over the training set, averaged: the suggested labels (classification only)."""
        ex = self.examples
        with self.lock:
            labels, width = ex.train_labels, ex.n_outputs
        problem = "the training labels are not known" if labels is None else None
        if labels is not None and width is not None:
            problem = _suggest.check_labels(labels, width)
        if problem is None and labels is not None:
            each = self.engine.checkpoint_probabilities(
                ex.model,
                ex.train,
                batch_size=ex.batch_size,
                device=ex.device,
                progress=lambda done, total: self.progress("suggested labels", done, total),
            )
            found = _suggest.from_checkpoints(each, labels)
            with self.lock:  # new suggestions and no order sorted or filtered by the old ones, together
                ex.suggestions = found
                self.table.forget_orders()
        self.suggest_done, self.suggest_note = True, problem or ""
        if problem:
            log.info("no suggested labels: %s", problem)
            return
        self.host.computed(SUGGESTIONS)

    def _train_predictions_from_factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The training predictions read off the engine's factors, without a forward pass (a few ms), when that is
        exact (``EngineAdapter.train_predictions``). None otherwise (the caller then runs the model);
        ``train_path`` says which path ran and why."""
        ex = self.examples
        read, why = self.engine.train_predictions(ex.train, ex.model, ex.train_labels, ex.train_label)
        self.train_path = f"{'predict' if read is None else 'factors'}: {why}"
        log.debug("training predictions %s", self.train_path)
        if read is None:
            return None
        ex.note_width(read.width)
        return read.labels, read.preds, read.probs
