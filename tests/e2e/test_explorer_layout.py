"""The explorer's layout, first tab and keys in a real browser (JupyterLab and Notebook 7).

One notebook per frontend (built from ``explorer_digits.ipynb``'s set-up cell) shows three explorers on the same tiny
digits model: one with a test set, one without (``InfluenceExplorer(model, checkpoints, train_dataset)``, the usage
people are given), one whose engine warns (a hooked layer that is not the final one). The tests check:
* at 1024 px (JupyterLab with its file browser open) and 1400 px, with the details panel open: the test strip shows
  whole tiles only and as many as fit, no caption is cut, nothing overflows the widget horizontally;
* without a test set the explorer opens on the self-influence ranking, shows no test strip nor its filter, and a
  row's "Show its proponents" explains that training example (checked against a fresh engine in the kernel);
* the engine's notes show above the views word for word, light and dark, at both widths, and only where there are
  some;
* keys act on the focused tile: ``f`` flags the focused proponent (not the one in the details panel), the arrows
  move between tiles without changing the test example.
Screenshots go to ``tests/e2e/artifacts/`` (gitignored).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTIFACTS = HERE / "artifacts"
NOTEBOOK = "explorer_layout.ipynb"
K = 5
N_TRAIN = 400
WITH_TEST, TRAIN_ONLY, NOTED, DONE = 1, 2, 3, 4  # cells: setup, explorer, explorer without a test set, one with
# engine notes, done marker
COMPUTE_TIMEOUT_MS = 180_000

EXPLORERS = f"""from tracin_widgets.widget import InfluenceExplorer

K = {K}
NAMES = [str(d) for d in range(10)]
explorer = InfluenceExplorer(model, checkpoints, train_dataset, test_dataset, class_names=NAMES, k=K)
explorer
"""
TRAIN_ONLY_CODE = """train_only = InfluenceExplorer(model, checkpoints, train_dataset, class_names=NAMES, k=K)
display(train_only)
"""
# An explorer whose engine warns on the background thread (the hooked layer is not the final one): the warnings are
# silenced in the kernel, and the widget still lists them as notes.
NOTED_CODE = """import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    noted = InfluenceExplorer(model, checkpoints, train_dataset, test_dataset, final_fc_layer="1", k=K).wait(120)
display(noted)
"""

# Whole tiles, uncut captions, no horizontal overflow: measured in the page.
LAYOUT_JS = """(root) => {
  const items = root.querySelector('.tracin-strip-items');
  const box = items.getBoundingClientRect();
  const cs = getComputedStyle(items);
  const content = box.width - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const tiles = [...items.querySelectorAll('.tracin-test-item')];
  const w = tiles.length ? tiles[0].getBoundingClientRect().width : 76;
  const caps = [...root.querySelectorAll(
    '.tracin-test-item > span, .tracin-test-item span span, ' +
    '.tracin-tile-meta, .tracin-tile-meta > span, .tracin-tile-score'
  )].filter((c) => c.getClientRects().length);
  return {
    fit: Math.max(1, Math.floor((content + 6) / (w + 6))),
    tiles: tiles.length,
    cut_tiles: tiles.filter((t) => t.getBoundingClientRect().right > box.right + 0.5).map((t) => t.dataset.index),
    cut_captions: caps.filter((c) => c.scrollWidth > c.clientWidth).map((c) => c.textContent),
    n_captions: caps.length,
    root_overflow: root.scrollWidth - root.clientWidth,
    root_width: root.clientWidth,
  };
}"""


def _notebook() -> dict:
    nb = json.loads((HERE / "explorer_digits.ipynb").read_text())
    setup = nb["cells"][1]
    assert "N_TRAIN" in "".join(setup["source"]), "explorer_digits.ipynb's cell 1 is no longer the set-up cell"

    def code(src: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}

    cells = [setup, code(EXPLORERS), code(TRAIN_ONLY_CODE), code(NOTED_CODE), code('print("DONE")')]
    return {**nb, "cells": [{**c, "outputs": [], "execution_count": None} for c in cells]}


@pytest.fixture(scope="module")
def page(jupyter_server, open_jupyter_page):
    if not (REPO / "tracin_widgets/widget/static/widget.js").exists():
        pytest.fail("the widget's JS bundle is missing: run `cd js && npm ci && npm run build` (bash .ci/setup does)")
    (jupyter_server.root / NOTEBOOK).write_text(json.dumps(_notebook()))
    with open_jupyter_page(jupyter_server) as jp:
        jp.open(NOTEBOOK)
        jp.run_all()
        done = jp.cell_output(DONE).filter(has_text="DONE")
        failed = jp.page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        expect(done.or_(failed).first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        if failed.count():
            pytest.fail("the notebook failed:\n" + "\n".join(failed.all_inner_texts())[-4000:])
        for cell in (WITH_TEST, TRAIN_ONLY, NOTED):
            expect(jp.cell_output(cell).get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)
        yield jp


def widget_of(jp, cell: int):
    return jp.cell_output(cell).locator(".tracin-root")


def set_width(jp, width: int, file_browser: bool) -> None:
    jp.page.set_viewport_size({"width": width, "height": 1000})
    if jp.server.frontend == "lab":
        if file_browser:
            jp.page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")
            expect(jp.page.locator("#filebrowser")).to_be_visible()
        else:
            jp.page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
            expect(jp.page.locator("#filebrowser")).to_be_hidden()


def assert_no_errors(jp) -> None:
    errors = [e.inner_text() for e in jp.page.get_by_test_id("tracin-error").all() if e.is_visible()]
    assert errors == []
    assert jp.unexpected_page_errors == []


@pytest.mark.parametrize(("width", "file_browser"), [(1024, True), (1400, False)], ids=["1024-files", "1400"])
def test_whole_tiles_uncut_captions_no_overflow(page, width, file_browser):
    jp = page
    set_width(jp, width, file_browser)
    root = widget_of(jp, WITH_TEST)
    root.scroll_into_view_if_needed()
    proponents = root.get_by_test_id("tracin-proponent")
    expect(proponents).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
    proponents.first.click()  # the details panel open: the narrowest layout
    expect(root.get_by_test_id("tracin-details")).to_be_visible()
    # The strip asks for a new page size after the resize; wait until the kernel's page matches the width.
    jp.page.wait_for_function(
        f"(root) => ({LAYOUT_JS})(root).tiles === ({LAYOUT_JS})(root).fit", arg=root.element_handle(), timeout=30_000
    )
    m = root.evaluate(LAYOUT_JS)
    name = f"{width}{'-files' if file_browser else ''}"
    jp.screenshot(f"layout-{name}")
    jp.screenshot(f"layout-{name}-widget", root)
    assert m["tiles"] >= 2 and m["tiles"] == m["fit"], m
    assert m["cut_tiles"] == [], m
    assert m["n_captions"] > 20 and m["cut_captions"] == [], m
    assert m["root_overflow"] <= 0, m

    root.get_by_test_id("tracin-tab-ranking").click()  # the ranking and its charts fit too
    expect(root.get_by_test_id("tracin-table-row").first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
    jp.screenshot(f"layout-{name}-ranking-widget", root)
    assert root.evaluate("(r) => r.scrollWidth - r.clientWidth") <= 0
    root.get_by_test_id("tracin-tab-test").click()
    root.get_by_test_id("tracin-details-close").click()

    other = widget_of(jp, TRAIN_ONLY)  # and the explorer without a test set
    other.scroll_into_view_if_needed()
    jp.screenshot(f"layout-{name}-train-only-widget", other)
    assert other.evaluate("(r) => r.scrollWidth - r.clientWidth") <= 0
    set_width(jp, 1400, False)
    assert_no_errors(jp)


def test_engine_notes_show_above_the_views_in_both_themes_and_widths(page):
    """The notes box: the kernel's ``noted.info["notes"]`` word for word, in light and dark, at 1024 px (file browser
    open) and 1400 px, nothing cut or overflowing; the explorers without notes show no box."""
    jp = page
    root = widget_of(jp, NOTED)
    notes = json.loads(jp.server.kernel_exec(NOTEBOOK, 'import json; print(json.dumps(noted.info["notes"]))'))
    assert len(notes) == 1 and notes[0].startswith("final_fc_layer '1' (Linear) is not the model's final linear")
    try:
        for theme in ("JupyterLab Light", "JupyterLab Dark"):
            jp.set_theme(theme)
            for width, files in ((1024, True), (1400, False)):
                set_width(jp, width, files)
                root.scroll_into_view_if_needed()
                box = root.get_by_test_id("tracin-notes")
                expect(box).to_be_visible()
                assert root.get_by_test_id("tracin-note").all_inner_texts() == notes
                assert box.evaluate("(b) => b.scrollWidth - b.clientWidth") <= 0
                assert root.evaluate("(r) => r.scrollWidth - r.clientWidth") <= 0
                tag = f"{'dark' if 'Dark' in theme else 'light'}-{width}"
                jp.screenshot(f"notes-{tag}-widget", root)
    finally:
        jp.set_theme("JupyterLab Light")
        set_width(jp, 1400, False)
    for cell in (WITH_TEST, TRAIN_ONLY):
        expect(widget_of(jp, cell).get_by_test_id("tracin-notes")).to_be_hidden()
    assert_no_errors(jp)


def test_without_a_test_set_it_opens_on_the_ranking_and_explains_a_training_example(jupyter_server, page):
    jp = page
    root = widget_of(jp, TRAIN_ONLY)
    root.scroll_into_view_if_needed()
    expect(root.get_by_test_id("tracin-tab-ranking")).to_have_attribute("aria-selected", "true")
    expect(root.get_by_test_id("tracin-tab-test")).to_have_attribute("aria-selected", "false")
    rows = root.get_by_test_id("tracin-table-row")
    expect(rows.first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
    expect(root.get_by_test_id("tracin-misclassified-filter")).to_be_hidden()
    expect(root.get_by_test_id("tracin-test-item")).to_have_count(0)
    assert jupyter_server.kernel_exec(NOTEBOOK, "print(train_only.view)").strip() == "ranking"

    root.get_by_test_id("tracin-tab-test").click()  # before a choice: a note says how
    note = root.get_by_test_id("tracin-no-test-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("No test set")
    expect(root.locator(".tracin-strip")).to_be_hidden()
    jp.screenshot("train-only-note-widget", root)
    note.get_by_test_id("tracin-goto-ranking").click()

    index = int(rows.nth(1).get_attribute("data-index"))
    rows.nth(1).click()
    details = root.get_by_test_id("tracin-details")
    expect(details).to_have_attribute("data-index", str(index))
    details.get_by_test_id("tracin-walk").click()
    expect(root.get_by_test_id("tracin-tab-test")).to_have_attribute("aria-selected", "true")
    expect(root.get_by_test_id("tracin-gallery-status")).to_have_text(
        re.compile(rf"^training #{index}\b"), timeout=COMPUTE_TIMEOUT_MS
    )
    expect(note).to_be_hidden()
    proponents = root.get_by_test_id("tracin-proponent")
    expect(proponents).to_have_count(K)
    jp.screenshot("train-only-galleries-widget", root)
    oracle = (
        "import json as _json\n"
        "from tracin_widgets.influence import TracInCPFast as _Fast\n"
        "_engine = _Fast(model, model[3], train_dataset, checkpoints, loss_fn=nn.CrossEntropyLoss(reduction='sum'))\n"
        f"_x, _y = train_dataset[{index}]\n"
        "print(_json.dumps(_engine.influence((_x[None], _y[None])).reshape(-1).tolist()))\n"
    )
    scores = np.array(json.loads(jupyter_server.kernel_exec(NOTEBOOK, oracle)))
    assert scores.shape == (N_TRAIN,)
    shown = [int(v) for v in proponents.evaluate_all("els => els.map(e => e.dataset.index)")]
    np.testing.assert_allclose(
        scores[shown], np.sort(scores)[::-1][:K], rtol=0, atol=1e-4 * float(np.abs(scores).max())
    )
    assert jupyter_server.kernel_exec(NOTEBOOK, "print(train_only.view)").strip() == "test"
    details.get_by_test_id("tracin-details-close").click()
    assert_no_errors(jp)


def test_keys_act_on_the_focused_tile(jupyter_server, page):
    jp = page
    root = widget_of(jp, WITH_TEST)
    root.scroll_into_view_if_needed()
    proponents = root.get_by_test_id("tracin-proponent")
    expect(proponents).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
    selected = jupyter_server.kernel_exec(NOTEBOOK, "print(explorer.selected_test)").strip()
    first, second, third = (int(proponents.nth(i).get_attribute("data-index")) for i in range(3))
    proponents.first.click()  # the details panel shows the first proponent
    expect(root.get_by_test_id("tracin-details")).to_have_attribute("data-index", str(first))
    proponents.nth(1).focus()
    jp.page.keyboard.press("f")  # flags the focused tile, not the one in the details panel
    expect(proponents.nth(1)).to_have_class(re.compile(r"\bis-flagged\b"))
    expect(proponents.first).not_to_have_class(re.compile(r"\bis-flagged\b"))
    assert jupyter_server.kernel_exec(NOTEBOOK, "print(explorer.flagged)").strip() == f"[{second}]"
    jp.page.keyboard.press("ArrowRight")  # the next tile, the same test example
    expect(proponents.nth(2)).to_be_focused()
    jp.page.keyboard.press("f")
    expect(proponents.nth(2)).to_have_class(re.compile(r"\bis-flagged\b"))
    assert jupyter_server.kernel_exec(NOTEBOOK, "print(explorer.flagged)").strip() == str(sorted([second, third]))
    assert jupyter_server.kernel_exec(NOTEBOOK, "print(explorer.selected_test)").strip() == selected
    jp.page.keyboard.press("u")  # undo the last flag change
    expect(proponents.nth(2)).not_to_have_class(re.compile(r"\bis-flagged\b"))
    jp.page.keyboard.press("?")
    help_ = root.get_by_test_id("tracin-help")
    expect(help_).to_be_visible()
    assert help_.locator("kbd", has_text=re.compile(r"^j k$")).count() == 1
    jp.screenshot("help-widget", root)
    jp.page.keyboard.press("Escape")
    expect(help_).to_be_hidden()
    jupyter_server.kernel_exec(NOTEBOOK, "explorer.flagged = []")
    root.get_by_test_id("tracin-details-close").click()
    assert jp.page.locator(".jp-Notebook .jp-Cell").count() == DONE + 1  # the keys did not reach Jupyter's shortcuts
    assert_no_errors(jp)
