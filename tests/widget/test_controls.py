"""Explorer controls refuse bad values with a visible error and keep the previous state: class_names, k, detail
requests, late cancels, and invalid state updates from the page (simulated as the comm messages it sends)."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import torch
import traitlets
from torch.utils.data import TensorDataset

from tracin_widgets.widget import InfluenceExplorer
from tracin_widgets.widget._pipeline import SUGGESTIONS

from .conftest import N_TEST, N_TRAIN


def update_msg(state: dict) -> dict:
    """The comm message the frontend sends for model.save_changes()."""
    return {"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []}


def record_state(w) -> list:
    sent: list = []
    w._send = lambda msg, buffers=None: sent.append(msg)
    return sent


def updates(sent: list) -> list[dict]:
    return [m["state"] for m in sent if m.get("method") == "update"]


# --- class_names ------------------------------------------------------------------------------------------------
def test_class_names_as_one_string_is_refused(data, fake, make):
    with pytest.raises(
        TypeError,
        match=r"class_names must be a list with one name per class, got the single string "
        r"'cat': pass a list, e\.g\. \['cat', 'dog'\]",
    ):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, class_names="cat")
    w = make(class_names=["a", "b", "c"])
    with pytest.raises(traitlets.TraitError, match="got the single string 'abc'"):
        w.class_names = "abc"
    assert w.class_names == ["a", "b", "c"]


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c", "d"]])
def test_class_names_count_must_match_what_the_model_outputs(data, fake, names):
    with pytest.raises(
        ValueError,
        match=rf"class_names has {len(names)} names but the model outputs 3 classes: pass "
        r"one name per class, in class-index order",
    ):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, class_names=names)


def test_class_names_set_later_are_checked_against_the_model(make):
    w = make()  # no names given: the model's width is learnt from the predictions
    with pytest.raises(traitlets.TraitError, match="class_names has 1 name but the model outputs 3 classes"):
        w.class_names = ["only"]
    assert w.class_names == []
    w.class_names = ("x", "y", "z")
    assert w.class_names == ["x", "y", "z"]


def test_class_names_must_cover_the_labels(data, fake):
    bad_train = TensorDataset(data["train"].tensors[0], torch.arange(N_TRAIN) % 5)  # labels 0..4, 3 logits
    with pytest.raises(
        ValueError,
        match=r"class_names has 3 names but the labels go up to 4: pass one name per "
        r"class \(at least 5\)",
    ):
        InfluenceExplorer(data["model"], None, bad_train, engine=fake, class_names=["a", "b", "c"])
    # labels known only once predicted (the test set's): a visible error, and wait() raises it
    bad_test = TensorDataset(data["test"].tensors[0], torch.full((N_TEST,), 4))
    w = InfluenceExplorer(data["model"], None, data["train"], bad_test, engine=fake, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="the labels go up to 4"):
        w.wait(30)
    assert "class_names has 3 names but the labels go up to 4" in w.error


# --- k ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_k_from_python_must_be_a_positive_int(make, bad):
    w = make(k=3)
    gallery = w.gallery
    with pytest.raises(
        traitlets.TraitError,
        match=r"k must be a positive int, got \w+ .*: set k to the number of "
        r"proponents and of opponents to show \(1 or more\)",
    ):
        w.k = bad
    w.wait(10)
    assert w.k == 3 and w.gallery == gallery
    w.k = np.int64(4)  # numpy integers are fine
    w.wait(10)
    assert w.k == 4 and len(w.gallery["proponents"]) == 4


def test_k_from_the_frontend_is_refused_and_the_page_resynced(make):
    w = make(k=3)
    sent = record_state(w)
    w._handle_msg(update_msg({"k": -1, "selected_test": 5}))  # one update: applied entirely or not at all
    w.wait(10)
    assert w.k == 3 and w.selected_test == 0 and w.gallery["query"] == {"source": "test", "index": 0}
    assert {"k": 3, "selected_test": 0} in updates(sent)  # the page is told the kernel's values again
    assert w.error.startswith(
        "The page sent an invalid k, selected_test (not applied; the previous value is kept): "
        "k must be a positive int, got int -1"
    )
    assert {"error": w.error} in updates(sent)


# --- detail requests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", [1.5, True, "1", None])
def test_detail_request_index_must_be_an_int(make, sent, index):
    w = make()
    w.send = sent
    w._handle_custom_msg({"kind": "detail", "id": 9, "index": index}, [])
    assert [c["kind"] for c, _ in sent] == ["error"]
    msg = sent[-1][0]
    assert msg["id"] == 9 and msg["request"] == "detail"
    assert msg["message"] == (
        f"ValueError: detail request: index must be an int training index in [0, {N_TRAIN}), got "
        f"{type(index).__name__} {index!r}: send the example's integer index."
    )


@pytest.mark.parametrize("index", [-1, N_TRAIN])
def test_detail_request_index_out_of_range(make, sent, index):
    w = make()
    w.send = sent
    w._handle_custom_msg({"kind": "detail", "id": 2, "index": index}, [])
    assert [c["kind"] for c, _ in sent] == ["error"]
    assert sent[-1][0]["message"] == (
        f"ValueError: detail request: index {index} is outside the training set "
        f"[0, {N_TRAIN}): send the index of a training example."
    )


# --- cancel -------------------------------------------------------------------------------------------------------
def test_a_cancel_arriving_after_the_computation_finished_cancels_nothing_later(make, sent):
    w = make(k=2)
    w.send = sent
    w._handle_custom_msg({"kind": "cancel"}, [])  # Cancel pressed as it finished (a page that sends no run id)
    w._handle_custom_msg({"kind": "cancel", "run": w.progress_info["run"]}, [])
    assert w.status == "ready" and not [c for c, _ in sent if c["kind"] == "error"]
    for index in (3, 7):  # queries not computed yet: each needs an engine call
        w.set_state({"query": {"source": "test", "index": index}})
        w.wait(10)
        assert w.gallery["error"] is None and w.gallery["query"]["index"] == index
        assert len(w.gallery["proponents"]) == 2


def test_a_cancel_just_after_the_last_step_leaves_the_explorer_ready(data, fake):
    class CancelAfterLastStep(InfluenceExplorer):
        def _on_computed(self, what):  # the pipeline's hook once a step stored its arrays
            super()._on_computed(what)
            if what == SUGGESTIONS:  # the last step
                self._handle_custom_msg({"kind": "cancel"}, [])  # arrives after the last progress callback

    w = CancelAfterLastStep(data["model"], None, data["train"], data["test"], engine=fake, k=2).wait(30)
    assert w.status == "ready" and w.self_influence is not None
    w.set_state({"query": {"source": "train", "index": 5}})
    w.wait(10)
    assert w.gallery["error"] is None and len(w.gallery["opponents"]) == 2


def test_a_cancel_names_its_run_and_never_cancels_a_later_one(make, fake):
    fake.fail = RuntimeError("disk full")
    w = make(wait=False)
    with pytest.raises(RuntimeError):
        w.wait(20)
    first = w.progress_info["run"]
    fake.fail, fake.gate = None, threading.Event()
    w.start()  # Retry: a new run
    assert fake.started.wait(20)
    assert w.progress_info["run"] == first + 1
    w._handle_custom_msg({"kind": "cancel", "run": first}, [])  # sent for the failed run, arriving late
    fake.gate.set()
    w.wait(20)
    assert w.status == "ready" and w.self_influence is not None


def test_cancel_run_must_be_an_int(make, sent):
    w = make()
    w.send = sent
    w._handle_custom_msg({"kind": "cancel", "run": "1"}, [])
    assert sent[-1][0]["message"] == (
        "ValueError: cancel request: run must be the int id of progress_info['run'] (or absent), got str '1'."
    )


# --- invalid state updates from the page -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (
            [3, 1000],
            r"flagged holds indices outside the training set \[0, 60\): \[1000\]\. Flag only indices into "
            r"train_dataset\.",
        ),
        (
            [3, 1.5],
            r"flagged must be a list of training indices \(ints\), got float 1\.5 at position 1: give each "
            r"example by its integer index\.",
        ),
        ([True], r"flagged must be a list of training indices \(ints\), got bool True at position 0"),
    ],
)
def test_invalid_flags_from_the_page_are_refused_and_the_page_resynced(make, tmp_path, flags, message):
    p = tmp_path / "flags.json"
    w = make(flags_path=p)
    w.set_state({"flagged": [2, 4]})
    sent = record_state(w)
    w._handle_msg(update_msg({"flagged": flags}))
    assert w.flagged == [2, 4] and json.loads(p.read_text()) == [2, 4]  # nothing applied, nothing saved
    assert {"flagged": [2, 4]} in updates(sent)  # the page shows the kernel's flags again
    assert w.error.startswith("The page sent an invalid flagged (not applied; the previous value is kept): ")
    assert re.search(message, w.error)
    w.undo()  # the refused update left no history entry: undo goes back to before [2, 4]
    assert w.flagged == []


def test_a_valid_update_from_the_page_is_applied_without_an_error(make):
    w = make(k=3)
    sent = record_state(w)
    w._handle_msg(update_msg({"flagged": [5, 1], "k": 4}))
    w.wait(10)
    assert w.flagged == [1, 5] and w.k == 4 and w.error == ""
    assert {"flagged": [1, 5]} in updates(sent)  # the normalised (sorted) value is sent back
    assert not any("error" in s for s in updates(sent))
