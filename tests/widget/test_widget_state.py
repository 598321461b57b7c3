"""InfluenceExplorer state as the frontend sees it: get_state()/set_state(), flags, autosave, errors, cancel."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
import traitlets
from ipywidgets.widgets.widget import _remove_buffers
from torch.utils.data import Subset

from tracin_widgets.widget import InfluenceExplorer, _stats

from .conftest import N_TEST, N_TRAIN, FakeSource


def predictions(model, x):
    with torch.no_grad():
        p = torch.softmax(model(torch.as_tensor(x, dtype=torch.float32)), 1)
    return p.argmax(1).numpy(), p.max(1).values.numpy()


# --- construction -----------------------------------------------------------------------------------------------------
def test_unknown_keyword_is_a_type_error_with_a_hint(data, fake):
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'topk' \(did you mean 'k'\?\)"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, topk=5)


def test_engine_conflicts_and_protocol(data, fake):
    with pytest.raises(ValueError, match="engine= was given together with loss_fn"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, loss_fn=torch.nn.MSELoss())
    with pytest.raises(ValueError, match="engine= was given together with cache_dir"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, cache_dir="somewhere")
    with pytest.raises(TypeError, match=r"engine must have influence\(inputs, k, proponents\) and self_influence\(\)"):
        InfluenceExplorer(data["model"], None, data["train"], engine=object())
    with pytest.raises(TypeError, match="needs checkpoints"):
        InfluenceExplorer(data["model"], None, data["train"])
    with pytest.raises(ValueError, match="k must be a positive int"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, k=0)
    with pytest.raises(ValueError, match=r"test_indices must be indices into test_dataset, i.e. in \[0, 12\)"):
        InfluenceExplorer(data["model"], None, data["train"], data["test"], engine=fake, test_indices=[50])


def test_initial_state_after_the_background_work(make, data):
    w = make(class_names=["a", "b", "c"], k=4)
    state = w.get_state()
    assert state["status"] == "ready" and state["error"] == "" and state["progress"] == 1.0
    assert state["info"] == {
        "n_train": N_TRAIN,
        "n_test": N_TEST,
        "has_truth": False,
        "engine": "FakeSource",
        "n_classes": 3,
        "notes": [],
    }
    assert state["class_names"] == ["a", "b", "c"]
    assert state["selected_test"] == 0 and state["query"] == {"source": "test", "index": 0}
    assert state["progress_info"]["step"] == state["progress_info"]["steps"] == 5
    # self-influence and predictions are exposed and match independent computations
    np.testing.assert_allclose(w.self_influence, (data["x_train"] ** 2).sum(1))
    pred, _ = predictions(data["model"], data["x_train"])
    assert (w._examples.train_preds == pred).all()


def test_gallery_is_in_widget_state_with_binary_thumbnails(make, data):
    w = make(k=3)
    g = w.get_state()["gallery"]
    assert g["query"] == {"source": "test", "index": 0} and g["k"] == 3 and g["error"] is None
    scores = data["x_test"][0] @ data["x_train"].T
    assert [r["index"] for r in g["proponents"]] == np.argsort(-scores, kind="stable")[:3].tolist()
    assert [r["index"] for r in g["opponents"]] == np.argsort(scores, kind="stable")[:3].tolist()
    np.testing.assert_allclose([r["score"] for r in g["proponents"]], np.sort(scores)[::-1][:3])
    _, paths, buffers = _remove_buffers({"gallery": g})
    assert ["gallery", "proponents", 0, "image", "data"] in paths
    assert len(buffers) == 1 + 3 + 3  # query item + tiles
    assert g["proponents"][0]["image"]["shape"] == [4, 4, 1]  # a 16-vector shows as a 4x4 image


def test_badges_and_query_prediction(make, data):
    w = make(k=N_TRAIN)  # every training example in both galleries
    g = w.gallery
    pred, prob = predictions(data["model"], data["x_test"][:1])
    assert g["item"]["pred"] == pred[0] and g["item"]["prob"] == pytest.approx(float(prob[0]), rel=1e-5)
    # a badge says something about the training example itself, never a comparison with the query: the
    # checkpoints' average prediction differs from its label (the fake engine has no checkpoints: the model is
    # the one member of the average)
    labels = data["train"].tensors[1].numpy()
    train_pred, _ = predictions(data["model"], data["x_train"])
    assert 0 < (train_pred != labels).sum() < N_TRAIN
    np.testing.assert_array_equal(w.suggested_labels, np.where(train_pred != labels, train_pred, -1))
    assert w.estimated_mislabelled == int((train_pred != labels).sum())
    for r in g["proponents"] + g["opponents"]:
        i = r["index"]
        disagree = labels[i] != train_pred[i]
        assert (r["badge"] is not None) == disagree == (r["suggested"] is not None)
        if disagree:
            assert r["suggested"] == train_pred[i]
            assert r["badge"].startswith(f"the checkpoints' average prediction is {train_pred[i]} (p̄ 0.")
            assert f"not its label {labels[i]} (p̄ 0." in r["badge"]


def test_selection_from_the_frontend_recomputes_the_gallery(make, data):
    w = make(k=2)
    w.set_state({"selected_test": 5, "query": {"source": "test", "index": 5}})
    w.wait(10)
    scores = data["x_test"][5] @ data["x_train"].T
    assert w.gallery["query"] == {"source": "test", "index": 5}
    assert [r["index"] for r in w.gallery["proponents"]] == np.argsort(-scores, kind="stable")[:2].tolist()
    w.set_state({"k": 4})
    w.wait(10)
    assert w.gallery["k"] == 4 and len(w.gallery["opponents"]) == 4
    w.selected_test = 7  # from Python: the query follows
    w.wait(10)
    assert w.query == {"source": "test", "index": 7} and w.gallery["query"]["index"] == 7


def test_revisiting_a_query_or_changing_k_reuses_the_cached_scores(make, fake):
    w = make(k=2)
    w.set_state({"query": {"source": "test", "index": 4}})
    w.wait(10)
    calls = fake.influence_calls
    w.set_state({"k": 6})
    w.set_state({"query": {"source": "test", "index": 0}})
    w.set_state({"query": {"source": "test", "index": 4}})
    w.wait(10)
    assert fake.influence_calls == calls
    assert w.gallery["query"]["index"] == 4 and len(w.gallery["proponents"]) == 6


def test_walking_to_a_training_example_uses_it_as_the_query(make, data):
    w = make(k=3)
    w.set_state({"query": {"source": "train", "index": 11}})
    w.wait(10)
    scores = data["x_train"][11] @ data["x_train"].T
    assert (
        w.gallery["item"]["index"] == 11 and w.gallery["item"]["rank"] == _stats.ranks_from_scores(w.self_influence)[11]
    )
    assert [r["index"] for r in w.gallery["proponents"]] == np.argsort(-scores, kind="stable")[:3].tolist()


def test_stale_gallery_answer_never_overwrites_a_newer_selection(make):
    w = make(k=2)
    w.set_state({"query": {"source": "test", "index": 3}})
    w.wait(10)
    old_gen = w._galleries.generation
    newer = w._schedule_gallery()  # a newer request for the same query is now the latest
    w.wait(10)
    assert newer == old_gen + 1
    before = dict(w.gallery)
    assert w._galleries.compute({"source": "test", "index": 9}, 2, old_gen) is False  # the old request finishing late
    assert w.gallery == before and w.gallery["query"]["index"] == 3
    assert w._galleries.compute({"source": "test", "index": 9}, 2, w._galleries.generation) is True
    assert w.gallery["query"]["index"] == 9


# --- test strip -------------------------------------------------------------------------------------------------------
def test_test_strip_pages_and_misclassified_filter(make, data):
    w = make(test_indices=list(range(10)))
    w.set_state({"test_page_size": 4})
    s = w.test_strip
    assert (s["total"], s["n_pages"], [it["index"] for it in s["items"]]) == (10, 3, [0, 1, 2, 3])
    w.set_state({"test_page": 2})
    assert [it["index"] for it in w.test_strip["items"]] == [8, 9]
    pred, _ = predictions(data["model"], data["x_test"][:10])
    wrong = np.flatnonzero(pred != data["test"].tensors[1].numpy()[:10]).tolist()
    w.set_state({"misclassified_only": True, "test_page": 0, "test_page_size": 24})
    assert w.test_strip["filtered"] and [it["index"] for it in w.test_strip["items"]] == wrong
    assert all(it["pred"] != it["label"] for it in w.test_strip["items"])


def test_without_test_set(make):
    w = make(test_dataset=None)
    assert w.test_strip["total"] == 0 and w.query == {} and w.gallery == {}
    w.set_state({"query": {"source": "train", "index": 0}})
    w.wait(10)
    assert w.gallery["item"]["index"] == 0


# --- flags ------------------------------------------------------------------------------------------------------------
def test_flagged_from_the_frontend_is_a_sorted_plain_list(make):
    w = make()
    w.set_state({"flagged": [9, 2, 9]})
    assert w.flagged == [2, 9] and type(w.flagged) is list and all(type(i) is int for i in w.flagged)
    with pytest.raises(traitlets.TraitError, match=r"outside the training set \[0, 60\)"):
        w.set_state({"flagged": [1000]})
    assert w.flagged == [2, 9]
    w.flagged = np.flatnonzero(np.arange(N_TRAIN) % 20 == 3)  # numpy integers from Python
    assert w.flagged == [3, 23, 43] and all(type(i) is int for i in w.flagged)
    w.flagged = torch.tensor([5])
    assert w.flagged == [5]


def test_undo_reverts_flag_changes_in_order(make, sent):
    w = make()
    w.send = sent
    w.set_state({"flagged": [1]})
    w.set_state({"flagged": [1, 4]})
    w._handle_custom_msg({"kind": "undo"}, [])
    assert w.flagged == [1]
    w.undo()
    assert w.flagged == []
    w.undo()  # nothing left: no-op
    assert w.flagged == []


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_export_flagged_round_trip(make, tmp_path, suffix):
    w = make()
    w.flagged = [7, 3]
    p = w.export_flagged(tmp_path / f"out{suffix}")
    w2 = make(flags_path=p)
    assert w2.flagged == [3, 7]


def test_export_flagged_rejects_other_suffixes(make, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.json or \.csv"):
        make().export_flagged(tmp_path / "flags.xlsx")


def test_autosave_and_restore_across_instances(make, tmp_path):
    p = tmp_path / "flags.json"
    w = make(flags_path=p)
    assert not p.exists()  # nothing flagged yet, nothing written
    w.set_state({"flagged": [5, 1]})
    assert json.loads(p.read_text()) == [1, 5]
    w.set_state({"flagged": [1]})
    assert json.loads(p.read_text()) == [1]
    del w  # "kernel restart"
    w2 = make(flags_path=p)
    assert w2.flagged == [1]


def test_corrupt_flags_file_is_a_clear_error_and_is_not_overwritten(data, fake, tmp_path):
    p = tmp_path / "flags.json"
    p.write_text("[1, 2")
    with pytest.raises(ValueError, match=r"flags file .*flags\.json.* is corrupt .*left untouched"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, flags_path=p)
    assert p.read_text() == "[1, 2"
    with pytest.raises(ValueError, match=r"flags_path must end in \.json or \.csv"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, flags_path=tmp_path / "f.txt")


def test_autosave_failure_is_surfaced(make, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    w = make(flags_path=blocker / "flags.json")
    w.set_state({"flagged": [2]})
    assert w.error.startswith(f"could not save flags to {blocker / 'flags.json'}: FileExistsError")
    assert w.review_path is not None and not w.review_path.exists()  # the first failure stops the save
    assert w.flagged == [2]  # the flag itself is kept
    with pytest.raises(FileExistsError):
        w.wait(5)


def test_cleaned_dataset_drops_flagged(make, data):
    w = make()
    w.flagged = [0, 5, 59]
    ds = w.cleaned_dataset()
    assert isinstance(ds, Subset) and len(ds) == N_TRAIN - 3
    assert ds.indices == [i for i in range(N_TRAIN) if i not in (0, 5, 59)]
    assert torch.equal(ds[0][0], data["train"][1][0])


# --- stats ------------------------------------------------------------------------------------------------------------
def test_ground_truth_gives_roc_found_curve_and_live_flag_metrics(make, data):
    truth = np.zeros(N_TRAIN, bool)
    truth[[2, 4, 8, 16, 32]] = True
    w = make(is_mislabelled=truth)
    st = w.stats
    s = (data["x_train"] ** 2).sum(1)
    pos, neg = s[truth], s[~truth]
    assert st["roc"]["auc"] == pytest.approx((pos[:, None] > neg[None, :]).mean())
    order = np.argsort(-s)
    assert st["found"]["found"][-1] == 1.0
    assert st["found"]["found"][50] == pytest.approx(truth[order[:30]].sum() / 5)
    assert st["histogram"]["counts"] and sum(st["histogram"]["counts"]) == N_TRAIN
    w.set_state({"flagged": [2, 4, 5]})
    f = w.stats["flags"]
    assert (f["n_flagged"], f["true_positives"], f["n_mislabelled"]) == (3, 2, 5)
    assert f["precision"] == pytest.approx(2 / 3) and f["recall"] == pytest.approx(0.4)


# --- errors and cancel ------------------------------------------------------------------------------------------------
def test_engine_error_is_surfaced_in_the_trait_the_log_and_wait(make, fake, caplog):
    fake.fail = RuntimeError("checkpoint 3 is corrupt")
    w = make(wait=False)
    with pytest.raises(RuntimeError, match="checkpoint 3 is corrupt"):
        w.wait(20)
    assert w.status == "error"
    assert w.error == "RuntimeError: checkpoint 3 is corrupt"
    assert any("checkpoint 3 is corrupt" in r.getMessage() for r in caplog.records)
    fake.fail = None  # the user fixes the problem and retries
    w.start().wait(20)
    assert w.status == "ready" and w.error == ""


def test_gallery_error_is_surfaced(make, fake):
    w = make()

    def broken(*a, **k):
        raise ValueError("inputs has the wrong shape")

    fake.influence = broken
    w.set_state({"query": {"source": "test", "index": 2}})
    with pytest.raises(ValueError, match="wrong shape"):
        w.wait(10)
    assert w.gallery["error"] == "ValueError: inputs has the wrong shape"
    assert w.gallery["query"] == {"source": "test", "index": 2}
    assert w.error == "ValueError: inputs has the wrong shape"


def test_cancel_aborts_at_the_next_progress_callback_and_resume_finishes(make, fake, sent):
    fake.gate = threading.Event()
    w = make(wait=False)
    w.send = sent
    assert fake.started.wait(20)
    assert w.status == "running"
    w._handle_custom_msg({"kind": "cancel"}, [])  # the Cancel button
    fake.gate.set()
    w.wait(20)  # a cancel is not an error
    assert w.status == "cancelled" and w.error == "" and w.self_influence is None
    assert w.gallery.get("error", "").startswith("Cancelled")
    assert fake.progress_callback is None  # the user's callback slot is restored
    fake.gate = None
    w._handle_custom_msg({"kind": "start"}, [])  # the Resume button
    w.wait(20)
    assert w.status == "ready" and w.self_influence is not None
    assert w.gallery["error"] is None and len(w.gallery["proponents"]) == 10


def test_progress_reaches_the_traits_while_running(make, fake):
    fake.gate = threading.Event()
    w = make(wait=False)
    assert fake.started.wait(20)
    info = w.progress_info
    assert info["phase"] == "self influence" and info["total"] == N_TRAIN and info["step"] == 3
    assert 0 <= w.progress < 1
    fake.gate.set()
    w.wait(20)
    assert w.status == "ready"


def test_user_progress_callback_is_chained(data):
    seen = []
    src = FakeSource(data["x_train"])
    src.progress_callback = lambda phase, done, total: seen.append((phase, done, total))
    w = InfluenceExplorer(data["model"], None, data["train"], engine=src)
    w.wait(20)
    assert ("self influence", 0, N_TRAIN) in seen
    assert src.progress_callback is not None and src.progress_callback.__name__ == "<lambda>"


def test_static_export_keeps_the_last_gallery_and_test_strip(make):
    from ipywidgets.embed import embed_data

    w = make(k=3)
    entry = embed_data(views=[w])["manager_state"]["state"][w.model_id]
    state = entry["state"]
    assert [r["index"] for r in state["gallery"]["proponents"]] == [r["index"] for r in w.gallery["proponents"]]
    assert len(state["test_strip"]["items"]) == N_TEST
    paths = [b["path"] for b in entry["buffers"]]  # thumbnails travel as (base64) buffers, not JSON numbers
    assert ["gallery", "proponents", 0, "image", "data"] in paths and [
        "test_strip",
        "items",
        0,
        "image",
        "data",
    ] in paths
