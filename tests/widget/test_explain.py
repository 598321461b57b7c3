"""The label choice (``explain``) and the per-checkpoint breakdown, on the fake engine (messages simulated)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import traitlets

from .conftest import FakeSource


class LabelledSource(FakeSource):
    """influence = <x_t, x_i> * (1 + label_t): the label of the query changes the scores; records the labels."""

    def __init__(self, train_x):
        super().__init__(train_x)
        self.labels: list[int] = []

    def influence(self, inputs, k=None, proponents=True):
        self.labels.append(int(inputs[-1][0]))
        s = torch.as_tensor(self.scores(inputs[0].numpy())) * (1 + int(inputs[-1][0]))
        return s if k is None else super().influence(inputs, k, proponents)


def predicted(data, x):
    with torch.no_grad():
        return data["model"](torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()


def test_explain_defaults_to_the_label_and_prediction_reruns_the_galleries_for_the_prediction(make, data):
    source = LabelledSource(data["x_train"])
    labels = data["test"].tensors[1].numpy()
    preds = predicted(data, data["x_test"])
    i = int(np.flatnonzero(labels != preds)[0])
    w = make(engine=source, k=3)
    assert w.explain == "label"
    w.query = {"source": "test", "index": i}
    w.wait(10)
    g = w.gallery
    assert (g["explain"], g["explained_label"], g["same_label"]) == ("label", labels[i], False)
    assert source.labels[-1] == labels[i]
    w.set_state({"explain": "prediction"})  # the page's label choice
    w.wait(10)
    g = w.gallery
    assert (g["explain"], g["explained_label"], g["same_label"]) == ("prediction", preds[i], False)
    assert source.labels[-1] == preds[i]  # the engine was asked about the prediction
    scores = data["x_test"][i] @ data["x_train"].T * (1 + preds[i])
    np.testing.assert_allclose([r["score"] for r in g["proponents"]], np.sort(scores)[::-1][:3])


def test_when_label_and_prediction_agree_the_galleries_are_computed_once(make, data):
    source = LabelledSource(data["x_train"])
    labels = data["test"].tensors[1].numpy()
    i = int(np.flatnonzero(labels == predicted(data, data["x_test"]))[0])
    w = make(engine=source, k=3)
    w.query = {"source": "test", "index": i}
    w.wait(10)
    calls = len(source.labels)
    w.explain = "prediction"
    w.wait(10)
    assert len(source.labels) == calls  # the cached score row of that label
    assert w.gallery["same_label"] is True and w.gallery["explained_label"] == labels[i]


def test_an_unknown_explain_value_is_refused_from_python_and_from_the_page(make):
    w = make()
    with pytest.raises(traitlets.TraitError, match="explain"):
        w.explain = "truth"
    with pytest.raises(traitlets.TraitError):
        w.set_state({"explain": "truth"})
    assert w.explain == "label" and "explain" in w.error


def test_an_engine_without_a_per_checkpoint_split_says_so(make, sent):
    w = make(k=2)  # the fake engine has no influence_by_checkpoint
    with pytest.raises(NotImplementedError, match=r"FakeSource cannot split its scores by checkpoint"):
        w.checkpoint_contributions(0, 3)
    w.send = sent
    g = w.gallery
    msg = {"kind": "contributions", "id": 4, "query": g["query"], "label": g["explained_label"], "index": 3}
    w._handle_custom_msg(msg, [])
    w.wait(10)
    ((reply, _),) = sent
    assert reply["kind"] == "contributions" and reply["id"] == 4 and reply["checkpoints"] == []
    assert reply["total"] is None and "cannot split its scores by checkpoint" in reply["error"]


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"index": 10**6}, r"query index 1000000 is outside the train set"),
        ({"label": "1"}, r"label must be the int explained_label of the gallery, got '1'"),
        ({"query": {"source": "test"}}, r"query must be \{'source': 'test' \| 'train', 'index': int\}"),
    ],
)
def test_a_bad_contributions_request_gets_an_error_reply(make, sent, bad, match):
    w = make(k=2)
    w.send = sent
    msg = {"kind": "contributions", "id": 9, "query": {"source": "test", "index": 0}, "label": 1, "index": 3, **bad}
    w._handle_custom_msg(msg, [])
    ((reply, _),) = sent
    assert reply["kind"] == "error" and reply["id"] == 9 and reply["request"] == "contributions"
    assert re.search(match, reply["message"]), reply["message"]
