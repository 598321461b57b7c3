"""The review loop in a real browser (JupyterLab and Notebook 7): suggested labels, relabels, bulk flags, the
histogram brush, where to stop and the evidence in the details, each checked against what the kernel computed.

One page per frontend runs ``explorer_review.ipynb`` (400 digits, every 10th mislabelled, a tiny MLP, 3 checkpoints).
The tests:
* compare the table's suggested-label column with ``explorer.suggested_labels`` and a row's evidence with an
  independent forward pass of every checkpoint in the kernel (softmax of the given and the suggested label) and with
  ``explorer.self_influence`` (the per-checkpoint terms sum to it); the ranking's details never show an influence on
  a test example;
* relabel from the details (the select, then ``a`` on the focused row), undo with ``u``, and compare
  ``explorer.relabels`` and the page's JSON/CSV downloads with ``explorer.export_flagged``;
* flag every row with a suggestion ("flag all shown"), a shift-click range and undo them, checking
  ``explorer.flagged``; brush a range on the histogram with the mouse and check that the table shows exactly the
  rows whose self-influence lies in it; follow "show the line" to the divider at ``explorer.estimated_mislabelled``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from .test_explorer_browser import assert_no_errors, data_indices

expect = pytest.importorskip("playwright.sync_api").expect

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NOTEBOOK = "explorer_review.ipynb"
EXPLORER_CELL, FLAGGED_CELL = 2, 3
N_TRAIN = 400
COMPUTE_TIMEOUT_MS = 180_000

# Per-checkpoint softmax of training example {index} under each checkpoint, computed here from the files (not by the
# explorer): the evidence's P_c(given) and P_c(suggested) must be these.
PROBS = """
import copy as _copy, json as _json, torch as _torch
_m = _copy.deepcopy(model).eval()
_out = []
for _p in checkpoints:
    _m.load_state_dict(_torch.load(_p, weights_only=True))
    with _torch.no_grad():
        _out.append(_torch.softmax(_m(train_dataset[{index}][0][None]), -1)[0].tolist())
print(_json.dumps(_out))
"""


@pytest.fixture(scope="module")
def review(jupyter_server, open_jupyter_page):
    """The review notebook run in the module's frontend, the explorer on its ranking, background work done."""
    if not (REPO / "tracin_widgets/widget/static/widget.js").exists():
        pytest.fail("the widget's JS bundle is missing: run `cd js && npm ci && npm run build` (bash .ci/setup does)")
    shutil.copy(HERE / NOTEBOOK, jupyter_server.root / NOTEBOOK)
    with open_jupyter_page(jupyter_server) as jp:
        jp.open(NOTEBOOK)
        jp.run_all()
        done = jp.cell_output(FLAGGED_CELL).filter(has_text="FLAGGED = []")
        failed = jp.page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        expect(done.or_(failed).first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        if failed.count():
            pytest.fail("the fixture notebook failed:\n" + "\n".join(failed.all_inner_texts())[-4000:])
        jp.widget = jp.cell_output(EXPLORER_CELL)
        expect(jp.widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)
        kernel(jupyter_server, "explorer.wait(120)")
        yield jp


def kernel(server, code: str) -> str:
    return server.kernel_exec(NOTEBOOK, code).strip()


def kernel_json(server, expr: str):
    return json.loads(kernel(server, f"import json as _json\nprint(_json.dumps({expr}))"))


def open_ranking(widget) -> None:
    widget.get_by_test_id("tracin-tab-ranking").click()
    expect(widget.get_by_test_id("tracin-table-row").first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)


def show_only(widget, value: str, total: int | None = None) -> None:
    widget.get_by_test_id("tracin-only-filter").select_option(value)
    if total is not None:
        expect(widget.get_by_test_id("tracin-table-page")).to_contain_text(f"of {total:,} ·")


def reset(server, widget) -> None:
    kernel(server, "explorer.flagged = []\nexplorer.relabels = {}")
    if widget.get_by_test_id("tracin-details").is_visible():
        widget.get_by_test_id("tracin-details-close").click()
    if widget.get_by_test_id("tracin-table-range").is_visible():
        widget.get_by_test_id("tracin-table-range").click()
    show_only(widget, "all", N_TRAIN)


def test_suggested_labels_and_evidence_are_the_kernels(jupyter_server, review):
    jp, widget = review, review.widget
    open_ranking(widget)
    suggested = kernel_json(jupyter_server, "explorer.suggested_labels.tolist()")
    names = kernel_json(jupyter_server, "explorer.class_names")
    assert len(suggested) == N_TRAIN
    with_suggestion = [i for i, s in enumerate(suggested) if s >= 0]
    assert 0 < len(with_suggestion) < N_TRAIN
    rows = widget.get_by_test_id("tracin-table-row")
    cells = widget.get_by_test_id("tracin-suggested-label")
    shown = data_indices(rows)
    assert len(shown) == 50
    texts = cells.all_inner_texts()
    assert texts == [names[suggested[i]] if suggested[i] >= 0 else "" for i in shown]
    # the filter "with a suggested label": exactly those rows
    show_only(widget, "suggested", len(with_suggestion))
    first = data_indices(rows)[0]
    assert suggested[first] >= 0
    rows.first.click()
    details = widget.get_by_test_id("tracin-details")
    expect(details).to_have_attribute("data-index", str(first))
    s = suggested[first]
    expect(details.get_by_test_id("tracin-suggested-label")).to_have_text(names[s])
    label = kernel_json(jupyter_server, f"int(train_dataset[{first}][1])")
    badge = details.get_by_test_id("tracin-suggested-label").get_attribute("title")
    assert badge.startswith(f"the checkpoints' average prediction is {names[s]} (p̄ "), badge
    assert f"not its label {names[label]} (p̄ " in badge, badge
    # the evidence: the example's own self-influence by checkpoint, and P_c(given), P_c(suggested) from the files
    bars = details.get_by_test_id("tracin-evidence-self")
    expect(bars).to_have_count(3, timeout=COMPUTE_TIMEOUT_MS)
    self_terms = bars.evaluate_all("els => els.map(e => [e.dataset.checkpoint, Number(e.dataset.value)])")
    assert [c for c, _ in self_terms] == [f"checkpoint-{e}.pt" for e in range(3)]
    total = kernel_json(jupyter_server, f"float(explorer.self_influence[{first}])")
    assert sum(v for _, v in self_terms) == pytest.approx(total, rel=1e-3)
    probs = np.array(json.loads(kernel(jupyter_server, PROBS.format(index=first))))
    got = details.get_by_test_id("tracin-evidence-prob").evaluate_all(
        "els => els.map(e => [Number(e.dataset.given), Number(e.dataset.suggested)])"
    )
    np.testing.assert_allclose(np.array(got), probs[:, [label, s]], atol=1e-4)
    assert int(np.argmax(probs.mean(0))) == s != label  # the suggestion is the checkpoints' average prediction
    expect(details).not_to_contain_text("Influence on test")
    jp.screenshot("review-evidence-widget", widget.locator(".tracin-root"))
    reset(jupyter_server, widget)
    assert_no_errors(jp)


def test_relabel_accept_undo_and_the_downloads(jupyter_server, review, tmp_path):
    jp, widget = review, review.widget
    open_ranking(widget)
    suggested = kernel_json(jupyter_server, "explorer.suggested_labels.tolist()")
    show_only(widget, "suggested")
    rows = widget.get_by_test_id("tracin-table-row")
    expect(rows.first).to_be_visible()
    i = data_indices(rows)[0]
    label = kernel_json(jupyter_server, f"int(train_dataset[{i}][1])")
    other = next(c for c in range(10) if c not in (label, suggested[i]))
    try:
        rows.first.click()
        select = widget.get_by_test_id("tracin-relabel")
        expect(select).to_be_visible()
        select.select_option(str(other))
        expect(rows.first.get_by_test_id("tracin-new-label")).to_have_text(str(other))
        assert kernel_json(jupyter_server, "{str(k): v for k, v in explorer.relabels.items()}") == {str(i): other}
        rows.first.focus()
        jp.page.keyboard.press("a")  # accept the suggestion of the focused row
        expect(rows.first.get_by_test_id("tracin-new-label")).to_have_text(str(suggested[i]))
        assert kernel_json(jupyter_server, "{str(k): v for k, v in explorer.relabels.items()}") == {
            str(i): suggested[i]
        }
        expect(widget.get_by_test_id("tracin-flag-count")).to_contain_text("1 relabelled")
        jp.page.keyboard.press("u")  # undo: back to the first relabel
        expect(rows.first.get_by_test_id("tracin-new-label")).to_have_text(str(other))
        jp.page.keyboard.press("a")
        expect(rows.first.get_by_test_id("tracin-new-label")).to_have_text(str(suggested[i]))
        rows.nth(1).get_by_test_id("tracin-row-flag").check()  # one flagged row too
        for fmt in ("json", "csv"):
            with jp.page.expect_download() as info:
                widget.get_by_test_id(f"tracin-export-{fmt}").click()
            got = Path(info.value.path()).read_bytes()
            ref = tmp_path / f"ref-review.{fmt}"
            kernel(jupyter_server, f"explorer.export_flagged({str(ref)!r})")
            assert got == ref.read_bytes(), (got, ref.read_bytes())
        records = json.loads((tmp_path / "ref-review.json").read_text())
        assert [r["index"] for r in records] == sorted([i, data_indices(rows)[1]])
        jp.screenshot("review-relabel-widget", widget.locator(".tracin-root"))
    finally:
        reset(jupyter_server, widget)
    assert_no_errors(jp)


def test_bulk_flags_shift_click_and_undo(jupyter_server, review):
    jp, widget = review, review.widget
    open_ranking(widget)
    suggested = np.array(kernel_json(jupyter_server, "explorer.suggested_labels.tolist()"))
    want = np.flatnonzero(suggested >= 0).tolist()
    show_only(widget, "suggested", len(want))
    rows = widget.get_by_test_id("tracin-table-row")
    count = widget.get_by_test_id("tracin-flag-count")
    try:
        bulk = widget.get_by_test_id("tracin-bulk-flag")
        expect(bulk).to_have_text(f"⚑ Flag all {len(want):,} shown")
        bulk.click()  # every page of the filter, not only the one on screen
        expect(count).to_contain_text(f"⚑ {len(want):,} flagged")
        assert kernel_json(jupyter_server, "explorer.flagged") == want
        jp.page.keyboard.press("u")  # one undo step
        expect(count).to_contain_text("⚑ 0 flagged")
        assert kernel_json(jupyter_server, "explorer.flagged") == []

        show_only(widget, "all", N_TRAIN)
        page = data_indices(rows)
        rows.nth(2).click()
        rows.nth(6).click(modifiers=["Shift"])  # rows 2..6 flagged, one write
        expect(count).to_contain_text("⚑ 5 flagged")
        assert kernel_json(jupyter_server, "explorer.flagged") == sorted(page[2:7])
        for r in range(2, 7):
            expect(rows.nth(r).get_by_test_id("tracin-row-flag")).to_be_checked()
        expect(rows.nth(7).get_by_test_id("tracin-row-flag")).not_to_be_checked()
        jp.page.keyboard.press("u")
        expect(count).to_contain_text("⚑ 0 flagged")
        widget.get_by_test_id("tracin-bulk-flag-page").click()  # this page only
        expect(count).to_contain_text("⚑ 50 flagged")
        assert kernel_json(jupyter_server, "explorer.flagged") == sorted(page)
    finally:
        reset(jupyter_server, widget)
    assert_no_errors(jp)


def test_histogram_brush_shows_exactly_the_rows_in_the_range(jupyter_server, review):
    jp, widget = review, review.widget
    open_ranking(widget)
    hist = kernel_json(jupyter_server, "explorer.stats['histogram']")
    scores = np.array(kernel_json(jupyter_server, "explorer.self_influence.tolist()"))
    counts, edges = hist["counts"], hist["edges"]
    # a range of bins holding between 10 and 60 rows, from the top end (the suspicious tail)
    b = max(i for i, c in enumerate(counts) if c)
    a = b
    while a > 0 and sum(counts[a : b + 1]) < 10:
        a -= 1
    lo, hi = edges[a], edges[b + 1]
    inside = np.flatnonzero((scores >= lo) & (scores <= hi))
    assert 0 < len(inside) <= 60, (a, b, len(inside))
    hits = widget.get_by_test_id("tracin-histogram").locator(".tracin-hit")
    start, end = hits.nth(b).bounding_box(), hits.nth(a).bounding_box()
    mouse = jp.page.mouse
    try:
        mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
        mouse.down()
        mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, steps=8)  # dragged right to left
        mouse.up()
        chip = widget.get_by_test_id("tracin-table-range")
        expect(chip).to_be_visible()
        expect(widget.get_by_test_id("tracin-table-page")).to_contain_text(f"of {len(inside):,} ·")
        shown = data_indices(widget.get_by_test_id("tracin-table-row"))
        assert len(shown) == min(50, len(inside))
        assert set(shown) <= set(inside.tolist())
        jp.screenshot("review-brush-widget", widget.locator(".tracin-root"))
        chip.click()  # the visible way back
        expect(chip).to_be_hidden()
        expect(widget.get_by_test_id("tracin-table-page")).to_contain_text(f"of {N_TRAIN:,} ·")
    finally:
        reset(jupyter_server, widget)
    assert_no_errors(jp)


def test_where_to_stop_divider_and_marker(jupyter_server, review):
    jp, widget = review, review.widget
    open_ranking(widget)
    n = kernel_json(jupyter_server, "explorer.estimated_mislabelled")
    assert isinstance(n, int) and 0 < n < N_TRAIN
    expect(widget.get_by_test_id("tracin-estimate")).to_contain_text(f"≈ {n:,} labels estimated wrong")
    marker = widget.get_by_test_id("tracin-found-estimate")
    assert float(marker.get_attribute("data-x")) == pytest.approx(n / N_TRAIN)
    widget.get_by_test_id("tracin-goto-estimate").click()
    divider = widget.get_by_test_id("tracin-estimate-divider")
    expect(divider).to_have_text(f"≈ {n:,} labels estimated wrong above this line")
    ranks = widget.locator(".tracin-table tbody tr").evaluate_all(
        "trs => trs.map(t => t.dataset.testid === 'tracin-estimate-divider' ? 'line'"
        " : Number(t.querySelector('.tracin-col-rank').textContent.replace(/,/g, '')))"
    )
    at = ranks.index("line")
    if at > 0:
        assert ranks[at - 1] == n
    if at + 1 < len(ranks):
        assert ranks[at + 1] == n + 1
    divider.scroll_into_view_if_needed()
    jp.screenshot("review-divider-widget", widget.locator(".tracin-root"))
    assert_no_errors(jp)


def test_status_line_counts_the_kernels_badges(jupyter_server, review):
    jp, widget = review, review.widget
    widget.get_by_test_id("tracin-tab-test").click()
    status = widget.get_by_test_id("tracin-gallery-status")
    expect(status).to_have_text(re.compile(r"^test #\d+"), timeout=COMPUTE_TIMEOUT_MS)
    g = kernel_json(
        jupyter_server,
        "[explorer.query['index'], sum(bool(r['badge']) for r in explorer.gallery['proponents']"
        " + explorer.gallery['opponents']), len(explorer.gallery['proponents'] + explorer.gallery['opponents'])]",
    )
    index, badged, tiles = g
    want = f"test #{index}" + (f" · {badged} of {tiles} tiles: ! a suggested label" if badged else "")
    expect(status).to_have_text(want)
    for title in widget.get_by_test_id("tracin-badge").evaluate_all("els => els.map(e => e.title)"):
        assert title.startswith("the checkpoints' average prediction is "), title
    assert_no_errors(jp)
