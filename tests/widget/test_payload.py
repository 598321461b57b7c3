"""The pure Python -> JS codec (_codec) and statistics (_stats): images, rows, table queries, charts, each against an
independent oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracin_widgets.widget import _codec, _stats, _suggest

from .oracle import table_order


# --- images -----------------------------------------------------------------------------------------------------------
def test_as_hwc_reads_torch_as_chw_numpy_as_hwc_and_square_vectors_as_images():
    t = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(3, 2, 5)  # CHW
    assert _codec.as_hwc(t).shape == (2, 5, 3)
    np.testing.assert_array_equal(_codec.as_hwc(t)[1, 4], t[:, 1, 4].numpy())
    a = np.zeros((4, 6, 3))
    assert _codec.as_hwc(a).shape == (4, 6, 3)  # numpy HWC kept
    assert _codec.as_hwc(np.zeros((3, 4, 6))).shape == (4, 6, 3)  # numpy CHW recognised
    assert _codec.as_hwc(torch.zeros(7, 9)).shape == (7, 9, 1)
    v = np.arange(64.0)
    np.testing.assert_array_equal(_codec.as_hwc(v)[:, :, 0], v.reshape(8, 8))
    assert _codec.as_hwc(np.zeros(10)).shape == (1, 10, 1)
    with pytest.raises(ValueError, match="to_image"):
        _codec.as_hwc(np.zeros((2, 3, 4, 5, 6)))


def test_minmax_image_scales_each_image_to_full_range():
    x = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]])  # normalised CHW
    img = _codec.minmax_image(x)
    assert img.dtype == np.uint8 and img.shape == (2, 2, 1)
    np.testing.assert_array_equal(img[:, :, 0], np.round((x[0].numpy() + 2) / 4 * 255).astype(np.uint8))
    assert _codec.minmax_image(torch.full((1, 3, 3), 5.0)).max() == 0  # constant image: no division by zero


def test_coerce_image_accepts_uint8_and_unit_floats_and_rejects_bad_shapes():
    np.testing.assert_array_equal(_codec.coerce_image(np.array([[0.0, 1.0]])), np.array([[[0], [255]]], np.uint8))
    u = np.full((2, 2, 3), 7, np.uint8)
    np.testing.assert_array_equal(_codec.coerce_image(u), u)
    with pytest.raises(ValueError, match=r"to_image must return an HxWxC"):
        _codec.coerce_image(np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match="uint8 or floats"):
        _codec.coerce_image(np.array([["a"]]))


def test_resize_max_uses_block_means_and_never_enlarges():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (128, 96, 3), dtype=np.uint8)
    out = _codec.resize_max(img, 64)
    assert out.shape == (64, 48, 3)
    oracle = img.astype(float).reshape(64, 2, 48, 2, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(out, np.round(oracle).astype(np.uint8))
    small = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    assert _codec.resize_max(small, 64) is small
    odd = rng.integers(0, 256, (100, 30, 1), dtype=np.uint8)
    assert max(_codec.resize_max(odd, 64).shape[:2]) <= 64


def test_encode_decode_round_trip_and_to_image_hook():
    x = torch.rand(3, 10, 12)
    enc = _codec.encode_image(x)
    assert enc["shape"] == [10, 12, 3] and isinstance(enc["data"], bytes)
    np.testing.assert_array_equal(_codec.decode_image(enc), _codec.minmax_image(x))
    hooked = _codec.encode_image(x, to_image=lambda t: t.permute(1, 2, 0).numpy())  # floats in [0, 1]
    np.testing.assert_array_equal(
        _codec.decode_image(hooked), np.round(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    )


def test_pack_buffers_replaces_nested_images_by_buffer_refs():
    a, b = {"data": b"\x01", "shape": [1, 1, 1]}, {"data": b"\x02\x03", "shape": [1, 2, 1]}
    packed, bufs = _codec.pack_buffers({"kind": "rows", "rows": [{"image": a}, {"image": b}, {"image": None}]})
    assert bufs == [b"\x01", b"\x02\x03"]
    assert packed["rows"][1]["image"] == {"shape": [1, 2, 1], "buffer": 1}
    assert packed["rows"][2]["image"] is None


# --- rows / badges ----------------------------------------------------------------------------------------------------
def test_a_badge_says_in_words_what_the_checkpoints_average_prediction_is():
    text = _suggest.badge(2, 1, 0.12, 0.71)
    assert text == "the checkpoints' average prediction is 1 (p̄ 0.71), not its label 2 (p̄ 0.12)"
    named = _suggest.badge(1, 0, 0.2, 0.8, name=lambda c: f"{c} ({'ab'[c]})")
    assert named == "the checkpoints' average prediction is 0 (a) (p̄ 0.80), not its label 1 (b) (p̄ 0.20)"
    assert _suggest.badge(2, -1, 0.9, float("nan")) is None  # no suggestion: no badge
    assert _suggest.badge(None, 1, 0.1, 0.9) is None  # nothing known yet: no badge


def test_suggestions_are_the_argmax_of_the_checkpoints_mean_where_it_differs_from_the_label():
    rng = np.random.default_rng(3)
    n, c, k = 30, 4, 5
    probs = rng.dirichlet(np.ones(c), size=(k, n)).astype(np.float32)
    labels = rng.integers(0, c, n)
    got = _suggest.from_checkpoints(((f"c{j}", probs[j]) for j in range(k)), labels)
    for i in range(n):  # a plain loop over the rows: the oracle
        mean = [sum(float(probs[j, i, m]) for j in range(k)) / k for m in range(c)]
        best = max(range(c), key=lambda m: mean[m])
        assert got.labels[i] == (best if best != labels[i] else -1)
        assert got.p_given[i] == pytest.approx(mean[labels[i]], rel=1e-5)
        if best != labels[i]:
            assert got.p_suggested[i] == pytest.approx(mean[best], rel=1e-5)
        else:
            assert np.isnan(got.p_suggested[i])
    assert got.count == int((got.labels >= 0).sum()) and got.checkpoints == tuple(f"c{j}" for j in range(k))
    given, sugg = _suggest.evidence(probs[:, 0], int(labels[0]), int(got.labels[0]))
    assert given == pytest.approx(probs[:, 0, labels[0]].tolist())
    assert sugg is None if got.labels[0] < 0 else sugg == pytest.approx(probs[:, 0, got.labels[0]].tolist())
    with pytest.raises(ValueError, match=r"checkpoint c0: expected \(30, classes\) probabilities"):
        _suggest.from_checkpoints([("c0", probs[0, :5])], labels)
    assert _suggest.check_labels(np.array([0, 4]), 4) == "the training labels are not all class indices in [0, 4)"
    assert _suggest.check_labels(np.array([0.5]), 4) == "the training labels are not one int class index per row"


@pytest.mark.parametrize("k", [1, 3, 7, 20, 25])
def test_top_k_matches_a_stable_sort(k):
    rng = np.random.default_rng(6)
    s = np.round(rng.normal(size=20), 1)  # ties
    assert _stats.top_k(s, k).tolist() == sorted(range(20), key=lambda i: (-s[i], i))[:k]
    assert _stats.top_k(s, k, largest=False).tolist() == sorted(range(20), key=lambda i: (s[i], i))[:k]


def test_ranks_from_scores_matches_sorted_order():
    s = np.array([0.5, 3.0, 1.0, 3.0])
    assert _stats.ranks_from_scores(s).tolist() == [4, 1, 3, 2]  # tie broken by index


def _oracle_order(
    scores, labels, preds, sort, desc, label=None, only="all", flagged=(), truth=None, rng=None, sugg=None
):
    idx = list(range(len(scores)))
    rank = {i: r for r, i in enumerate(sorted(idx, key=lambda i: (-scores[i], i)))}
    if sort == "suggested":  # by suggested label, rows without one last either way, ties by rank
        return sorted(idx, key=lambda i: (sugg[i] < 0, (-1 if desc else 1) * sugg[i], rank[i]))
    keys = {
        "rank": lambda i: rank[i],
        "score": lambda i: -rank[i],
        "index": lambda i: i,
        "label": lambda i: labels[i],
        "pred": lambda i: preds[i],
    }
    if sort in ("rank", "score", "index"):
        order = sorted(idx, key=keys[sort], reverse=desc)
    else:  # ties by rank
        order = sorted(idx, key=lambda i: ((-1 if desc else 1) * keys[sort](i), rank[i]))
    keep = [
        i
        for i in order
        if (label is None or labels[i] == label)
        and (only != "flagged" or i in flagged)
        and (only != "disagree" or labels[i] != preds[i])
        and (only != "mislabelled" or truth[i])
        and (rng is None or rng[0] <= scores[i] <= rng[1])
    ]
    return keep


@pytest.mark.parametrize("sort", _stats.SORT_KEYS)
@pytest.mark.parametrize("desc", [False, True])
def test_table_order_matches_a_python_sorted_oracle(sort, desc):
    rng = np.random.default_rng(1)
    n = 40
    scores = np.round(rng.random(n), 1)  # many ties
    labels, preds = rng.integers(0, 3, n), rng.integers(0, 3, n)
    sugg = np.where(rng.random(n) < 0.3, rng.integers(0, 3, n), -1)
    got = table_order(scores, sort=sort, descending=desc, labels=labels, preds=preds, suggested=sugg).tolist()
    assert got == _oracle_order(scores, labels, preds, sort, desc, sugg=sugg)


def test_table_order_filters():
    rng = np.random.default_rng(2)
    n = 50
    scores, labels, preds = rng.random(n), rng.integers(0, 3, n), rng.integers(0, 3, n)
    truth = rng.random(n) < 0.2
    kw = dict(labels=labels, preds=preds, is_mislabelled=truth)
    assert table_order(scores, label=1, **kw).tolist() == _oracle_order(scores, labels, preds, "rank", False, label=1)
    assert table_order(scores, only="flagged", flagged=[3, 7, 49], **kw).tolist() == _oracle_order(
        scores, labels, preds, "rank", False, only="flagged", flagged={3, 7, 49}
    )
    assert table_order(scores, only="disagree", **kw).tolist() == _oracle_order(
        scores, labels, preds, "rank", False, only="disagree"
    )
    assert table_order(scores, only="mislabelled", **kw).tolist() == _oracle_order(
        scores, labels, preds, "rank", False, only="mislabelled", truth=truth
    )
    r = (0.2, 0.6)
    assert table_order(scores, score_range=r, **kw).tolist() == _oracle_order(
        scores, labels, preds, "rank", False, rng=r
    )
    with pytest.raises(ValueError, match="sort must be one of"):
        table_order(scores, sort="nope")
    with pytest.raises(ValueError, match="before the predictions"):
        table_order(scores, sort="pred")


# --- charts -----------------------------------------------------------------------------------------------------------
def test_histogram_counts_everything_and_uses_log_axis_for_heavy_tails():
    rng = np.random.default_rng(3)
    s = np.exp(rng.normal(0, 3, 1000))
    h = _stats.histogram(s, bins=20)
    assert h["log"] is True and sum(h["counts"]) == 1000 and len(h["edges"]) == 21
    assert h["edges"][0] == pytest.approx(s.min()) and h["edges"][-1] == pytest.approx(s.max())
    inside = ((s >= h["edges"][3]) & (s < h["edges"][4])).sum()
    assert h["counts"][3] == inside
    lin = _stats.histogram(np.array([1.0, 2.0, 3.0]), bins=2)
    assert lin["log"] is False and lin["counts"] == [1, 2]


def test_roc_auc_equals_the_pairwise_probability():
    rng = np.random.default_rng(4)
    y = rng.random(200) < 0.3
    s = rng.random(200) + y * 0.5
    r = _stats.roc(s, y)
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert r["auc"] == pytest.approx(pairwise)
    assert r["fpr"][0] == 0 and r["tpr"][-1] == 1 and len(r["fpr"]) <= 256
    assert _stats.roc(s, np.zeros(200, bool)) is None


@pytest.mark.parametrize("n, decimals", [(300, 1), (5000, 3), (5000, 12)])
def test_roc_points_and_auc_are_scikit_learns_from_the_rank_order(n, decimals):
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(n + decimals)
    y = rng.random(n) < 0.2
    s = np.round(rng.random(n) + 0.3 * y, decimals)  # decimals=1: many ties
    fpr, tpr, _ = roc_curve(y, s)
    want_x, want_y = _stats._thin(fpr, tpr, 256)
    for order in (None, _stats.rank_order(s)):
        r = _stats.roc(s, y, order=order)
        assert r["fpr"] == want_x and r["tpr"] == want_y
        assert r["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="the ROC needs finite self-influence scores"):
        _stats.roc(np.r_[s[:-1], np.nan], y)


def test_rank_order_and_ranks_share_one_sort():
    s = np.array([0.5, 2.0, 0.5, 1.0])
    order = _stats.rank_order(s)
    assert order.tolist() == [1, 3, 0, 2] and order.dtype == np.int32  # ties by index
    assert _stats.ranks_from_scores(s, order).tolist() == _stats.ranks_from_scores(s).tolist() == [3, 1, 4, 2]
    y = np.array([True, False, False, True])
    assert _stats.found_vs_inspected(s, y, points=5, order=order) == _stats.found_vs_inspected(s, y, points=5)


def test_found_vs_inspected_matches_a_loop_oracle():
    rng = np.random.default_rng(5)
    n = 97
    y = rng.random(n) < 0.25
    s = rng.random(n)
    f = _stats.found_vs_inspected(s, y, points=11)
    order = sorted(range(n), key=lambda i: -s[i])
    for frac, found in zip(f["inspected"], f["found"], strict=False):
        m = round(frac * n)
        assert found == pytest.approx(sum(y[i] for i in order[:m]) / y.sum(), abs=1e-6)
    assert f["found"][0] == 0 and f["found"][-1] == 1
    assert _stats.found_vs_inspected(s, np.zeros(n, bool)) is None


def test_flag_metrics_precision_recall():
    truth = np.zeros(10, bool)
    truth[[1, 2, 3, 4]] = True
    m = _stats.flag_metrics([1, 2, 8], 10, truth)
    assert (m["true_positives"], m["n_mislabelled"]) == (2, 4)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5) and m["inspected"] == 0.3
    assert _stats.flag_metrics([], 10, truth)["precision"] is None
    assert _stats.flag_metrics([1], 10, None) == {"n_flagged": 1, "n_train": 10}


def test_mislabelled_mask_accepts_masks_and_index_lists():
    assert _stats.mislabelled_mask([True, False, True], 3).tolist() == [True, False, True]
    assert _stats.mislabelled_mask(torch.tensor([0, 1, 1]), 3).tolist() == [False, True, True]
    assert _stats.mislabelled_mask([4, 1], 6).tolist() == [False, True, False, False, True, False]
    assert _stats.mislabelled_mask({0}, 2).tolist() == [True, False]
    with pytest.raises(ValueError, match="has 2 entries but the training set has 3"):
        _stats.mislabelled_mask(np.array([True, False]), 3)
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        _stats.mislabelled_mask([9], 6)
