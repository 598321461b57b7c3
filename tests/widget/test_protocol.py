"""One wire format, checked from both sides: ``tracin_widgets/widget/_protocols.py`` is its source of truth.

Python side: every custom-message reply the controller sends over a realistic session, and every ``gallery`` and
``test_strip`` value it publishes, has the shape of its TypedDict. JS side: the requests the front end sends (its
views driven under node by ``js/test/protocol_session.mjs``) have the shape of theirs and are answered by a real
explorer without error, and the replies Python really sends, fed back to the views, are rendered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import typing
from pathlib import Path

import pytest

from tracin_widgets.widget import _codec
from tracin_widgets.widget._protocols import (
    REPLIES,
    REQUESTS,
    ErrorReply,
    Gallery,
    RowsReply,
    RowsRequest,
    StripPage,
)

from .conftest import N_TRAIN
from .protocol_check import problems

JS = Path(__file__).resolve().parents[2] / "js"


def replies_of(sent) -> list[dict]:
    return [content for content, _ in sent]


def check_all(values, types_by_kind=None, tp=None) -> list[str]:
    out = []
    for i, v in enumerate(values):
        t = tp if tp is not None else types_by_kind.get(v.get("kind"))
        out += [f"#{i} ({v.get('kind', t.__name__)}): {p}" for p in problems(v, t)] if t else [f"#{i}: no TypedDict"]
    return out


# --- the checker itself ---------------------------------------------------------------------------------------------
def test_checker_reports_missing_unknown_and_mistyped_keys():
    class OldErrorReply(typing.TypedDict):  # the drifted TypedDict: no "request"
        kind: typing.Literal["error"]
        id: int | str | None
        message: str

    sent = {"kind": "error", "id": 4, "request": "detail", "message": "ValueError: ..."}
    assert problems(sent, ErrorReply) == []
    assert problems(sent, OldErrorReply) == ["$: unknown key 'request' (not in OldErrorReply)"]
    assert problems({"kind": "error", "id": 4, "message": "x"}, ErrorReply) == [
        "$: missing key 'request' of ErrorReply"
    ]
    assert problems({**sent, "id": True}, ErrorReply) == [
        "$.id: True is none of int | str | NoneType: $.id: expected int, got bool True; "
        "$.id: expected str, got bool True; $.id: expected None, got True"
    ]
    assert problems({"kind": "rows", "id": 1, "sort": "bogus"}, RowsRequest) == [
        "$.sort: 'bogus' not in ('rank', 'score', 'index', 'label', 'pred', 'suggested')"
    ]
    row = _codec.item_row(1, 2, image={"buffer": 0, "shape": [2, 2, 1]})
    reply = {"kind": "rows", "id": 1, "pending": False, "total": 1, "offset": 0, "rows": [{**row, "rank": "1"}]}
    assert problems(reply, RowsReply) == [
        "$.rows[0].rank: '1' is none of int | NoneType: $.rows[0].rank: expected int, got str '1'; "
        "$.rows[0].rank: expected None, got '1'"
    ]


# --- Python side: what the controller sends --------------------------------------------------------------------------
def test_every_reply_and_gallery_the_controller_sends_has_its_typeddict_shape(make, fake, sent):
    fake.gate = threading.Event()
    w = make(wait=False, class_names=["a", "b", "c"], is_mislabelled=[0, 1] * (N_TRAIN // 2), k=3)
    galleries, strips = [], []
    w.observe(lambda c: galleries.append(c["new"]), names=["gallery"])
    w.observe(lambda c: strips.append(c["new"]), names=["test_strip"])
    w.send = sent
    assert fake.started.wait(20)
    w._handle_custom_msg({"kind": "rows", "id": "v-1", "offset": 0, "limit": 5}, [])  # pending
    w._handle_custom_msg({"kind": "cancel", "run": w.progress_info["run"]}, [])
    fake.gate.set()
    w.wait(20)
    assert w.status == "cancelled"
    w._handle_custom_msg({"kind": "start"}, [])
    w.wait(20)
    w.flagged = [1, 2]
    w._handle_custom_msg({"kind": "undo"}, [])
    requests = [
        {"kind": "rows", "id": 3, "offset": 0, "limit": 10},
        {
            "kind": "rows",
            "id": 4,
            "offset": 5,
            "limit": 5,
            "sort": "score",
            "descending": True,
            "label": 1,
            "only": "mislabelled",
            "score_range": [0.0, 1e9],
        },
        {"kind": "rows", "id": 5, "sort": "pred", "only": "disagree"},
        {"kind": "rows", "id": 51, "sort": "suggested", "only": "suggested"},
        {"kind": "rows", "id": 52, "only": "relabelled"},
        {"kind": "detail", "id": 6, "index": 7},
        {"kind": "bulk_flag", "id": 61, "filter": {"only": "suggested"}, "offset": 0, "limit": 3, "flag": True},
        {"kind": "bulk_flag", "id": 62, "filter": {"sort": "rank"}, "offset": None, "limit": None, "flag": False},
        {"kind": "bulk_flag", "id": 63, "filter": {}, "offset": None, "limit": None, "flag": "yes"},  # errors
        {"kind": "detail", "id": 7, "index": N_TRAIN},  # errors
        {"kind": "detail", "id": 8, "index": "7"},
        {"kind": "rows", "id": 9, "sort": "bogus"},
        {"kind": "cancel", "run": "1"},
        {"kind": "launch-missiles", "id": 10},
    ]
    for msg in requests:
        w._handle_custom_msg(msg, [])
    w.set_state({"query": {"source": "train", "index": 11}})
    w.wait(10)
    w.set_state({"query": {"source": "test", "index": 10**6}})  # an invalid query: a gallery with an error
    with pytest.raises(ValueError, match="outside the test set"):
        w.wait(10)
    w.set_state({"test_page": 1, "misclassified_only": True})

    replies = replies_of(sent)
    kinds = [r["kind"] for r in replies]
    assert kinds.count("rows") == 6 and kinds.count("detail") == 1 and kinds.count("error") == 6
    assert kinds.count("bulk_flag") == 2
    assert any(r["kind"] == "detail" and r["item"]["evidence"] for r in replies)
    assert any(r.get("pending") for r in replies) and any(r["kind"] == "rows" and r["rows"] for r in replies)
    assert check_all(replies, REPLIES) == []
    errors = {r["request"] for r in replies if r["kind"] == "error"}
    assert errors == {"detail", "rows", "cancel", "launch-missiles", "bulk_flag"}
    assert len(galleries) >= 3 and any(g["error"] for g in galleries) and any(g["proponents"] for g in galleries)
    assert check_all(galleries, tp=Gallery) == []
    assert len(strips) >= 2 and any(s["items"] for s in strips)
    assert check_all(strips, tp=StripPage) == []


# --- JS side: what the front end sends, and what it makes of Python's replies ----------------------------------------
def run_session(replies_file: Path | None = None) -> dict:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "happy-dom").is_dir():
        pytest.skip("needs node and js/node_modules (cd js && npm ci)")
    cmd = [node, "test/protocol_session.mjs"] + ([str(replies_file)] if replies_file else [])
    out = subprocess.run(cmd, cwd=JS, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def js_requests() -> list[dict]:
    return run_session()["requests"]


def test_every_request_the_front_end_sends_has_its_typeddict_shape(js_requests):
    assert check_all(js_requests, REQUESTS) == []
    assert {r["kind"] for r in js_requests} == set(REQUESTS)  # the session sends every kind there is
    rows_keys = set().union(*(r.keys() for r in js_requests if r["kind"] == "rows"))
    assert rows_keys == set(typing.get_type_hints(RowsRequest))  # every field the controller reads is sent


def test_the_controller_answers_every_request_of_the_front_end(make, sent, js_requests):
    w = make(is_mislabelled=[0, 1] * (N_TRAIN // 2), class_names=["a", "b", "c"])
    w.send = sent
    for msg in js_requests:
        if msg["kind"] == "detail":
            msg = {**msg, "index": msg["index"] % N_TRAIN}
        w._handle_custom_msg(msg, [])
    replies = replies_of(sent)
    assert [r for r in replies if r["kind"] == "error"] == []
    asked = [r["id"] for r in js_requests if "id" in r]
    assert [r["id"] for r in replies] == asked
    assert check_all(replies, REPLIES) == []


def test_the_front_end_renders_the_replies_python_sends(make, sent, tmp_path):
    w = make(is_mislabelled=[0, 1] * (N_TRAIN // 2), class_names=["a", "b", "c"])
    w.send = sent
    w._handle_custom_msg({"kind": "rows", "id": 1, "offset": 0, "limit": 4, "sort": "score", "descending": True}, [])
    w._handle_custom_msg({"kind": "detail", "id": 2, "index": 17}, [])
    w._handle_custom_msg({"kind": "rows", "id": 3, "sort": "bogus"}, [])
    (rows, rows_buf), (detail, detail_buf), (error, _) = sent
    assert check_all([rows, detail, error], REPLIES) == []
    file = tmp_path / "replies.json"

    def as_json(content: dict, buffers: list) -> dict:
        return {"content": content, "buffers": [list(bytes(b)) for b in buffers]}

    file.write_text(
        json.dumps(
            {
                "info": w.info,
                "rows": as_json(rows, rows_buf),
                "detail": as_json(detail, detail_buf),
                "error": as_json(error, []),
            }
        )
    )
    shown = run_session(file)["rendered"]
    assert shown["table_rows"] == [r["index"] for r in rows["rows"]]
    assert shown["table_page"].endswith(f"of {N_TRAIN} · page 1/{-(-N_TRAIN // 50)}")
    assert shown["details_index"] == 17 and shown["details_label"] == "abc"[detail["item"]["label"]]
    assert f"rank {detail['item']['rank']} of {N_TRAIN}" in shown["details_rank"]
    assert (
        shown["error_text"]
        == error["message"]
        == "ValueError: sort must be one of ('rank', 'score', 'index', 'label', 'pred', 'suggested'), got 'bogus'."
    )
