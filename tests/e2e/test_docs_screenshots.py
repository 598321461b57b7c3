"""The documentation's screenshots, made by the browser: every view of the explorer in JupyterLab, light and dark.

``explorer_review.ipynb`` (400 digits, every 10th mislabelled, ``is_mislabelled`` given) runs in JupyterLab; the
explorer's views are saved into ``docs/assets/screenshots/`` (committed: ``bash .ci/docs`` builds the site from a
fresh clone without a browser), overwriting the ones there, as ``explorer-<view>-<theme>.png``:
* ``test``: the test strip and the galleries of the selected test example;
* ``details``: a proponent's details panel (self-influence rank, each checkpoint's contribution);
* ``ranking``: the self-influence table with three flags, the histogram, ROC and found-vs-inspected charts;
* ``help``: the keys of the explorer (``?``).
The docs build (``docs/hooks.py``) fails when a page shows a screenshot that is not there or when one here is shown
by no page; this test checks that every screenshot it makes is shown by a page.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from benchmarks.browser import start_server as _start_server
from benchmarks.browser import stop_server as _stop_server

expect = pytest.importorskip("playwright.sync_api").expect

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOCS = REPO / "docs"
SHOTS = DOCS / "assets" / "screenshots"
NOTEBOOK = "explorer_review.ipynb"
K = 5  # the notebook's K
EXPLORER_CELL, FLAGGED_CELL = 2, 3
COMPUTE_TIMEOUT_MS = 180_000
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}
VIEWS = ("test", "details", "ranking", "help")


@pytest.fixture(scope="module")
def review(tmp_path_factory, open_jupyter_page):
    """The review notebook run in JupyterLab, three training examples flagged, the background work done."""
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium not installed (bash .ci/setup --test installs it)")
    if not (REPO / "tracin_widgets/widget/static/widget.js").exists():
        pytest.fail("the widget's JS bundle is missing: run `cd js && npm ci && npm run build` (bash .ci/setup does)")
    server = _start_server("lab", tmp_path_factory.mktemp("jupyter-docs"))
    try:
        shutil.copy(HERE / NOTEBOOK, server.root / NOTEBOOK)
        with open_jupyter_page(server) as jp:
            jp.page.set_viewport_size({"width": 1280, "height": 1000})
            jp.open(NOTEBOOK)
            jp.run_all()
            done = jp.cell_output(FLAGGED_CELL).filter(has_text="FLAGGED = []")
            failed = jp.page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            expect(done.or_(failed).first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
            if failed.count():
                pytest.fail("the fixture notebook failed:\n" + "\n".join(failed.all_inner_texts())[-4000:])
            jp.widget = jp.cell_output(EXPLORER_CELL).locator(".tracin-root")
            expect(jp.widget.get_by_test_id("tracin-proponent")).to_have_count(K, timeout=COMPUTE_TIMEOUT_MS)
            expect(jp.widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=COMPUTE_TIMEOUT_MS)
            # three of the most self-influential examples flagged from Python: the table and charts show flags
            top3 = "explorer.flagged = [int(i) for i in (-explorer.self_influence).argsort()[:3]]"
            server.kernel_exec(NOTEBOOK, top3)
            expect(jp.widget.get_by_test_id("tracin-flag-count")).to_contain_text("3")
            yield jp
    finally:
        _stop_server(server)


def _shot(widget, view: str, theme: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"explorer-{view}-{theme}.png"
    widget.page.mouse.move(0, 0)  # no hover state in the picture
    widget.screenshot(path=str(path), animations="disabled")
    return path


def _shown_by_the_docs() -> set[str]:
    pages = "\n".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    return set(re.findall(r"assets/screenshots/([\w.-]+\.png)", pages))


def test_every_view_light_and_dark_for_the_docs(review):
    jp, widget = review, review.widget
    made = []
    for theme, name in THEMES.items():
        jp.set_theme(name)
        widget.get_by_test_id("tracin-tab-test").click()
        expect(widget.get_by_test_id("tracin-pane-test")).to_be_visible()
        made.append(_shot(widget, "test", theme))

        widget.get_by_test_id("tracin-proponent").first.click()
        details = widget.get_by_test_id("tracin-details")
        expect(details).to_be_visible()
        expect(details.get_by_test_id("tracin-checkpoint-bar").first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        made.append(_shot(widget, "details", theme))
        details.get_by_test_id("tracin-details-close").click()
        expect(details).to_be_hidden()

        widget.get_by_test_id("tracin-tab-ranking").click()
        expect(widget.get_by_test_id("tracin-table-row").first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        expect(widget.get_by_test_id("tracin-found")).to_be_visible()
        made.append(_shot(widget, "ranking", theme))

        widget.get_by_test_id("tracin-help-button").click()
        expect(widget.get_by_test_id("tracin-help")).to_be_visible()
        made.append(_shot(widget, "help", theme))
        widget.get_by_test_id("tracin-help-button").click()
        expect(widget.get_by_test_id("tracin-help")).to_be_hidden()
    jp.set_theme("JupyterLab Light")
    widget.get_by_test_id("tracin-tab-test").click()

    names = {p.name for p in made}
    assert names == {f"explorer-{v}-{t}.png" for v in VIEWS for t in THEMES}
    assert all(p.stat().st_size > 10_000 for p in made), [(p.name, p.stat().st_size) for p in made]
    assert names - _shown_by_the_docs() == set(), "screenshots no documentation page shows"
    assert jp.unexpected_page_errors == []
