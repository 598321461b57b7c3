"""The custom-message handler, called directly as the frontend's model.send() would (quak-style request ids)."""

from __future__ import annotations

import numpy as np
import pytest

from tracin_widgets.widget import _codec, _stats

from .conftest import N_TRAIN


def reply(sent, kind):
    return [c for c, _ in sent if c.get("kind") == kind][-1], [b for c, b in sent if c.get("kind") == kind][-1]


def test_rows_page_sorted_by_rank_with_thumbnail_buffers(make, data, sent):
    w = make()
    w.send = sent
    w._handle_custom_msg({"kind": "rows", "id": 7, "offset": 10, "limit": 5}, [])
    msg, buffers = reply(sent, "rows")
    s = (data["x_train"] ** 2).sum(1)
    expected = np.argsort(-s, kind="stable")[10:15].tolist()
    assert msg["id"] == 7 and msg["pending"] is False and msg["total"] == N_TRAIN and msg["offset"] == 10
    assert [r["index"] for r in msg["rows"]] == expected
    assert [r["rank"] for r in msg["rows"]] == [11, 12, 13, 14, 15]
    np.testing.assert_allclose([r["score"] for r in msg["rows"]], s[expected])
    labels = data["train"].tensors[1].numpy()
    assert [r["label"] for r in msg["rows"]] == labels[expected].tolist()
    assert [r["image"]["buffer"] for r in msg["rows"]] == [0, 1, 2, 3, 4] and len(buffers) == 5
    img = np.frombuffer(buffers[0], np.uint8).reshape(msg["rows"][0]["image"]["shape"])
    np.testing.assert_array_equal(img, _codec.minmax_image(data["train"][expected[0]][0]))


def test_rows_sort_and_filters(make, data, sent):
    w = make()
    w.send = sent
    labels = data["train"].tensors[1].numpy()
    w._handle_custom_msg(
        {"kind": "rows", "id": 1, "offset": 0, "limit": 100, "sort": "index", "descending": True, "label": 2}, []
    )
    msg, _ = reply(sent, "rows")
    assert [r["index"] for r in msg["rows"]] == [i for i in range(N_TRAIN - 1, -1, -1) if labels[i] == 2]
    w.flagged = [4, 9]
    w._handle_custom_msg({"kind": "rows", "id": 2, "offset": 0, "limit": 100, "only": "flagged", "sort": "index"}, [])
    assert [r["index"] for r in reply(sent, "rows")[0]["rows"]] == [4, 9]
    w.flagged = [4]  # the cached order of the flagged filter is invalidated
    w._handle_custom_msg({"kind": "rows", "id": 3, "offset": 0, "limit": 100, "only": "flagged", "sort": "index"}, [])
    assert [r["index"] for r in reply(sent, "rows")[0]["rows"]] == [4]


def test_rows_are_pending_before_self_influence(make, fake, sent):
    import threading

    fake.gate = threading.Event()
    w = make(wait=False)
    w.send = sent
    assert fake.started.wait(20)
    w._handle_custom_msg({"kind": "rows", "id": 1, "offset": 0, "limit": 50}, [])
    msg, _ = reply(sent, "rows")
    assert msg == {"kind": "rows", "id": 1, "pending": True, "total": 0, "offset": 0, "rows": []}
    fake.gate.set()
    w.wait(20)


def test_detail_reply(make, data, sent):
    w = make(class_names=["x", "y", "z"])
    w.send = sent
    w._handle_custom_msg({"kind": "detail", "id": 3, "index": 12}, [])
    msg, buffers = reply(sent, "detail")
    item = msg["item"]
    assert msg["id"] == 3 and item["index"] == 12 and item["label"] == int(data["train"].tensors[1][12])
    assert item["rank"] == _stats.ranks_from_scores(w.self_influence)[12]
    assert item["score"] == pytest.approx(float((data["x_train"][12] ** 2).sum()))
    assert item["pred"] == int(w._examples.train_preds[12]) and len(buffers) == 1


def test_bad_requests_get_an_error_reply_with_the_request_id(make, sent):
    w = make()
    w.send = sent
    w._handle_custom_msg({"kind": "detail", "id": 4, "index": N_TRAIN}, [])
    msg, _ = reply(sent, "error")
    assert msg["id"] == 4 and msg["request"] == "detail" and "outside the training set" in msg["message"]
    w._handle_custom_msg({"kind": "rows", "id": 5, "sort": "bogus"}, [])
    msg, _ = reply(sent, "error")
    assert msg["id"] == 5 and msg["message"].startswith("ValueError: sort must be one of")
    w._handle_custom_msg({"kind": "launch-missiles", "id": 6}, [])
    assert reply(sent, "error")[0]["message"] == "ValueError: unknown message kind 'launch-missiles'."
