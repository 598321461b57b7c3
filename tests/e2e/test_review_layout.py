"""The review's layout in a real browser (JupyterLab and Notebook 7), light and dark, at 1024 px (JupyterLab with its
file browser open) and 1400 px, on ``explorer_review.ipynb``'s explorer:
* a click on a gallery tile (the last opponent) or a table row answers where the user looks: the details panel and
  the clicked element are on screen together (narrow: a drawer beside the content spanning the clicked element's
  height; wide: a column beside the views that clips nothing: the last opponent, the ranking's charts beside the
  table);
* the help box opens under its "?" and never covers it; the "your flags" dot keeps off the chart's axes; long class
  names stay on one line (ellipsis, the whole name in the title); nothing overflows the widget; every text passes
  4.5:1. Screenshots of each case go to ``tests/e2e/artifacts/`` (``review-layout-*``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from .test_explorer_browser import assert_no_errors, low_contrast
from .test_explorer_layout import set_width

expect = pytest.importorskip("playwright.sync_api").expect

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NOTEBOOK = "explorer_review.ipynb"
EXPLORER_CELL, FLAGGED_CELL = 2, 3
COMPUTE_TIMEOUT_MS = 180_000
LONG_NAMES = [f"{d}-{'malignant' if d % 2 else 'benign'}-tumour-class" for d in range(10)]

# The element's box and the part of the page the user sees: the notebook's scroller (its nearest scrolling ancestor)
# within the window.
SEEN_JS = """(el) => {
  const r = el.getBoundingClientRect();
  let top = 0, bottom = window.innerHeight;
  for (let n = el.parentElement; n; n = n.parentElement) {
    const cs = getComputedStyle(n);
    if (/(auto|scroll)/.test(cs.overflowY) && n.scrollHeight > n.clientHeight) {
      const b = n.getBoundingClientRect();
      top = Math.max(top, b.top); bottom = Math.min(bottom, b.bottom);
      break;
    }
  }
  return { top: r.top, bottom: r.bottom, left: r.left, right: r.right, seen: r.bottom > top + 10 && r.top < bottom - 10,
    position: getComputedStyle(el).position };
}"""

# Class names drawn on more than one line, or cut without their whole text in a title.
NAMES_JS = """(root) => [...root.querySelectorAll('.tracin-name, .tracin-tile-label, .tracin-cap-label')]
  .filter((e) => e.getClientRects().length && e.textContent.trim())
  .map((e) => {
    const lh = parseFloat(getComputedStyle(e).lineHeight) || 1.35 * parseFloat(getComputedStyle(e).fontSize);
    const range = document.createRange(); range.selectNodeContents(e);
    const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
    return { text: e.textContent, lines: lines.size, tall: e.getBoundingClientRect().height > 1.8 * lh,
      cut: e.scrollWidth > e.clientWidth + 0.5, title: e.title || e.closest('[title]')?.title || '' };
  })
  .filter((n) => n.lines > 1 || n.tall || (n.cut && !n.title.includes(n.text.replace('→', ' → ').trim())
    && !n.title.includes(n.text)))"""

# The flags dot against the chart's axis lines, in the SVG's own units.
DOT_JS = """(svg) => {
  const c = svg.querySelector('[data-testid="tracin-found-flags"]');
  const axes = [...svg.querySelectorAll('.tracin-axis')]
    .map((l) => ['x1', 'y1', 'x2', 'y2'].map((k) => +l.getAttribute(k)));
  const yAxis = axes.find((a) => a[0] === a[2]), xAxis = axes.find((a) => a[1] === a[3]);
  const cx = +c.getAttribute('cx'), cy = +c.getAttribute('cy'), r = +c.getAttribute('r');
  return { gapY: cx - r - yAxis[0], gapX: xAxis[1] - (cy + r) };
}"""


@pytest.fixture(scope="module")
def review(jupyter_server, open_jupyter_page):
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
        jp.server.kernel_exec(NOTEBOOK, "explorer.wait(120)")
        yield jp


def kernel(server, code: str) -> str:
    return server.kernel_exec(NOTEBOOK, code).strip()


def answered_where_clicked(details, clicked, where: str) -> list[str]:
    d, c = details.evaluate(SEEN_JS), clicked.evaluate(SEEN_JS)
    problems = []
    if not (d["seen"] and c["seen"]):
        problems.append(f"{where}: the details ({d}) and the clicked element ({c}) are not on screen together")
    if d["position"] == "absolute" and not (d["top"] <= c["top"] + 2 and d["bottom"] >= c["top"]):
        problems.append(f"{where}: the drawer ({d['top']:.0f}-{d['bottom']:.0f}) misses the click at {c['top']:.0f}")
    covered = (
        d["left"] < c["right"] - 1 and d["right"] > c["left"] + 1 and d["top"] < c["bottom"] and d["bottom"] > c["top"]
    )
    if covered and c["right"] - c["left"] < 200:  # a tile (a table row spans the table: the drawer covers its end)
        problems.append(f"{where}: the details ({d}) cover the clicked tile ({c})")
    return problems


def no_overflow(root, where: str) -> list[str]:
    over = root.evaluate("(r) => r.scrollWidth - r.clientWidth")
    return [f"{where}: the widget overflows by {over} px"] if over > 0 else []


@pytest.mark.parametrize(("width", "file_browser"), [(1024, True), (1400, False)], ids=["1024-files", "1400"])
def test_details_where_clicked_nothing_clipped_light_and_dark(jupyter_server, review, width, file_browser):
    jp, widget = review, review.widget
    root = widget.locator(".tracin-root")
    top = json.loads(
        kernel(jupyter_server, "import numpy as _np; print(_np.argsort(-explorer.self_influence)[:5].tolist())")
    )
    kernel(jupyter_server, f"explorer.flagged = {top}\nexplorer.class_names = {LONG_NAMES!r}")
    problems: list[str] = []
    details = widget.get_by_test_id("tracin-details")
    try:
        set_width(jp, width, file_browser)
        for theme, name in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
            jp.set_theme(theme)
            tag = f"{width}-{name}"
            # the galleries: the last opponent tile, the rightmost element
            widget.get_by_test_id("tracin-tab-test").click()
            opponents = widget.get_by_test_id("tracin-opponent")
            expect(opponents.first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
            last = opponents.last
            last.scroll_into_view_if_needed()
            last.click()
            expect(details).to_have_attribute("data-index", last.get_attribute("data-index"))
            expect(details.get_by_test_id("tracin-relabel")).to_be_visible()
            jp.page.mouse.move(0, 0)
            problems += answered_where_clicked(details, last, f"{tag} tile")
            if width >= 1400:
                box, cols = last.bounding_box(), widget.locator(".tracin-columns").bounding_box()
                pane = details.bounding_box()
                if box["x"] + box["width"] > cols["x"] + cols["width"] + 0.5 or box["x"] + box["width"] > pane["x"]:
                    problems.append(f"{tag}: the last opponent is clipped ({box} in {cols}, details at {pane})")
            problems += no_overflow(root, f"{tag} test tab")
            problems += [f"{tag} test tab: {n}" for n in root.evaluate(NAMES_JS)]
            jp.screenshot(f"review-layout-{tag}-test", root)
            jp.screenshot(f"review-layout-{tag}-test-page")
            problems += low_contrast(widget, f"{tag} test tab")

            # the ranking: a row further down, the charts beside the table
            widget.get_by_test_id("tracin-tab-ranking").click()
            rows = widget.get_by_test_id("tracin-table-row")
            expect(rows.first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
            expect(widget.locator(".tracin-table tbody")).not_to_have_class(re.compile(r"\bis-loading\b"))
            row = rows.nth(8)
            row.scroll_into_view_if_needed()
            row.click()
            expect(details).to_have_attribute("data-index", row.get_attribute("data-index"))
            expect(details.get_by_test_id("tracin-evidence")).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
            jp.page.mouse.move(0, 0)
            problems += answered_where_clicked(details, row, f"{tag} row")
            if width >= 1400:
                table = widget.locator(".tracin-table-section").bounding_box()
                charts = widget.get_by_test_id("tracin-charts").bounding_box()
                pane = details.bounding_box()
                if charts["x"] < table["x"] + table["width"] - 1 or charts["y"] > table["y"] + table["height"]:
                    problems.append(f"{tag}: the charts ({charts}) are not beside the table ({table})")
                if charts["x"] + charts["width"] > pane["x"] + 0.5:
                    problems.append(f"{tag}: the details ({pane}) cover the charts ({charts})")
                wrap = widget.locator(".tracin-table-wrap").evaluate("(w) => w.scrollWidth - w.clientWidth")
                if wrap > 0:
                    problems.append(f"{tag}: the table's last columns are cut ({wrap} px to scroll)")
            gaps = widget.get_by_test_id("tracin-found").evaluate(DOT_JS)
            if min(gaps["gapX"], gaps["gapY"]) <= 0:
                problems.append(f"{tag}: the flags dot touches an axis {gaps}")
            problems += no_overflow(root, f"{tag} ranking")
            problems += [f"{tag} ranking: {n}" for n in root.evaluate(NAMES_JS)]
            jp.screenshot(f"review-layout-{tag}-ranking", root)
            problems += low_contrast(widget, f"{tag} ranking")

            # the help opens under its "?"
            button = widget.get_by_test_id("tracin-help-button")
            button.scroll_into_view_if_needed()
            button.click()
            help_ = widget.get_by_test_id("tracin-help")
            expect(help_).to_be_visible()
            b, hb = button.bounding_box(), help_.bounding_box()
            overlap = not (
                hb["y"] >= b["y"] + b["height"]
                or hb["y"] + hb["height"] <= b["y"]
                or hb["x"] >= b["x"] + b["width"]
                or hb["x"] + hb["width"] <= b["x"]
            )
            if overlap:
                problems.append(f"{tag}: the help ({hb}) covers its ? ({b})")
            jp.screenshot(f"review-layout-{tag}-help", root)
            button.click()
            expect(help_).to_be_hidden()
            widget.get_by_test_id("tracin-details-close").click()
    finally:
        jp.set_theme("JupyterLab Light")
        set_width(jp, 1400, False)
        kernel(jupyter_server, "explorer.flagged = []\nexplorer.class_names = [str(d) for d in range(10)]")
        widget.get_by_test_id("tracin-tab-test").click()
    assert problems == [], "\n".join(problems)
    assert_no_errors(jp)
