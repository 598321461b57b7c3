"""What the explorer needs from an influence engine, and the wire format of its custom messages.

The TypedDicts below are the one source of truth of the wire format; ``js/src/protocol.js`` documents them for the
JS side and ``tests/widget/test_protocol.py`` checks both sides against them.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, TypedDict, runtime_checkable


@runtime_checkable
class InfluenceSource(Protocol):
    """Anything with Captum's TracIn query methods: the three engines, captum's classes, or a test fake.

    ``influence(inputs, k, proponents)`` gets a batch ``(*features, labels)`` of one example and returns
    ``(indices, scores)`` of shape ``(1, k)`` (proponents descending, opponents ascending);
    ``self_influence()`` returns the ``(n_train,)`` self-influence scores. Optional extras the explorer uses when
    present: ``fit()`` (precompute the training factors) and a writable ``progress_callback`` attribute
    (``(phase, done, total) -> None``; raising ``Cancelled`` aborts).
    """

    def influence(self, inputs: Any, k: int | None = None, proponents: bool = True) -> Any: ...

    def self_influence(self) -> Any: ...


# --- the wire format: the one source of truth ------------------------------------------------------------------------
# ``js/src/protocol.js`` documents the same shapes for the JS side; ``tests/widget/test_protocol.py`` checks every reply
# the controller sends and every request the front end sends (recorded by running the views under node) against these.


# --- front end -> Python (model.send) ---------------------------------------------------------------------------------
class GalleryQuery(TypedDict):
    source: Literal["test", "train"]
    index: int


SortKey = Literal["rank", "score", "index", "label", "pred", "suggested"]
Only = Literal["all", "flagged", "disagree", "mislabelled", "suggested", "relabelled"]


class RowsRequest(TypedDict, total=False):
    kind: Literal["rows"]
    id: int | str  # echoed back unchanged
    offset: int
    limit: int
    sort: SortKey  # "suggested": by suggested label, rows without one last
    descending: bool
    label: int | None
    only: Only  # "suggested": rows with a suggested label; "relabelled": rows in ``relabels``
    score_range: list[float] | None  # [lo, hi]: the histogram brush; the table shows exactly the rows in it


class RowsFilter(TypedDict, total=False):
    """The table's filter, as a ``RowsRequest`` has it."""

    sort: SortKey
    descending: bool
    label: int | None
    only: Only
    score_range: list[float] | None


class BulkFlagRequest(TypedDict):
    """Flag (``flag`` true) or unflag every row the table shows under ``filter``: all its pages (``offset`` and
    ``limit`` None) or one page. ``flagged`` changes as one undo step."""

    kind: Literal["bulk_flag"]
    id: int | str  # echoed back unchanged
    filter: RowsFilter
    offset: int | None
    limit: int | None
    flag: bool


class DetailRequest(TypedDict):
    kind: Literal["detail"]
    id: int | str  # echoed back unchanged
    index: int


class CancelRequest(TypedDict, total=False):
    kind: Literal["cancel"]
    run: int | None  # progress_info["run"] when the button was pressed (a later run is never cancelled)


class ActionRequest(TypedDict):
    kind: Literal["start", "undo"]


class ContributionsRequest(TypedDict):
    """Each checkpoint's term of the influence of training example ``index`` on the query, for ``label``."""

    kind: Literal["contributions"]
    id: int | str  # echoed back unchanged
    query: GalleryQuery  # the example whose galleries are shown
    label: int  # the label explained (the gallery's ``explained_label``)
    index: int  # the training example


class ImageTransportRequest(TypedDict):
    """Sent once when the page received an image without its bytes: send images as base64 text from now on."""

    kind: Literal["image_transport"]
    transport: Literal["base64"]


Request = (
    ImageTransportRequest
    | RowsRequest
    | DetailRequest
    | CancelRequest
    | ActionRequest
    | ContributionsRequest
    | BulkFlagRequest
)
REQUESTS: dict[str, type] = {
    "rows": RowsRequest,
    "bulk_flag": BulkFlagRequest,
    "detail": DetailRequest,
    "contributions": ContributionsRequest,
    "cancel": CancelRequest,
    "start": ActionRequest,
    "undo": ActionRequest,
    "image_transport": ImageTransportRequest,
}
"""The TypedDict of each request ``kind``."""


# --- Python -> front end (Widget.send, and the traits that carry rows) ------------------------------------------------
class ImageRef(TypedDict):
    """An image inside a custom message: its bytes are the message's ``buffer``-th buffer."""

    buffer: int  # index into the message's buffers
    shape: list[int]  # [h, w, c], uint8


class ImageData(TypedDict):
    """An image inside a trait (ipywidgets ships the bytes as a binary buffer)."""

    data: bytes
    shape: list[int]  # [h, w, c], uint8


class ImageB64(TypedDict):
    """An image as base64 text (``InfluenceExplorer.image_transport == "base64"``: hosts that drop binary buffers)."""

    b64: str  # standard padded base64 of the h*w*c uint8 bytes
    shape: list[int]  # [h, w, c]


class Row(TypedDict):
    """One tile / table row (``_codec.item_row``). Keys are stable: the JS reads exactly these."""

    index: int
    label: int | None
    pred: int | None
    prob: float | None
    score: float | None
    rank: int | None  # 1 = highest self-influence
    badge: str | None  # only with a suggestion: what the checkpoints' average prediction says, in words
    suggested: int | None  # the suggested label (argmax of the checkpoints' average prediction; None: none)
    new_label: int | None  # the row's relabel (mirrors the ``relabels`` trait; None: none)
    image: ImageRef | ImageData | ImageB64 | None  # ImageRef in custom messages, ImageData in traits


class Evidence(TypedDict):
    """Why a training row has its suggestion: per checkpoint, in the engine's order."""

    checkpoints: list[str]  # the checkpoints' file names
    given: list[float]  # P_c(given label)
    suggested: list[float] | None  # P_c(suggested label); None without a suggestion
    self_influence: list[float] | None  # lr_c |grad_c|^2, the row's own self-influence per checkpoint (None: the
    # engine cannot split its scores by checkpoint, or it was busy)


class DetailItem(Row):
    """The row of a detail reply: a training row with its evidence (None: not computed yet / no suggestions)."""

    evidence: Evidence | None


class RowsReply(TypedDict):
    kind: Literal["rows"]
    id: int | str  # echoed back unchanged
    pending: bool  # True while self-influence is not computed yet: ask again when status becomes "ready"
    total: int
    offset: int
    rows: list[Row]


class DetailReply(TypedDict):
    kind: Literal["detail"]
    id: int | str  # echoed back unchanged
    item: DetailItem


class BulkFlagReply(TypedDict):
    kind: Literal["bulk_flag"]
    id: int | str  # echoed back unchanged
    count: int  # the rows flagged (or unflagged): every row under the filter, or the page


class ErrorReply(TypedDict):
    kind: Literal["error"]
    id: int | str | None  # the failed request's id (None for actions, which carry none)
    request: str | None  # the failed request's kind: the front end drops errors of superseded requests
    message: str


class CheckpointTerm(TypedDict):
    """One checkpoint's term ``lr_c (g_t . g_i)(a_t . a_i)`` of an influence score."""

    checkpoint: str  # the checkpoint file's name
    lr: float | None  # its learning rate (None when the engine does not say)
    contribution: float


class ContributionsReply(TypedDict):
    kind: Literal["contributions"]
    id: int | str  # echoed back unchanged
    query: GalleryQuery
    label: int
    index: int
    checkpoints: list[CheckpointTerm]  # in the engine's checkpoint order; empty with ``error``
    total: float | None  # their sum: the influence score
    error: str | None  # why there is no breakdown (e.g. the engine cannot split its scores by checkpoint)


Reply = RowsReply | DetailReply | ErrorReply | ContributionsReply | BulkFlagReply
REPLIES: dict[str, type] = {
    "rows": RowsReply,
    "bulk_flag": BulkFlagReply,
    "detail": DetailReply,
    "error": ErrorReply,
    "contributions": ContributionsReply,
}
"""The TypedDict of each reply ``kind``."""


class Gallery(TypedDict):
    """The ``gallery`` trait: the galleries of one query (or why there are none)."""

    query: GalleryQuery | dict[str, Any]  # the request's query as sent, when it was refused
    k: int
    request: int  # the gallery request's generation: a newer one always wins
    item: Row | None
    proponents: list[Row]
    opponents: list[Row]
    error: str | None
    explain: Literal["label", "prediction"]  # the ``explain`` trait this answer was computed for
    explained_label: int | None  # the label whose score the galleries explain (None: not known)
    same_label: bool  # the query's label equals its prediction: both choices give these galleries


class StripPage(TypedDict):
    """The ``test_strip`` trait: one page of test examples."""

    page: int
    n_pages: int
    total: int  # test examples after the filter
    page_size: int
    filtered: bool  # only misclassified ones (once predictions are known)
    has_preds: bool
    items: list[Row]
