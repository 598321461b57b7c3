"""Real-browser fixtures: JupyterLab / Notebook 7 servers on 127.0.0.1 driven by Playwright + Debian chromium.

The harness itself (servers, :class:`JupyterPage`) is ``benchmarks/browser.py``, shared with the widget
benchmark. Everything the servers and the kernel write lives under pytest's tmp dirs; screenshots land in
``tests/e2e/artifacts/`` (gitignored).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.browser import CHROME_ARGS, FRONTENDS, JupyterPage, JupyterServer, start_server, stop_server

HERE = Path(__file__).resolve().parent
ARTIFACTS = HERE / "artifacts"  # gitignored; screenshots land here


class TestPage(JupyterPage):
    """The harness's page plus what only the tests use: run all cells, switch themes, save screenshots."""

    __test__ = False  # not a test class

    def run_all(self) -> None:
        self.command("notebook:run-all-cells")

    def set_theme(self, theme: str, timeout_ms: float = 30_000) -> None:
        """``JupyterLab Light`` / ``JupyterLab Dark``; waits until the body says the theme changed."""
        self.command("apputils:change-theme", {"theme": theme})
        light = "true" if "Dark" not in theme else "false"
        self.page.wait_for_function(
            f"() => document.body.dataset.jpThemeName === {json.dumps(theme)}"
            f" && document.body.dataset.jpThemeLight === '{light}'",
            timeout=timeout_ms,
        )
        # JupyterLab shows its splash screen while the theme loads; wait until it is gone.
        self.page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=timeout_ms)

    def screenshot(self, name: str, locator=None) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.server.frontend}-{name}.png"
        (locator or self.page).screenshot(path=str(path))
        return path


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
            yield TestPage(context.new_page(), server)
        finally:
            context.close()

    return _open
