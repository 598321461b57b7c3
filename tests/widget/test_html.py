"""``InfluenceExplorer.save_html``: one self-contained static HTML file (no scripts, no external URLs) with the current
query's galleries, the top of the ranking and the flags; checked against the fake source's own numpy scores."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tracin_widgets.widget import _html

from .conftest import N_TRAIN

# attributes through which a browser would fetch something, and CSS url()s
FETCHING = re.compile(r"""(?:\b(?:src|href|srcset|action|poster)\s*=\s*["']?\s*|url\(\s*["']?)([^"')\s>]+)""", re.I)


def tile_indices(text: str, testid: str) -> list[int]:
    return [int(i) for i in re.findall(rf'data-testid="{testid}" data-index="(\d+)"', text)]


def test_save_html_writes_one_self_contained_file_of_the_review(make, data, tmp_path):
    w = make(k=3, class_names=["zero", "one", "two"])
    w.flagged = [5, 1]
    w.wait(30)
    out = w.save_html(tmp_path / "sub" / "review.html")
    assert out == tmp_path / "sub" / "review.html"
    text = out.read_text(encoding="utf-8")

    # self-contained: everything fetched is a data: URI, nothing runs
    fetched = FETCHING.findall(text)
    assert fetched and all(u.startswith("data:image/png;base64,") for u in fetched), {u[:40] for u in fetched}
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert ".tracin-tile" in text  # the widget's own CSS is inlined

    # the current test example (the first one) and its galleries: the fake source's top / bottom 3 by score
    x_train, x_test = data["x_train"], data["x_test"]
    q = w.query["index"]
    scores = x_test[q] @ x_train.T
    label = int(data["test"][q][1])
    assert re.search(rf'data-testid="tracin-snapshot-query">Test #{q}<', text)
    assert f'data-testid="tracin-snapshot-label">{["zero", "one", "two"][label]}<' in text
    assert tile_indices(text, "tracin-proponent") == np.argsort(-scores, kind="stable")[:3].tolist()
    assert tile_indices(text, "tracin-opponent") == np.argsort(scores, kind="stable")[:3].tolist()

    # the top 50 of the ranking, most self-influential first (self-influence = |x|^2 for the fake)
    ranking = [int(i) for i in re.findall(r'data-testid="tracin-snapshot-ranking-row" data-index="(\d+)"', text)]
    assert ranking == np.argsort(-(x_train**2).sum(1), kind="stable")[:50].tolist()
    assert N_TRAIN > 50

    # the flags
    assert 'data-testid="tracin-flag-count">⚑ 2 flagged<' in text
    assert re.findall(r'data-testid="tracin-snapshot-flagged-row" data-index="(\d+)"', text) == ["1", "5"]
    assert "<code>[1, 5]</code>" in text
    n_images = 1 + 3 + 3 + 50 + 2  # query, proponents, opponents, ranking, flagged rows
    assert len(fetched) == n_images


def test_save_html_top_rows_and_escaping(make, tmp_path):
    w = make(k=2, class_names=["<b>a</b>", "b&c", "c"])
    text = w.save_html(tmp_path / "r.html", top=7).read_text(encoding="utf-8")
    assert len(re.findall(r'data-testid="tracin-snapshot-ranking-row"', text)) == 7
    assert "<b>a</b>" not in text and ("&lt;b&gt;a&lt;/b&gt;" in text or "b&amp;c" in text)
    assert "⚑ 0 flagged" in text
    text0 = w.save_html(tmp_path / "r0.html", top=0).read_text(encoding="utf-8")
    assert 'data-testid="tracin-snapshot-ranking-row"' not in text0


def test_save_html_refuses_a_bad_path_or_top_before_any_work(make, tmp_path):
    w = make()
    with pytest.raises(ValueError, match=r"path must end in \.html \(or \.htm\), got .*review\.json"):
        w.save_html(tmp_path / "review.json")
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike naming an \.html file, got int"):
        w.save_html(3)
    for bad in (-1, 501, 2.0, True):
        with pytest.raises(ValueError, match=r"top must be an int in \[0, 500\] \(rows of the self-influence ranking"):
            w.save_html(tmp_path / "r.html", top=bad)
    assert not (tmp_path / "r.html").exists()


def test_save_html_names_what_is_not_computed_yet(make, fake, tmp_path):
    import threading

    fake.gate = threading.Event()
    w = make(wait=False)
    try:
        assert fake.started.wait(20)
        with pytest.warns(
            UserWarning,
            match=r"save_html: .*self-influence \(the ranking\) not computed yet; .*"
            r"Call explorer\.wait\(\) before save_html",
        ):
            text = w.save_html(tmp_path / "early.html").read_text(encoding="utf-8")
        assert "Self-influence was not computed yet when this file was saved." in text
    finally:
        fake.gate.set()
        w.wait(30)


# values and texts from js/src/format.js's fmtScore, run under node
FMT_SCORE = [
    [0, "0"], [1, "1"], [-1, "-1"], [12.345, "12.3"], [1234.5, "1230"], [12345, "12300"], [99999, "100000"],
    [99999.9, "100000"], [123456, "1.23e+5"], [0.001, "0.001"], [0.00099949, "9.99e-4"], [-0.000123, "-1.23e-4"],
    [1e-7, "1.00e-7"], [3141590000000, "3.14e+12"], [0.5, "0.5"], [2.675, "2.67"], [1e21, "1.00e+21"],
]  # fmt: skip


@pytest.mark.parametrize("value,text", FMT_SCORE)
def test_scores_are_written_as_the_widget_writes_them(value, text):
    assert _html._score(value) == text


def test_saved_from_the_ranking_view_the_file_shows_the_ranking_not_test_0s_galleries(make, tmp_path):
    w = make(k=3, view="ranking")
    w.flagged = [int(np.argmax(w.self_influence))]
    i = int(np.flatnonzero(w.suggested_labels >= 0)[0])
    w.relabels = {i: int(w.suggested_labels[i])}
    text = w.save_html(tmp_path / "r.html").read_text()
    assert 'data-testid="tracin-snapshot-gallery"' not in text  # the reviewer never looked at test #0
    assert text.index("tracin-snapshot-ranking-section") < text.index("tracin-snapshot-flags")
    assert 'data-testid="tracin-suggested-label"' in text and "1 relabelled" in text
    est = w.estimated_mislabelled
    if est < 50:  # the divider sits at that rank of the top 50
        assert f"≈ {est:,} labels estimated wrong above this line" in text
    w.view = "test"
    text = w.save_html(tmp_path / "t.html").read_text()
    assert text.index('data-testid="tracin-snapshot-gallery"') < text.index("tracin-snapshot-ranking-section")
