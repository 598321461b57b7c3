"""Finishing a review in a real browser (JupyterLab and Notebook 7): readable charts, flags downloaded from the page,
and ``explorer.save_html`` opened offline.

One page per frontend runs ``explorer_review.ipynb`` (400 digits, every 10th mislabelled, ``is_mislabelled`` given so
the ROC and found-vs-inspected charts show). The tests:
* measure every chart text's rendered font size (font size x the SVG's scale: the charts scale with their viewBox),
  check that it lies inside its chart, that the axes are titled, that the "your flags" point is large, labelled and
  stands out (>= 3:1 against the chart, WCAG 1.4.11) and that every text passes 4.5:1, in the light and dark themes
  (screenshots of the charts in both go to ``tests/e2e/artifacts/``);
* download the flags with the JSON and CSV buttons (Playwright's ``expect_download``) and compare the files byte for
  byte with ``explorer.export_flagged``'s in the kernel; the buttons are disabled while nothing is flagged;
* call ``explorer.save_html`` in the kernel and open the file in a fresh context whose network is blocked (every
  request that is not ``file:``/``data:`` is aborted and recorded: none may happen), checking the test label, the k
  proponents and opponents and the flagged count (screenshots in light and dark).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from .test_explorer_browser import _COLOR_JS, assert_no_errors, low_contrast

expect = pytest.importorskip("playwright.sync_api").expect

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTIFACTS = HERE / "artifacts"
NOTEBOOK = "explorer_review.ipynb"
K = 5  # the notebook's K
EXPLORER_CELL, FLAGGED_CELL = 2, 3
COMPUTE_TIMEOUT_MS = 180_000
MIN_TICK_PX = 11.0
CHARTS = ("tracin-histogram", "tracin-roc", "tracin-found")

# Every text of one chart: its rendered font size (computed size x the SVG's screen scale), its box and the chart's.
CHART_TEXTS_JS = """
(svg) => {
  const scale = svg.getScreenCTM().a, box = svg.getBoundingClientRect();
  return [...svg.querySelectorAll('text')].map((t) => {
    const r = t.getBoundingClientRect();
    return { text: t.textContent, cls: t.getAttribute('class'), testid: t.dataset.testid || '',
      px: parseFloat(getComputedStyle(t).fontSize) * scale,
      inside: r.left >= box.left - 0.5 && r.right <= box.right + 0.5 && r.top >= box.top - 0.5
        && r.bottom <= box.bottom + 0.5,
      left: r.left, right: r.right, top: r.top, bottom: r.bottom };
  });
}
"""

# The flags point: rendered radius and the contrast of its fill and of its ring against the chart's background.
POINT_JS = (
    "(c) => {"
    + _COLOR_JS
    + """
  const svg = c.ownerSVGElement, cs = getComputedStyle(c);
  const r = c.getBoundingClientRect();
  return { radius: r.width / 2, fill: contrast(svg, cs.fill).ratio, ring: contrast(svg, cs.stroke).ratio };
}
"""
)


@pytest.fixture(scope="module")
def review(jupyter_server, open_jupyter_page):
    """The review notebook run in the module's frontend, the explorer rendered and its background work done."""
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
        expect(jp.widget.get_by_test_id("tracin-proponent")).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
        expect(jp.widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)
        yield jp


def kernel(server, code: str) -> str:
    return server.kernel_exec(NOTEBOOK, code).strip()


def open_table(widget) -> None:
    widget.get_by_test_id("tracin-tab-ranking").click()
    expect(widget.get_by_test_id("tracin-table-row").first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
    expect(widget.get_by_test_id("tracin-found")).to_be_visible()


def test_charts_are_titled_readable_and_show_your_flags_in_light_and_dark(jupyter_server, review):
    jp, widget = review, review.widget
    # flag the five most self-influential examples: the found-vs-inspected chart gets its point
    top = json.loads(
        kernel(jupyter_server, "import numpy as _np; print(_np.argsort(-explorer.self_influence)[:5].tolist())")
    )
    kernel(jupyter_server, f"explorer.flagged = {top}")
    open_table(widget)
    expect(widget.get_by_test_id("tracin-found-flags")).to_have_count(1)
    titles = {
        "tracin-histogram": ["self-influence", "count"],
        "tracin-roc": ["false positive rate", "true positive rate"],
        "tracin-found": ["fraction inspected", "mislabelled found"],
    }
    problems = []
    try:
        for theme, name in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
            jp.set_theme(theme)
            jp.page.mouse.move(0, 0)
            charts = widget.get_by_test_id("tracin-charts")
            jp.screenshot(f"{name}-charts", charts)
            for chart in CHARTS:
                texts = widget.get_by_test_id(chart).evaluate(CHART_TEXTS_JS)
                got = [t["text"] for t in texts if t["testid"] in ("tracin-axis-x", "tracin-axis-y")]
                want = titles[chart]
                if chart == "tracin-histogram":
                    got[0] = got[0].replace(" (log scale)", "")
                if got != want:
                    problems.append(f"{name} {chart}: axis titles {got}, want {want}")
                problems += [
                    f"{name} {chart}: {t['text']!r} ({t['cls']}) renders at {t['px']:.1f} px"
                    for t in texts
                    if t["px"] < MIN_TICK_PX
                ]
                problems += [
                    f"{name} {chart}: {t['text']!r} is cut by the chart's edge" for t in texts if not t["inside"]
                ]
                ticks = [t for t in texts if t["cls"] == "tracin-tick"]
                ytitle = next(t for t in texts if t["testid"] == "tracin-axis-y")
                problems += [
                    f"{name} {chart}: tick {t['text']!r} overlaps the y-axis title"
                    for t in ticks
                    if t["left"] < ytitle["right"] and t["top"] < ytitle["bottom"] and t["bottom"] > ytitle["top"]
                ]
            point = widget.get_by_test_id("tracin-found-flags").evaluate(POINT_JS)
            if point["radius"] < 5:
                problems.append(f"{name}: the flags point has a {point['radius']:.1f} px radius")
            if max(point["fill"], point["ring"]) < 3:
                problems.append(f"{name}: the flags point stands out only {max(point['fill'], point['ring']):.2f}:1")
            expect(widget.get_by_test_id("tracin-found-flags-label")).to_have_text("your flags")
            expect(widget.get_by_test_id("tracin-found-legend")).to_contain_text("your flags:")
            problems += low_contrast(widget, f"{name} charts")
    finally:
        jp.set_theme("JupyterLab Light")
        kernel(jupyter_server, "explorer.flagged = []")
        widget.get_by_test_id("tracin-tab-test").click()
    assert problems == [], problems
    assert_no_errors(jp)


def test_export_buttons_download_the_flags_as_export_flagged_writes_them(jupyter_server, review, tmp_path):
    jp, widget = review, review.widget
    kernel(jupyter_server, "explorer.flagged = []")
    open_table(widget)
    buttons = {fmt: widget.get_by_test_id(f"tracin-export-{fmt}") for fmt in ("json", "csv")}
    for b in buttons.values():
        expect(b).to_be_disabled()
        expect(b).to_have_attribute("title", re.compile(r"Nothing is flagged"))
    # flag three rows in the browser, then download both files
    rows = widget.get_by_test_id("tracin-table-row")
    for i in (0, 2, 4):
        rows.nth(i).get_by_test_id("tracin-row-flag").check()
    flagged = json.loads(kernel(jupyter_server, "print(explorer.flagged)"))
    assert len(flagged) == 3
    try:
        for fmt, b in buttons.items():
            expect(b).to_be_enabled()
            with jp.page.expect_download() as info:
                b.click()
            download = info.value
            assert download.suggested_filename == f"flagged.{fmt}"
            got = Path(download.path()).read_bytes()
            ref = jupyter_server.root / f"ref-flagged.{fmt}"
            kernel(jupyter_server, f"explorer.export_flagged({str(ref)!r})")
            assert got == ref.read_bytes(), (got, ref.read_bytes())
    finally:
        kernel(jupyter_server, "explorer.flagged = []")
        widget.get_by_test_id("tracin-tab-test").click()
    assert_no_errors(jp)


def test_save_html_opens_offline_and_shows_the_review(jupyter_server, review, chromium_browser):
    jp = review
    flagged = json.loads(
        kernel(jupyter_server, "import numpy as _np; print(_np.argsort(-explorer.self_influence)[:3].tolist())")
    )
    path = jupyter_server.root / "review.html"
    info = json.loads(
        kernel(
            jupyter_server,
            f"explorer.flagged = {flagged}\nexplorer.wait(120)\nexplorer.save_html({str(path)!r})\n"
            "import json as _json\n_it = explorer.gallery['item']\n"
            "print(_json.dumps({'index': explorer.query['index'], 'label': explorer.class_names[_it['label']]}))",
        )
    )
    try:
        text = path.read_text(encoding="utf-8")
        urls = re.findall(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)\s*(https?:|//)""", text, re.I)
        assert urls == [], urls
        for scheme in ("light", "dark"):
            context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
            requests: list[str] = []

            def block(route, requests=requests):
                url = route.request.url
                if url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    requests.append(url)
                    route.abort()

            try:
                context.route("**/*", block)
                page = context.new_page()
                page.goto(path.as_uri())
                expect(page.get_by_test_id("tracin-snapshot-query")).to_have_text(f"Test #{info['index']}")
                expect(page.get_by_test_id("tracin-snapshot-label")).to_have_text(info["label"])
                expect(page.get_by_test_id("tracin-proponent")).to_have_count(K)
                expect(page.get_by_test_id("tracin-opponent")).to_have_count(K)
                expect(page.get_by_test_id("tracin-flag-count")).to_have_text("⚑ 3 flagged")
                expect(page.get_by_test_id("tracin-snapshot-flagged-row")).to_have_count(3)
                expect(page.get_by_test_id("tracin-snapshot-ranking-row")).to_have_count(50)
                # every image decoded (data: PNGs) and drawn square (8x8 digits)
                sizes = page.locator("img.tracin-img").evaluate_all(
                    "els => els.map(i => [i.complete && i.naturalWidth, i.getBoundingClientRect().width,"
                    " i.getBoundingClientRect().height])"
                )
                assert len(sizes) == 1 + 2 * K + 50 + 3
                assert all(n == 8 and w >= 8 and abs(w - h) < 0.5 for n, w, h in sizes), sizes[:5]
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(
                    path=str(ARTIFACTS / f"{jupyter_server.frontend}-save-html-{scheme}.png"), full_page=True
                )
            finally:
                context.close()
            assert requests == [], f"the saved file fetched {requests}"
    finally:
        kernel(jupyter_server, "explorer.flagged = []")
    assert_no_errors(jp)
