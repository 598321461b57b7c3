"""InfluenceExplorer in a real browser: JupyterLab and Notebook 7 (parametrised by the ``jupyter_server`` fixture).

One page per frontend (module-scoped ``explorer`` fixture) runs ``explorer_digits.ipynb`` (tiny seeded MLP on
scikit-learn digits, 3 checkpoints). The tests then:
* click a test example, wait for its k proponents / opponents and check them against a fresh engine's scores
  computed in the kernel; flag a proponent in the browser (details toggle, then the ``f`` key) and check
  ``explorer.flagged`` in the kernel; clear it from Python and check the browser follows;
* measure the text contrast of every text in the widget (flagged states, hover, table) in the light and dark
  themes against WCAG AA 4.5:1 (screenshots of both go to ``tests/e2e/artifacts/``, gitignored);
* check the details panel's layout survives the host page's CSS (Jupyter styles ``dl``/``dt`` in outputs);
* check every drawn image keeps its aspect ratio (strip, tiles, query, details, table) and that the galleries
  lay out k = 5 in one row and k = 10 in two rows of five inside the widget, with the details panel open.
Every test ends by asserting that no ``tracin-error`` banner is visible and that the page raised no errors.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"
REPO = HERE.parents[1]
NOTEBOOK = "explorer_digits.ipynb"
K = 5  # the notebook's K
N_TRAIN = 400  # the notebook's N_TRAIN
EXPLORER_CELL, FLAGGED_CELL = 2, 3  # cells: about (markdown), setup, explorer, print(explorer.flagged)
N_CELLS = 4
COMPUTE_TIMEOUT_MS = 180_000  # kernel start + training + background pipeline on 2 busy cores
MIN_CONTRAST = 4.5  # WCAG AA for normal text

# Independent oracle: a fresh engine (not the explorer's) with the documented defaults, full score row of one
# test example. The widget's galleries must be its top-k (descending) and bottom-k (ascending) by score.
ORACLE = """
import json as _json
from tracin_widgets.influence import TracInCPFast as _Fast
_engine = _Fast(model, model[3], train_dataset, checkpoints, loss_fn=nn.CrossEntropyLoss(reduction="sum"))
_x, _y = test_dataset[{index}]
print(_json.dumps(_engine.influence((_x[None], _y[None])).reshape(-1).tolist()))
"""

# Colour helpers shared by the contrast checks: WCAG contrast of an element's text against the background actually
# behind it (translucent colours are composited; any CSS colour syntax, e.g. color-mix(), is normalised through a
# canvas).
_COLOR_JS = """
  const ctx = Object.assign(document.createElement('canvas'), { width: 1, height: 1 })
    .getContext('2d', { willReadFrequently: true });
  const rgba = (css) => {
    ctx.clearRect(0, 0, 1, 1); ctx.fillStyle = '#000'; ctx.fillStyle = css; ctx.fillRect(0, 0, 1, 1);
    const d = ctx.getImageData(0, 0, 1, 1).data; return [d[0], d[1], d[2], d[3] / 255];
  };
  const over = (top, below) => [0, 1, 2].map((i) => top[3] * top[i] + (1 - top[3]) * below[i]).concat(1);
  const lum = (c) => {
    const [r, g, b] = c.slice(0, 3)
      .map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const contrast = (el, color) => {
    const layers = [];
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
      const c = rgba(getComputedStyle(n).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    const bg = layers.reverse().reduce((acc, c) => over(c, acc), [255, 255, 255, 1]);
    const fg = over(rgba(color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    return { ratio: (hi + 0.05) / (lo + 0.05), fg: fg.slice(0, 3).map(Math.round), bg: bg.slice(0, 3).map(Math.round) };
  };
"""

CONTRAST_JS = "(el) => {" + _COLOR_JS + "  return contrast(el, getComputedStyle(el).color);\n}"

# Every visible text of the widget (elements with their own text, <select>s, SVG <text>) with its contrast ratio
# (SVG text uses its fill). Disabled controls are exempt (WCAG 1.4.3).
SCAN_CONTRAST_JS = (
    "(root) => {"
    + _COLOR_JS
    + """
  const out = [];
  for (const el of [root, ...root.querySelectorAll('*')]) {
    const svgText = el instanceof SVGElement && el.tagName.toLowerCase() === 'text';
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!(own || svgText || el.tagName === 'SELECT')) continue;
    const box = el.getBoundingClientRect();
    if (box.width <= 1 || box.height <= 1 || el.closest('[hidden], .tracin-sr-only, :disabled')) continue;
    const cs = getComputedStyle(el);
    if (cs.visibility !== 'visible') continue;
    out.push({ ...contrast(el, svgText ? cs.fill : cs.color), text: (el.textContent || '').trim().slice(0, 40),
      cls: el.getAttribute('class') || el.tagName.toLowerCase() });
  }
  return out;
}
"""
)

# Rendered box vs pixel size of every visible image canvas of the widget.
IMAGE_BOXES_JS = """
(root) => [...root.querySelectorAll('canvas.tracin-img')].filter((c) => c.getClientRects().length).map((c) => {
  const r = c.getBoundingClientRect();
  return { cls: c.className, w: r.width, h: r.height, iw: c.width, ih: c.height };
})
"""


def low_contrast(widget, where: str) -> list[str]:
    """Texts of the widget below MIN_CONTRAST (deduplicated by class and colours); fails if nothing was scanned."""
    texts = widget.locator(".tracin-root").evaluate(SCAN_CONTRAST_JS)
    assert len(texts) > 20, f"{where}: the contrast scan found only {len(texts)} texts"
    low, seen = [], set()
    for t in sorted(texts, key=lambda t: t["ratio"]):
        key = (t["cls"], tuple(t["fg"]), tuple(t["bg"]))
        if t["ratio"] < MIN_CONTRAST and key not in seen:
            seen.add(key)
            low.append(f"{where}: {t['cls']} {t['text']!r}: {t['ratio']:.2f}:1 ({t['fg']} on {t['bg']})")
    return low


def visible_errors(root) -> list[str]:
    return [e.inner_text() for e in root.get_by_test_id("tracin-error").all() if e.is_visible()]


def data_indices(locator) -> list[int]:
    return [int(v) for v in locator.evaluate_all("els => els.map(e => e.dataset.index)")]


def assert_no_errors(explorer) -> None:
    assert visible_errors(explorer.widget) == []
    assert explorer.unexpected_page_errors == []


@pytest.fixture(scope="module")
def explorer(jupyter_server, open_jupyter_page):
    """The fixture notebook run in the module's frontend, with the explorer rendered; shared by the tests below."""
    if not (REPO / "tracin_widgets/widget/static/widget.js").exists():
        pytest.fail("the widget's JS bundle is missing: run `cd js && npm ci && npm run build` (bash .ci/setup does)")
    shutil.copy(HERE / NOTEBOOK, jupyter_server.root / NOTEBOOK)
    with open_jupyter_page(jupyter_server) as jp:
        jp.open(NOTEBOOK)
        jp.run_all()
        # All cells ran: the print cell shows the initial (empty) flags (or a cell failed: fail with its traceback),
        # and the explorer rendered its test examples.
        done = jp.cell_output(FLAGGED_CELL).filter(has_text="FLAGGED = []")
        failed = jp.page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        expect(done.or_(failed).first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        if failed.count():
            pytest.fail("the fixture notebook failed:\n" + "\n".join(failed.all_inner_texts())[-4000:])
        jp.widget = jp.cell_output(EXPLORER_CELL)
        expect(jp.widget.get_by_test_id("tracin-test-item").first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        yield jp


@pytest.fixture(autouse=True)
def _artifacts_on_failure(request, jupyter_server):
    """After a failed test: a screenshot and the server log tail in tests/e2e/artifacts/ (for CI debugging)."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "explorer" in request.fixturenames:
        jp = request.getfixturevalue("explorer")
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        try:
            jp.screenshot(f"FAILED-{name}")
        except Exception as e:  # a dead page must not hide the test's own failure
            print(f"no failure screenshot: {e}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"FAILED-{name}-server.log").write_text(jupyter_server.log_tail(20_000))


def kernel_flagged(server) -> str:
    return server.kernel_exec(NOTEBOOK, "print(explorer.flagged)").strip()


def test_select_and_flag_reaches_the_kernel(jupyter_server, explorer):
    jp, page, widget = explorer, explorer.page, explorer.widget
    assert visible_errors(widget) == []

    # Click a test example other than the preselected first one -> its k proponents and k opponents.
    test_items = widget.get_by_test_id("tracin-test-item")
    target = test_items.nth(2)
    test_index = int(target.get_attribute("data-index"))
    assert test_index != int(test_items.first.get_attribute("data-index"))
    target.click()
    expect(target).to_have_attribute("aria-selected", "true")
    expect(widget.get_by_test_id("tracin-gallery-status")).to_have_text(
        re.compile(rf"^test #{test_index}\b"), timeout=COMPUTE_TIMEOUT_MS
    )
    expect(widget.locator("section.tracin-gallery")).not_to_have_class(re.compile(r"\bis-stale\b"))
    proponents = widget.get_by_test_id("tracin-proponent")
    opponents = widget.get_by_test_id("tracin-opponent")
    expect(proponents).to_have_count(K)
    expect(opponents).to_have_count(K)
    prop_idx, opp_idx = data_indices(proponents), data_indices(opponents)
    assert len(set(prop_idx)) == K and len(set(opp_idx)) == K

    scores = np.array(json.loads(jupyter_server.kernel_exec(NOTEBOOK, ORACLE.format(index=test_index))))
    assert scores.shape == (N_TRAIN,)
    tol = 1e-4 * float(np.abs(scores).max())
    # The oracle's top-k / bottom-k scores, in order (indices of tied scores may legitimately swap).
    np.testing.assert_allclose(scores[prop_idx], np.sort(scores)[::-1][:K], rtol=0, atol=tol)
    np.testing.assert_allclose(scores[opp_idx], np.sort(scores)[:K], rtol=0, atol=tol)

    # Flag the first proponent: open its details, press the flag toggle.
    first = prop_idx[0]
    proponents.first.click()
    details = widget.get_by_test_id("tracin-details")
    expect(details).to_be_visible()
    expect(details).to_have_attribute("data-index", str(first))
    toggle = details.get_by_test_id("tracin-flag-toggle")
    expect(toggle).to_have_attribute("data-index", str(first))
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(proponents.first).to_have_class(re.compile(r"\bis-flagged\b"))

    # The kernel sees it: re-run the print cell (ordering-safe), and ask through a second kernel client.
    jp.run_cell(FLAGGED_CELL)
    expect(jp.cell_output(FLAGGED_CELL)).to_have_text(f"FLAGGED = [{first}]")
    assert kernel_flagged(jupyter_server) == f"[{first}]"

    # Keyboard: close the details (Escape), focus the second proponent, press f -> flagged too.
    second = prop_idx[1]
    toggle.press("Escape")  # keys go to the focused element inside the widget
    expect(details).to_be_hidden()
    proponents.nth(1).focus()
    page.keyboard.press("f")
    expect(proponents.nth(1)).to_have_class(re.compile(r"\bis-flagged\b"))
    jp.run_cell(FLAGGED_CELL)
    expect(jp.cell_output(FLAGGED_CELL)).to_have_text(f"FLAGGED = {sorted([first, second])}")
    assert jp.page.locator(".jp-Notebook .jp-Cell").count() == N_CELLS  # the key did not reach Jupyter's shortcuts

    # Python -> browser: clearing the flags in the kernel un-flags the tiles.
    jupyter_server.kernel_exec(NOTEBOOK, "explorer.flagged = []")
    expect(widget.locator(".tracin-tile.is-flagged")).to_have_count(0)
    assert kernel_flagged(jupyter_server) == "[]"
    assert_no_errors(jp)


def test_flagged_states_are_readable_in_light_and_dark_themes(jupyter_server, explorer):
    jp, page, widget = explorer, explorer.page, explorer.widget
    proponents = widget.get_by_test_id("tracin-proponent")
    expect(proponents).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
    index = int(proponents.first.get_attribute("data-index"))
    jupyter_server.kernel_exec(NOTEBOOK, f"explorer.flagged = [{index}]")  # Python -> browser
    expect(proponents.first).to_have_class(re.compile(r"\bis-flagged\b"))
    proponents.first.click()
    toggle = widget.get_by_test_id("tracin-details").get_by_test_id("tracin-flag-toggle")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    # Background pipeline (self-influence, predictions) finished: the progress bar hides; stable screenshots.
    expect(widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)

    low = []
    for theme, name in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
        jp.set_theme(theme)
        page.mouse.move(0, 0)
        jp.screenshot(name)
        jp.screenshot(f"{name}-widget", widget)
        checks = {
            "flagged tile label": proponents.first.locator(".tracin-tile-label"),
            "flagged tile index": proponents.first.locator(".tracin-tile-index"),
            "flagged tile score": proponents.first.locator(".tracin-tile-score"),
            "flag toggle (flagged)": toggle.locator(".tracin-flag-on"),
        }
        for what, loc in checks.items():
            c = loc.evaluate(CONTRAST_JS)
            if c["ratio"] < MIN_CONTRAST:
                low.append(f"{name}: {what}: {c['ratio']:.2f}:1 ({c['fg']} on {c['bg']})")
        low += low_contrast(widget, f"{name} explore")
        toggle.hover()  # the pointer is still on the toggle right after flagging
        c = toggle.locator(".tracin-flag-on").evaluate(CONTRAST_JS)
        if c["ratio"] < MIN_CONTRAST:
            low.append(f"{name}: flag toggle (flagged, hovered): {c['ratio']:.2f}:1 ({c['fg']} on {c['bg']})")
        jp.screenshot(f"{name}-toggle-hover", widget.get_by_test_id("tracin-details"))
        low += low_contrast(widget, f"{name} explore, toggle hovered")
        # The table: a flagged row (hovered, then another row hovered), mispredicted rows, the charts' ticks.
        widget.get_by_test_id("tracin-tab-ranking").click()
        rows = widget.get_by_test_id("tracin-table-row")
        expect(rows.first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        row = next(rows.nth(i) for i in (1, 2) if int(rows.nth(i).get_attribute("data-index")) != index)
        row.get_by_test_id("tracin-row-flag").check()
        expect(row).to_have_class(re.compile(r"\bis-flagged\b"))
        row.hover()
        low += low_contrast(widget, f"{name} table, flagged row hovered")
        rows.nth(3).hover()
        low += low_contrast(widget, f"{name} table, row hovered")
        jp.screenshot(f"{name}-table-widget", widget)
        jupyter_server.kernel_exec(NOTEBOOK, f"explorer.flagged = [{index}]")
        expect(row).not_to_have_class(re.compile(r"\bis-flagged\b"))
        widget.get_by_test_id("tracin-tab-test").click()
        page.mouse.move(0, 0)
    jp.set_theme("JupyterLab Light")
    jupyter_server.kernel_exec(NOTEBOOK, "explorer.flagged = []")
    assert low == [], f"text contrast below {MIN_CONTRAST}:1: {low}"
    assert_no_errors(jp)


def test_details_panel_layout_survives_jupyter_css(explorer):
    """Jupyter's output-area CSS floats ``dt`` at 20% width; the details' term/value pairs must stay side by side."""
    widget = explorer.widget
    proponents = widget.get_by_test_id("tracin-proponent")
    expect(proponents).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
    index = int(proponents.nth(2).get_attribute("data-index"))
    proponents.nth(2).click()
    details = widget.get_by_test_id("tracin-details")
    expect(details).to_have_attribute("data-index", str(index))
    expect(details.get_by_test_id("tracin-flag-toggle")).to_have_attribute("data-index", str(index))
    rows = details.locator(".tracin-dl").evaluate(
        """dl => [...dl.querySelectorAll('dt')].map(dt => {
             const dd = dt.nextElementSibling, a = dt.getBoundingClientRect(), b = dd.getBoundingClientRect();
             return { term: dt.textContent, value: dd.textContent, same_row: Math.abs(a.top - b.top) < 2,
                      value_right_of_term: b.left >= a.right - 1, term_clipped: dt.scrollWidth > dt.clientWidth + 1 };
           })"""
    )
    assert [r["term"] for r in rows] == ["index", "label", "suggested", "predicted", "self-influence"]
    bad = [r for r in rows if not (r["same_row"] and r["value_right_of_term"]) or r["term_clipped"]]
    assert bad == [], f"details panel rows broken by the host page's dl/dt CSS: {bad}"
    assert_no_errors(explorer)


def test_self_influence_table_ranks_and_flags(jupyter_server, explorer):
    widget = explorer.widget
    expect(widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)
    widget.get_by_test_id("tracin-tab-ranking").click()
    rows = widget.get_by_test_id("tracin-table-row")
    expect(rows.first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
    explorer.screenshot("table-widget", widget)
    shown = data_indices(rows)
    assert 0 < len(shown) <= N_TRAIN and len(set(shown)) == len(shown)

    # Default order = most self-influential first; checked against a fresh engine's self_influence().
    oracle = (
        "import json as _json\n"
        "from tracin_widgets.influence import TracInCPFast as _Fast\n"
        "_engine = _Fast(model, model[3], train_dataset, checkpoints, loss_fn=nn.CrossEntropyLoss(reduction='sum'))\n"
        "print(_json.dumps(_engine.self_influence().tolist()))\n"
    )
    scores = np.array(json.loads(jupyter_server.kernel_exec(NOTEBOOK, oracle)))
    assert scores.shape == (N_TRAIN,)
    np.testing.assert_allclose(
        scores[shown], np.sort(scores)[::-1][: len(shown)], rtol=0, atol=1e-4 * float(np.abs(scores).max())
    )

    # Flag the top row with its checkbox -> the kernel has it.
    top = rows.first
    top.get_by_test_id("tracin-row-flag").check()
    expect(top).to_have_class(re.compile(r"\bis-flagged\b"))
    assert kernel_flagged(jupyter_server) == f"[{shown[0]}]"
    jupyter_server.kernel_exec(NOTEBOOK, "explorer.flagged = []")
    expect(top.get_by_test_id("tracin-row-flag")).not_to_be_checked()
    widget.get_by_test_id("tracin-tab-test").click()
    assert_no_errors(explorer)


def test_images_keep_their_aspect_ratio_everywhere(explorer):
    """Square 8x8 digits must be drawn square in the strip, the tiles, the query card, the details and the table."""
    widget = explorer.widget
    expect(widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)
    proponents = widget.get_by_test_id("tracin-proponent")
    expect(proponents).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
    proponents.first.click()
    expect(widget.get_by_test_id("tracin-details").locator("canvas")).to_have_count(1)
    boxes = widget.locator(".tracin-root").evaluate(IMAGE_BOXES_JS)
    widget.get_by_test_id("tracin-tab-ranking").click()
    expect(widget.get_by_test_id("tracin-table-row").first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
    expect(widget.locator("canvas.tracin-img-row")).not_to_have_count(0)
    boxes += widget.locator(".tracin-root").evaluate(IMAGE_BOXES_JS)
    widget.get_by_test_id("tracin-tab-test").click()
    widget.get_by_test_id("tracin-details-close").click()

    kinds = {re.search(r"tracin-img-(\w+)", b["cls"]).group(1) for b in boxes}
    assert kinds >= {"strip", "tile", "query", "detail", "row"}, kinds
    assert all((b["iw"], b["ih"]) == (8, 8) for b in boxes), {(b["iw"], b["ih"]) for b in boxes}
    bad = [b for b in boxes if b["w"] < 8 or abs(b["w"] / b["h"] - b["iw"] / b["ih"]) > 0.02]
    assert bad == [], f"images drawn with the wrong aspect ratio or collapsed: {bad[:5]}"
    assert_no_errors(explorer)


def test_galleries_fit_k5_in_one_row_and_k10_in_two(explorer):
    """At 1400 px with the details panel open, k tiles per column lay out in rows of five inside the widget."""
    widget = explorer.widget
    proponents = widget.get_by_test_id("tracin-proponent")
    expect(proponents).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
    proponents.first.click()
    expect(widget.get_by_test_id("tracin-details")).to_be_visible()
    layout = """(root) => {
      const right = root.getBoundingClientRect().right;
      return [...root.querySelectorAll('.tracin-grid')].map((g) => {
        const gr = g.getBoundingClientRect();
        return [...g.children].map((t) => { const r = t.getBoundingClientRect();
          const img = t.querySelector('canvas').getBoundingClientRect();
          const overflow = Math.max(r.right - gr.right, r.right - right);
          return { top: Math.round(r.top), overflow, img: img.width }; });
      });
    }"""

    def rows_of(grids):
        return [sorted({t["top"] for t in g}) for g in grids]

    try:
        for k, n_rows in ((5, 1), (10, 2)):
            widget.get_by_test_id("tracin-k").select_option(str(k))
            expect(proponents).to_have_count(k, timeout=COMPUTE_TIMEOUT_MS)
            expect(widget.get_by_test_id("tracin-opponent")).to_have_count(k)
            grids = widget.locator(".tracin-root").evaluate(layout)
            assert len(grids) == 2 and all(len(g) == k for g in grids)
            tops = rows_of(grids)
            assert all(len(t) == n_rows for t in tops), f"k={k}: tiles in rows at {tops}, want {n_rows} row(s)"
            for g in grids:  # five a row
                assert [sum(t["top"] == top for t in g) for top in sorted({t["top"] for t in g})] == [5] * n_rows
            over = [t for g in grids for t in g if t["overflow"] > 0.5]
            assert over == [], f"k={k}: tiles overflow their column or the widget: {over}"
            assert min(t["img"] for g in grids for t in g) >= 48, f"k={k}: tile thumbnails shrunk below 48 px"
            if k == 10:
                explorer.screenshot("gallery-k10-widget", widget)
    finally:
        widget.get_by_test_id("tracin-k").select_option(str(K))
        expect(proponents).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
        widget.get_by_test_id("tracin-details-close").click()
    assert_no_errors(explorer)


def test_label_choice_badges_and_per_checkpoint_breakdown(jupyter_server, explorer):
    """On a misclassified test example: the captions name the explained label, the label choice switches to the
    prediction (checked against the kernel), badges mark a minority of tiles and say why, and the details panel
    draws one bar per checkpoint whose values are the kernel's ``checkpoint_contributions`` and sum to the score."""
    if jupyter_server.frontend != "lab":
        pytest.skip("JupyterLab is enough for these (the same views as in Notebook 7)")
    jp, widget = explorer, explorer.widget
    expect(widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)
    wrong = widget.locator('[data-testid="tracin-test-item"].is-wrong').first
    test_index = int(wrong.get_attribute("data-index"))
    wrong.click()
    status = widget.get_by_test_id("tracin-gallery-status")
    gallery = widget.locator("section.tracin-gallery")
    choice = widget.get_by_test_id("tracin-label-choice")
    caption = widget.get_by_test_id("tracin-proponents-caption")
    proponents = widget.get_by_test_id("tracin-proponent")
    kernel = json.loads(
        jupyter_server.kernel_exec(
            NOTEBOOK,
            "import json as _json\n"
            f"_x, _y = test_dataset[{test_index}]\n"
            "print(_json.dumps([int(_y), int(model(_x[None]).argmax(1))]))\n",
        )
    )
    label, pred = kernel
    assert label != pred
    try:
        for explain, target, words in (
            ("label", label, f"label {label}"),
            ("prediction", pred, f"the prediction {pred}"),
        ):
            choice.select_option(explain)
            expect(status).to_have_text(re.compile(rf"^test #{test_index}\b"), timeout=COMPUTE_TIMEOUT_MS)
            expect(gallery).not_to_have_class(re.compile(r"\bis-stale\b"))
            expect(caption).to_have_text(f" · raised the score of {words}")
            expect(proponents).to_have_count(K)
            got = json.loads(
                jupyter_server.kernel_exec(
                    NOTEBOOK,
                    "print(_json.dumps([explorer.explain, explorer.gallery['explained_label'], "
                    "[r['index'] for r in explorer.gallery['proponents']]]))",
                )
            )
            assert got == [explain, target, data_indices(proponents)]
            # badges discriminate (tests/widget/test_real_engine.py checks a minority at k=10 on these data); the
            # page shows the kernel's
            tiles = widget.locator(".tracin-tile").count()
            badges = widget.get_by_test_id("tracin-badge")
            badged = jupyter_server.kernel_exec(
                NOTEBOOK,
                "print(sum(bool(r['badge']) for r in explorer.gallery['proponents'] + explorer.gallery['opponents']))",
            )
            assert badges.count() == int(badged) < tiles, f"{badges.count()} of {tiles} tiles badged"
            for title in badges.evaluate_all("els => els.map(e => e.title)"):  # the badge text Python sends
                assert re.match(r"the checkpoints' average prediction is .* \(p̄ [\d.]+\), not its label", title), title

        # the breakdown of (test example, first proponent) for the prediction
        first = data_indices(proponents)[0]
        score = float(proponents.first.locator(".tracin-tile-score").inner_text())
        proponents.first.click()
        bars = widget.get_by_test_id("tracin-checkpoint-bar")
        expect(bars).to_have_count(3, timeout=COMPUTE_TIMEOUT_MS)  # the notebook's 3 checkpoints
        shown = bars.evaluate_all("els => els.map(e => [e.dataset.checkpoint, Number(e.dataset.contribution)])")
        terms = json.loads(
            jupyter_server.kernel_exec(
                NOTEBOOK, f"print(_json.dumps(explorer.checkpoint_contributions({test_index}, {first})))"
            )
        )
        assert [c for c, _ in shown] == [t["checkpoint"] for t in terms] == [f"checkpoint-{e}.pt" for e in range(3)]
        np.testing.assert_allclose([v for _, v in shown], [t["contribution"] for t in terms], rtol=1e-6)
        assert sum(v for _, v in shown) == pytest.approx(score, rel=5e-3)  # the tile shows 3 significant digits
        expect(widget.get_by_test_id("tracin-breakdown-sum")).to_contain_text("= the score in the gallery")
        expect(widget.get_by_test_id("tracin-details-rank")).not_to_contain_text("0.00%")
        # an opponent's score is negative: some checkpoint lowered it, drawn to the left of zero with a minus sign
        widget.get_by_test_id("tracin-opponent").first.click()
        expect(widget.get_by_test_id("tracin-details")).to_have_attribute(
            "data-index", str(data_indices(widget.get_by_test_id("tracin-opponent"))[0])
        )
        expect(widget.locator('[data-testid="tracin-checkpoint-bar"].is-neg').first).to_contain_text("−")
        jp.set_theme("JupyterLab Light")
        jp.page.mouse.move(0, 0)
        jp.screenshot("breakdown-light-widget", widget)
    finally:
        choice.select_option("label")
        expect(gallery).not_to_have_class(re.compile(r"\bis-stale\b"), timeout=COMPUTE_TIMEOUT_MS)
        if widget.get_by_test_id("tracin-details").is_visible():
            widget.get_by_test_id("tracin-details-close").click()
    assert_no_errors(explorer)
