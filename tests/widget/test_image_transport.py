"""Notebook hosts that drop binary buffers: once the page asks (``image_transport``), every image travels as base64
text, in custom-message replies and in the traits that hold images, with the same bytes."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tracin_widgets.widget import _codec

from .test_messages import reply


def test_images_go_as_base64_once_the_page_asks(make, data, sent, monkeypatch):
    w = make()
    w.send = sent
    w._handle_custom_msg({"kind": "rows", "id": 1, "offset": 0, "limit": 3}, [])
    binary, buffers = reply(sent, "rows")
    assert len(buffers) == 3 and all("buffer" in r["image"] for r in binary["rows"])

    states: list[list[str]] = []
    monkeypatch.setattr(w, "send_state", lambda keys=None: states.append(list(keys)))
    w._handle_custom_msg({"kind": "image_transport", "transport": "base64"}, [])
    assert w.image_transport == "base64" and states == [["test_strip", "gallery"]]

    w._handle_custom_msg({"kind": "rows", "id": 2, "offset": 0, "limit": 3}, [])
    text, no_buffers = reply(sent, "rows")
    assert no_buffers == [] and [r["index"] for r in text["rows"]] == [r["index"] for r in binary["rows"]]
    for row, buf in zip(text["rows"], buffers, strict=True):
        assert set(row["image"]) == {"b64", "shape"}
        assert base64.b64decode(row["image"]["b64"]) == buf
        np.testing.assert_array_equal(
            _codec.decode_image(row["image"]), np.frombuffer(buf, np.uint8).reshape(row["image"]["shape"])
        )


def test_the_image_traits_follow_the_transport(make):
    w = make()
    strip = dict(w.test_strip)
    assert strip["items"] and "data" in strip["items"][0]["image"]
    to_json = w.trait_metadata("test_strip", "to_json")
    assert to_json(strip, w) is strip  # binary: as it is (ipywidgets extracts the buffers)
    w.image_transport = "base64"
    sent_strip = to_json(strip, w)
    image = sent_strip["items"][0]["image"]
    assert set(image) == {"b64", "shape"} and base64.b64decode(image["b64"]) == strip["items"][0]["image"]["data"]
    assert w.trait_metadata("gallery", "to_json") is to_json


def test_an_unknown_transport_is_an_error_reply(make, sent):
    w = make()
    w.send = sent
    w._handle_custom_msg({"kind": "image_transport", "transport": "carrier pigeon"}, [])
    err, _ = reply(sent, "error")
    assert err["request"] == "image_transport" and "transport must be 'base64'" in err["message"]
    assert w.image_transport == "binary"


@pytest.mark.parametrize("obj", [{"a": [{"data": b"\x01\x02", "shape": [1, 1, 2]}]}, [{"x": 1}], 3])
def test_as_base64_leaves_everything_but_images_alone(obj):
    out = _codec.as_base64(obj)
    if isinstance(obj, dict):
        assert out == {"a": [{"b64": "AQI=", "shape": [1, 1, 2]}]}
    else:
        assert out == obj
