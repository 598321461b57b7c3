"""What the explorer needs from an influence engine, and the wire format of its custom messages.

The JS side mirrors these in ``js/src/protocol.js``.
"""

from __future__ import annotations

from typing import Any, List, Literal, Optional, Protocol, TypedDict, Union, runtime_checkable


@runtime_checkable
class InfluenceSource(Protocol):
    """Anything with Captum's TracIn query methods: the three engines, captum's classes, or a test fake.

    ``influence(inputs, k, proponents)`` gets a batch ``(*features, labels)`` of one example and returns
    ``(indices, scores)`` of shape ``(1, k)`` (proponents descending, opponents ascending);
    ``self_influence()`` returns the ``(n_train,)`` self-influence scores. Optional extras the explorer uses when
    present: ``fit()`` (precompute the training factors) and a writable ``progress_callback`` attribute
    (``(phase, done, total) -> None``; raising ``Cancelled`` aborts).
    """

    def influence(self, inputs: Any, k: Optional[int] = None, proponents: bool = True) -> Any: ...

    def self_influence(self) -> Any: ...


# --- front end -> Python (model.send) ---------------------------------------------------------------------------------
class RowsRequest(TypedDict, total=False):
    kind: Literal["rows"]
    id: Union[int, str]  # echoed back unchanged
    offset: int
    limit: int
    sort: Literal["rank", "score", "index", "label", "pred"]
    descending: bool
    label: Optional[int]
    only: Literal["all", "flagged", "disagree", "mislabelled"]
    score_range: Optional[List[float]]


class DetailRequest(TypedDict):
    kind: Literal["detail"]
    id: Union[int, str]  # echoed back unchanged
    index: int


class ActionRequest(TypedDict, total=False):
    kind: Literal["cancel", "start", "undo"]
    run: int  # cancel only: progress_info["run"] when the button was pressed (a later run is never cancelled)


Request = Union[RowsRequest, DetailRequest, ActionRequest]


# --- Python -> front end (Widget.send) --------------------------------------------------------------------------------
class ImageRef(TypedDict):
    buffer: int  # index into the message's buffers
    shape: List[int]  # [h, w, c], uint8


class RowsReply(TypedDict):
    kind: Literal["rows"]
    id: Union[int, str]  # echoed back unchanged
    pending: bool  # True while self-influence is not computed yet: ask again when status becomes "ready"
    total: int
    offset: int
    rows: List[dict]  # _payload.item_row dicts, image -> ImageRef


class DetailReply(TypedDict):
    kind: Literal["detail"]
    id: Union[int, str]  # echoed back unchanged
    item: dict


class ErrorReply(TypedDict):
    kind: Literal["error"]
    id: Optional[Union[int, str]]
    message: str
