"""The review loop's Python state: relabels (checked, synced with string keys, undone with the flags), the cleaned
training set, the export, the review file that lasts (restored by the next explorer on the same data, merged from a
second reviewer), bulk flags, the table's suggested / relabelled rows, the details' evidence and the plain-text repr.
"""

from __future__ import annotations

import copy
import csv
import io
import json

import numpy as np
import pytest
import torch
import traitlets

from tracin_widgets.widget import InfluenceExplorer, _flags, _review

from .conftest import N_TRAIN, train_digits


def predicted(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()


# --- relabels ---------------------------------------------------------------------------------------------------------
def test_relabels_are_checked_with_errors_that_say_what_is_wrong(make):
    w = make(class_names=["a", "b", "c"])
    with pytest.raises(traitlets.TraitError, match=r"relabels key 60 is outside the training set \[0, 60\)"):
        w.relabels = {60: 1}
    with pytest.raises(traitlets.TraitError, match=r"relabels\[3\] = 3 is not a class index in \[0, 3\)"):
        w.relabels = {3: 3}
    with pytest.raises(traitlets.TraitError, match=r"relabels\[3\] \(the new label\) must be an int, got str 'b'"):
        w.relabels = {3: "b"}
    with pytest.raises(traitlets.TraitError, match=r"'relabels' trait .* expected a dict, not the list"):
        w.relabels = [3, 1]
    assert w.relabels == {}


def test_relabels_travel_with_string_keys_and_a_relabel_to_the_given_label_is_dropped(make, data):
    w = make()
    labels = data["train"].tensors[1].numpy()
    other = int((labels[4] + 1) % 3)
    w.set_state({"relabels": {"4": other, "5": int(labels[5])}})  # as the page sends it (JSON keys are strings)
    assert w.relabels == {4: other}
    assert w.get_state()["relabels"] == {"4": other}  # and as it is sent back


def test_undo_covers_flags_and_relabels_in_one_history(make, data):
    w = make()
    labels = data["train"].tensors[1].numpy()
    new = int((labels[2] + 1) % 3)
    w.flagged = [1]
    w.relabels = {2: new}
    w.flagged = [1, 3]
    w.undo()
    assert (w.flagged, w.relabels) == ([1], {2: new})
    w._handle_custom_msg({"kind": "undo"}, [])  # the page's undo
    assert (w.flagged, w.relabels) == ([1], {})
    w.undo()
    assert (w.flagged, w.relabels) == ([], {})


def test_cleaned_dataset_drops_flagged_rows_and_yields_the_new_labels(make, data):
    w = make()
    labels = data["train"].tensors[1]
    w.flagged = [0, 5]
    new3, new5 = int((labels[3] + 1) % 3), int((labels[5] + 2) % 3)
    w.relabels = {3: new3, 5: new5}  # 5 is flagged too: dropped
    ds = w.cleaned_dataset()
    assert len(ds) == N_TRAIN - 2 and ds.indices == [i for i in range(N_TRAIN) if i not in (0, 5)]
    x, y = ds[ds.indices.index(3)]
    assert torch.equal(x, data["train"][3][0]) and y.dtype == labels.dtype and int(y) == new3
    assert int(ds[0][1]) == int(labels[1])  # the others keep theirs
    got = [int(v) for _, y in torch.utils.data.DataLoader(ds, batch_size=7) for v in y]  # what training reads
    assert got == [new3 if i == 3 else int(labels[i]) for i in ds.indices]


# --- export -----------------------------------------------------------------------------------------------------------
def cell(v) -> str:
    """A CSV cell of the export: empty for none, true/false, floats as repr."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v) if isinstance(v, float) else str(v)


def test_export_has_one_record_per_flagged_or_relabelled_row(make, data, tmp_path):
    w = make()
    labels = data["train"].tensors[1].numpy()
    sugg = w.suggested_labels
    with_one = int(np.flatnonzero(sugg >= 0)[0])
    w.flagged = [with_one, 59]
    w.relabels = {with_one + 1: int((labels[with_one + 1] + 1) % 3)}
    scores = w.self_influence
    expected = [
        {
            "index": i,
            "given_label": int(labels[i]),
            "suggested_label": None if sugg[i] < 0 else int(sugg[i]),
            "new_label": w.relabels.get(i),
            "flagged": i != with_one + 1,
            "self_influence": float(scores[i]),
        }
        for i in sorted({with_one, 59, with_one + 1})
    ]
    j = w.export_flagged(tmp_path / "review.json")
    assert json.loads(j.read_text()) == expected
    c = w.export_flagged(tmp_path / "review.csv")
    rows = list(csv.DictReader(io.StringIO(c.read_text())))
    assert list(rows[0]) == list(_flags.EXPORT_COLUMNS)
    for got, want in zip(rows, expected, strict=True):
        assert got == {k: cell(v) for k, v in want.items()}
    for p in (j, c):  # an export reads back as a flags file: its flagged rows
        assert _flags.read(p, N_TRAIN) == [with_one, 59]


# --- reviews that last ----------------------------------------------------------------------------------------------
def test_the_next_explorer_on_the_same_data_restores_flags_relabels_and_undo(make, data, user_cache):
    labels = data["train"].tensors[1].numpy()
    new = int((labels[7] + 1) % 3)
    first = make()
    assert first.review_path is not None and first.review_path.parent == user_cache / "tracin_widgets" / "reviews"
    first.flagged = [4]
    first.relabels = {7: new}
    first.flagged = [4, 8]
    saved = json.loads(first.review_path.read_text())
    assert saved["flagged"] == [4, 8] and saved["relabels"] == {"7": new} and len(saved["history"]) == 3
    del first  # "kernel restart"
    second = make()
    assert (second.flagged, second.relabels) == ([4, 8], {7: new})
    second.undo()  # the undo history lasted too
    assert (second.flagged, second.relabels) == ([4], {7: new})
    second.undo()
    assert second.relabels == {}


def test_other_data_get_their_own_review_file(make, data, fake, tmp_path):
    first = make()
    first.flagged = [1]
    x, y = data["train"].tensors
    other = torch.utils.data.TensorDataset(x, (y + 1) % 3)  # other labels: another training set
    w = InfluenceExplorer(data["model"], None, other, engine=fake).wait(30)
    assert w.review_path != first.review_path and w.flagged == []


def test_the_review_file_lives_next_to_the_engines_cache_dir(tmp_path):
    model, ckpts, train, test = train_digits(tmp_path, lr=0.5, epochs=2)
    cache = tmp_path / "cache"
    w = InfluenceExplorer(model, ckpts, train, test, cache_dir=cache, k=3, batch_size=64).wait(120)
    try:
        w.flagged = [3]
        assert w.review_path.parent == cache and w.review_path.name.startswith("review-")
        assert json.loads(w.review_path.read_text())["flagged"] == [3]
    finally:
        w.close()


def test_review_path_false_writes_nothing_and_a_given_path_is_used(make, tmp_path, user_cache):
    w = make(review_path=False)
    w.flagged = [2]
    assert w.review_path is None and not any(user_cache.rglob("*.json"))
    p = tmp_path / "mine.json"
    w2 = make(review_path=p)
    w2.relabels = {3: 0} if w2._examples.train_label(3) != 0 else {3: 1}
    assert w2.review_path == p and json.loads(p.read_text())["relabels"] == {"3": w2.relabels[3]}


@pytest.mark.parametrize(
    "value,exc,msg",
    [
        ("review.txt", ValueError, r"review_path must end in \.json, got 'review\.txt'"),
        (True, TypeError, r"review_path must be a path ending in \.json, False .* or None"),
        (3, TypeError, r"review_path must be a path ending in \.json"),
    ],
)
def test_review_path_is_checked(data, fake, value, exc, msg):
    with pytest.raises(exc, match=msg):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, review_path=value)


def test_a_corrupt_or_foreign_review_file_is_a_clear_error_and_stays_untouched(data, fake, tmp_path):
    p = tmp_path / "review.json"
    p.write_text("{oops")
    with pytest.raises(ValueError, match=r"review file .*review\.json.* is corrupt .*untouched.*review_path=False"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, review_path=p)
    assert p.read_text() == "{oops"
    p.write_text(json.dumps({"format": _review.FORMAT, "n_train": 5, "data": "x", "flagged": []}))
    with pytest.raises(ValueError, match=r"was saved for another training set \(5 examples"):
        InfluenceExplorer(data["model"], None, data["train"], engine=fake, review_path=p)


def test_flags_path_keeps_working_and_its_flags_win(make, tmp_path):
    flags = tmp_path / "flags.json"
    w = make(flags_path=flags)
    w.flagged = [5]
    assert json.loads(flags.read_text()) == [5]
    flags.write_text("[6]")  # edited by hand
    assert make(flags_path=flags).flagged == [6]


def test_the_review_file_goes_through_the_packages_atomic_write(make, monkeypatch):
    calls = []
    real = _review.atomic_write
    monkeypatch.setattr(_review, "atomic_write", lambda path, write: calls.append(path) or real(path, write))
    w = make()
    w.flagged = [1]
    assert calls == [w.review_path]


def test_merge_review_unions_flags_keeps_our_relabels_and_reports_conflicts(make, data, tmp_path):
    labels = data["train"].tensors[1].numpy()

    def other(i, by=1):
        return int((labels[i] + by) % 3)

    theirs_file = tmp_path / "theirs.json"
    theirs = make(review_path=theirs_file)
    theirs.flagged = [1, 2]
    theirs.relabels = {3: other(3), 4: other(4, 2)}
    ours = make(review_path=tmp_path / "ours.json")
    ours.flagged = [2, 9]
    ours.relabels = {4: other(4)}
    with pytest.warns(UserWarning, match=r"merge_review: 1 example\(s\) relabelled differently .*#4: ours"):
        conflicts = ours.merge_review(theirs_file)
    assert conflicts == {4: (other(4), other(4, 2))}
    assert ours.flagged == [1, 2, 9] and ours.relabels == {3: other(3), 4: other(4)}
    ours.undo()  # one step
    assert (ours.flagged, ours.relabels) == ([2, 9], {4: other(4)})
    flags_only = tmp_path / "flags.csv"
    flags_only.write_text("index\n30\n")
    assert ours.merge_review(flags_only) == {} and 30 in ours.flagged
    with pytest.raises(ValueError, match=r"merge_review: .*nope\.json' does not exist"):
        ours.merge_review(tmp_path / "nope.json")


# --- bulk flags and the table --------------------------------------------------------------------------------------
def test_bulk_flag_flags_every_row_under_the_filter_or_one_page_as_one_undo_step(make, sent):
    w = make()
    w.send = sent
    sugg = np.flatnonzero(w.suggested_labels >= 0)
    msg = {"kind": "bulk_flag", "id": 1, "filter": {"only": "suggested"}, "offset": None, "limit": None, "flag": True}
    w._handle_custom_msg(msg, [])
    assert sent[-1][0] == {"kind": "bulk_flag", "id": 1, "count": len(sugg)}
    assert w.flagged == sugg.tolist()
    rank_order = np.argsort(-w.self_influence, kind="stable")
    page = {"kind": "bulk_flag", "id": 2, "filter": {"sort": "rank"}, "offset": 5, "limit": 5, "flag": False}
    w._handle_custom_msg(page, [])
    assert sent[-1][0]["count"] == 5 and w.flagged == sorted(set(sugg) - set(rank_order[5:10].tolist()))
    w.undo()
    assert w.flagged == sugg.tolist()
    w.undo()
    assert w.flagged == []
    w._handle_custom_msg({**msg, "id": 3, "limit": 0}, [])
    assert sent[-1][0]["kind"] == "error" and "limit must be an int >= 1 or null" in sent[-1][0]["message"]


def test_rows_carry_the_suggestion_and_the_new_label_and_filter_by_them(make, data, sent):
    w = make(class_names=["a", "b", "c"])
    w.send = sent
    labels = data["train"].tensors[1].numpy()
    sugg = w.suggested_labels
    i = int(np.flatnonzero(sugg >= 0)[0])
    w.relabels = {i: int(sugg[i])}
    w._handle_custom_msg({"kind": "rows", "id": 1, "only": "suggested", "limit": 500}, [])
    rows = sent[-1][0]["rows"]
    assert sorted(r["index"] for r in rows) == np.flatnonzero(sugg >= 0).tolist()
    assert all(r["suggested"] == sugg[r["index"]] and r["badge"] for r in rows)
    assert next(r for r in rows if r["index"] == i)["new_label"] == sugg[i]
    w._handle_custom_msg({"kind": "rows", "id": 2, "only": "relabelled"}, [])
    assert [r["index"] for r in sent[-1][0]["rows"]] == [i]
    w._handle_custom_msg({"kind": "rows", "id": 3, "sort": "suggested", "limit": 500}, [])
    order = [r["suggested"] for r in sent[-1][0]["rows"]]
    have = [s for s in order if s is not None]
    assert have == sorted(have) and order[len(have) :] == [None] * (N_TRAIN - len(have))  # none last
    assert w.stats["estimated_mislabelled"] == w.estimated_mislabelled == int((sugg >= 0).sum())
    assert (labels != predicted(data["model"], data["x_train"])).sum() == w.estimated_mislabelled


def test_estimated_mislabelled_is_read_only_for_users(make):
    w = make()
    with pytest.raises(traitlets.TraitError, match="read-only"):
        w.estimated_mislabelled = 3


def test_the_details_show_each_checkpoints_probabilities_and_the_rows_own_self_influence(tmp_path, sent):
    model, ckpts, train, test = train_digits(tmp_path, lr=0.5, epochs=3)
    w = InfluenceExplorer(model, ckpts, train, test, k=3, batch_size=64).wait(120)
    try:
        w.send = sent
        i = int(np.flatnonzero(w.suggested_labels >= 0)[0]) if (w.suggested_labels >= 0).any() else 0
        w._handle_custom_msg({"kind": "detail", "id": 1, "index": i}, [])
        ev = sent[-1][0]["item"]["evidence"]
        net = copy.deepcopy(model)
        x, y = train[i]
        probs = []
        for path in ckpts:  # the oracle: each checkpoint file loaded into a fresh copy
            net.load_state_dict(torch.load(path, weights_only=True))
            with torch.no_grad():
                probs.append(torch.softmax(net.eval()(x[None]), 1)[0].numpy())
        assert ev["checkpoints"] == [p.rsplit("/", 1)[-1] for p in ckpts]
        np.testing.assert_allclose(ev["given"], [p[int(y)] for p in probs], rtol=1e-5)
        s = w.suggested_labels[i]
        if s >= 0:
            np.testing.assert_allclose(ev["suggested"], [p[s] for p in probs], rtol=1e-5)
        mean = np.mean(probs, axis=0)
        assert w.suggested_labels[i] == (mean.argmax() if mean.argmax() != int(y) else -1)
        assert sum(ev["self_influence"]) == pytest.approx(float(w.self_influence[i]), rel=1e-4)
    finally:
        w.close()


def test_repr_is_a_plain_text_line(make):
    w = make()
    w.flagged = [1, 2]
    text = repr(w)
    assert text == (
        f"InfluenceExplorer: {N_TRAIN} training / 12 test examples, FakeSource, 2 flagged, 0 relabelled, "
        f"~{w.estimated_mislabelled} labels estimated wrong"
    )
