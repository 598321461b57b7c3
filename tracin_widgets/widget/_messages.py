"""The page's custom messages (quak's pattern: ``{"kind", "id"}`` requests answered with the same id): one table
``{kind: handler}``. ``rows``, ``detail`` (with the row's evidence) and ``bulk_flag`` are answered at once;
``contributions`` (the per-checkpoint breakdown of one score) at once when the engine is free, else on its own worker
thread; ``cancel``, ``start`` and ``undo`` are actions. A request that fails is answered with an ``error`` reply.
``_protocols.py`` has the shapes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _codec, _data, _suggest
from ._engine import EngineAdapter
from ._examples import Examples
from ._galleries import Galleries
from ._pipeline import Pipeline
from ._protocols import (
    BulkFlagReply,
    BulkFlagRequest,
    CancelRequest,
    CheckpointTerm,
    ContributionsReply,
    ContributionsRequest,
    DetailReply,
    DetailRequest,
    ErrorReply,
    Evidence,
    ImageTransportRequest,
    Reply,
    RowsRequest,
)
from ._table import Table
from ._tasks import LatestWorker

if TYPE_CHECKING:
    from ._widget import InfluenceExplorer

log = logging.getLogger("tracin_widgets.widget")


class Messages:
    """The message handlers of one explorer. ``explorer`` is used through its public API only (``flagged``,
    ``relabels``, ``class_names``, ``send``, ``start()``, ``undo()``); the other parts answer the requests."""

    def __init__(
        self,
        explorer: InfluenceExplorer,
        *,
        examples: Examples,
        engine: EngineAdapter,
        table: Table,
        galleries: Galleries,
        pipeline: Pipeline,
    ):
        self.explorer = explorer
        self.examples = examples
        self.engine = engine
        self.table = table
        self.galleries = galleries
        self.pipeline = pipeline
        self.worker = LatestWorker("tracin-breakdown")  # contributions asked while the engine is busy
        self.handlers: dict[str, Callable[[Any], object]] = {
            "rows": self.rows,
            "detail": self.detail,
            "bulk_flag": self.bulk_flag,
            "contributions": self.contributions,
            "cancel": self.cancel,
            "start": lambda msg: self.explorer.start(),
            "undo": lambda msg: self.explorer.undo(),
            "image_transport": self.image_transport,
        }

    def on_msg(self, widget: Any, content: Any, buffers: Any) -> None:
        """The widget's custom-message callback: dispatch by ``kind``; any failure is an ``error`` reply."""
        kind = content.get("kind") if isinstance(content, dict) else None
        try:
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ValueError(f"unknown message kind {kind!r}.")
            handler(content)
        except Exception as e:
            self.reply_error(content, kind, e)

    def reply(self, content: Reply) -> None:
        if self.explorer.image_transport == "base64":
            self.explorer.send(_codec.as_base64(content), [])
            return
        packed, buffers = _codec.pack_buffers(content)
        self.explorer.send(packed, buffers)

    def image_transport(self, msg: ImageTransportRequest) -> None:
        """The page saw an image without its bytes (a host that drops binary buffers): images go as base64 text
        from now on, and the traits that hold images are sent again."""
        if msg.get("transport") != "base64":
            raise ValueError(f"image_transport: transport must be 'base64', got {msg.get('transport')!r}.")
        self.explorer.image_transport = "base64"
        self.explorer.send_state(["test_strip", "gallery"])

    def reply_error(self, content: Any, kind: Any, e: Exception) -> None:
        log.error("InfluenceExplorer message %r failed: %s", kind, e, exc_info=e)
        rid = content.get("id") if isinstance(content, dict) else None
        self.reply(ErrorReply(kind="error", id=rid, request=kind, message=f"{type(e).__name__}: {e}"))

    # --- the table ----------------------------------------------------------------------------------------------------
    def rows(self, msg: RowsRequest) -> None:
        ex = self.explorer
        self.reply(self.table.rows(msg, list(ex.flagged), dict(ex.relabels), list(ex.class_names)))

    def detail(self, msg: DetailRequest) -> None:
        ex = self.explorer
        reply: DetailReply = self.table.detail(msg, self.engine.lock, dict(ex.relabels), list(ex.class_names))
        reply["item"]["evidence"] = self.evidence(reply["item"]["index"])
        self.reply(reply)

    def evidence(self, index: int) -> Evidence | None:
        """Row ``index``'s probabilities of its given and suggested labels at each checkpoint (one forward per
        checkpoint), and its own
        self-influence per checkpoint (``lr_c |grad_c|^2``, from the engine's ``influence_by_checkpoint`` when it
        has one and is free now; else None). None before the suggestions are computed."""
        ex = self.examples
        with ex.lock:
            sugg = ex.suggestions
        if sugg is None:
            return None
        item = ex.item("train", index)
        batch = _data.collate_one(item)
        probs = self.engine.row_probabilities(ex.model, item, ex.device)
        given, suggested = _suggest.evidence(probs, ex.train_label(index), int(sugg.labels[index]))
        own: list[float] | None = None
        if self.pipeline.fitted.is_set() and not self.engine.lock.locked():
            try:
                terms = self.engine.checkpoint_terms(batch, index)
            except NotImplementedError:
                terms = []
            if len(terms) == len(sugg.checkpoints):
                own = [t["contribution"] for t in terms]
        return Evidence(checkpoints=list(sugg.checkpoints), given=given, suggested=suggested, self_influence=own)

    def bulk_flag(self, msg: BulkFlagRequest) -> None:
        """Flag (or unflag) every row the table shows under the request's filter (one page, or all), as one change
        of ``flagged`` (one undo step)."""
        filt, flag = msg.get("filter"), msg.get("flag")
        offset, limit = msg.get("offset"), msg.get("limit")
        if not isinstance(filt, dict):
            raise ValueError(f"bulk_flag request: filter must be a dict of the RowsRequest fields, got {filt!r}.")
        if not isinstance(flag, bool):
            raise ValueError(f"bulk_flag request: flag must be true (flag) or false (unflag), got {flag!r}.")
        for name, v, low in (("offset", offset, 0), ("limit", limit, 1)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise ValueError(f"bulk_flag request: {name} must be an int >= {low} or null (every page), got {v!r}.")
        ex = self.explorer
        flagged = list(ex.flagged)
        order = self.table.order(self.table.key(filt), flagged, list(ex.relabels))
        start = offset or 0
        shown = order[start:] if limit is None else order[start : start + limit]
        rows = {int(i) for i in shown.tolist()}
        ex.flagged = sorted(set(flagged) | rows if flag else set(flagged) - rows)
        rid: Any = msg.get("id")  # echoed back as the page sent it
        self.reply(BulkFlagReply(kind="bulk_flag", id=rid, count=len(rows)))

    # --- cancel -----------------------------------------------------------------------------------------------------
    def cancel(self, msg: CancelRequest) -> None:
        run = msg.get("run")
        if run is not None and (not isinstance(run, int) or isinstance(run, bool)):
            raise ValueError(
                f"cancel request: run must be the int id of progress_info['run'] (or absent), got "
                f"{type(run).__name__} {run!r}."
            )
        self.pipeline.request_cancel(run)

    # --- the per-checkpoint breakdown -------------------------------------------------------------------------------
    def contributions(self, msg: ContributionsRequest) -> None:
        """Answer now when the engine is free; while it is busy (the background run, a gallery) on a worker thread,
        so the kernel keeps handling the page's messages meanwhile (the newest request wins)."""
        self._check_contributions(msg)  # a bad request is answered now, with an error reply
        if self.pipeline.fitted.is_set() and not self.engine.lock.locked():
            self.reply(self._contributions(msg))
            return

        def job() -> None:
            try:
                self.reply(self._contributions(msg))
            except Exception as e:
                self.reply_error(msg, "contributions", e)

        self.worker.submit(job)

    def _check_contributions(self, msg: ContributionsRequest) -> tuple[str, int, int, int]:
        q, label, index = msg.get("query"), msg.get("label"), msg.get("index")
        src, idx = self.galleries.check_query(dict(q) if isinstance(q, dict) else {})
        _, j = self.galleries.check_query({"source": "train", "index": index})
        if not isinstance(label, int) or isinstance(label, bool):
            raise ValueError(
                f"contributions request: label must be the int explained_label of the gallery, got {label!r}."
            )
        return src, idx, j, label

    def _contributions(self, msg: ContributionsRequest) -> ContributionsReply:
        """The breakdown of one (query, training example) pair for the explained ``label``; an engine that cannot
        split its scores answers with ``error`` (the panel says why) rather than an error reply."""
        src, idx, j, label = self._check_contributions(msg)
        self.pipeline.fitted.wait()
        features = self.examples.item(src, idx)
        batch = _data.collate_one((*features[:-1], label))
        rid: Any = msg.get("id")  # echoed back as the page sent it
        reply = ContributionsReply(
            kind="contributions",
            id=rid,
            query={"source": "test" if src == "test" else "train", "index": idx},
            label=label,
            index=j,
            checkpoints=[],
            total=None,
            error=None,
        )
        try:
            terms = self.engine.checkpoint_terms(batch, j)
        except NotImplementedError as e:
            return {**reply, "error": str(e)}
        return {**reply, "checkpoints": terms, "total": float(sum(t["contribution"] for t in terms))}

    def checkpoint_terms(self, source: str, test_index: int, train_index: int, explain: str) -> list[CheckpointTerm]:
        """``InfluenceExplorer.checkpoint_contributions``: the terms for the label ``explain`` names."""
        if explain not in ("label", "prediction"):
            raise ValueError(f"explain must be 'label' or 'prediction', got {explain!r}.")
        src, idx = self.galleries.check_query({"source": source, "index": test_index})
        _, j = self.galleries.check_query({"source": "train", "index": train_index})
        self.pipeline.fitted.wait()
        item = self.examples.query_row(src, idx, _codec.THUMB_SIZE, self.engine.lock)
        batch, _ = self.galleries.explained_batch(src, idx, item, explain)
        return self.engine.checkpoint_terms(batch, j)
