"""Real-browser fixtures: JupyterLab / Notebook 7 servers on 127.0.0.1 driven by Playwright + Debian chromium.

The harness itself (servers, :class:`JupyterPage`) is ``benchmarks/browser.py``, shared with the widget
benchmark. Everything the servers and the kernel write lives under pytest's tmp dirs; screenshots land in
``tests/e2e/artifacts/`` (gitignored).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from benchmarks.browser import CHROME_ARGS, FRONTENDS, JupyterPage, JupyterServer, start_server, stop_server

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"  # gitignored; screenshots land here


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.path).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Expose each phase's report as ``item.rep_<phase>`` (the e2e tests save artifacts after a failure)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module", params=sorted(FRONTENDS))
def jupyter_server(request, tmp_path_factory):
    """A running JupyterLab (``lab``) or Notebook 7 (``notebook``) server; module-scoped, one per frontend."""
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium not installed (bash .ci/setup --test installs it)")
    pytest.importorskip("playwright.sync_api")
    server = start_server(request.param, tmp_path_factory.mktemp(f"jupyter-{request.param}"))
    try:
        yield server
    finally:
        stop_server(server)


# -------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def chromium_browser():
    """Headless Debian chromium under Playwright's sync API (fresh temporary profile)."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian chromium not installed (bash .ci/setup --test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROME_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def open_jupyter_page(chromium_browser):
    """``with open_jupyter_page(server) as jp:`` a fresh browser context + :class:`JupyterPage` (closed on exit)."""

    @contextlib.contextmanager
    def _open(server: JupyterServer):
        context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        try:
            yield JupyterPage(context.new_page(), server, ARTIFACTS)
        finally:
            context.close()

    return _open
