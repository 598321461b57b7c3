"""The explorer in the notebook hosts beyond JupyterLab and Notebook 7: marimo and Voilà, in Debian's chromium.

Each host runs as a server on 127.0.0.1 with its config, data, runtime and cache dirs under pytest's tmp dirs, and is
stopped at the end of its test. The browser is offline apart from that server (the hosts' own CDN requests, e.g.
Voilà's icon font, fail and change nothing the explorer draws).
* marimo: ``marimo run notebooks/explorer_marimo.py -- --quick`` (the tutorial's explorer part with
  ``mo.ui.anywidget``, trained shorter): both explorers render with every tile's image drawn (the images travel as
  binary buffers), clicking a test example brings its galleries from the kernel and re-runs the cell that reads the
  selection, and a flag ticked in the review's ranking reaches Python (the cell that reads ``flagged`` shows it).
* Voilà: ``voila explorer_digits.ipynb`` (the e2e fixture notebook: the tutorial takes minutes) renders the
  explorer without the code, with every tile's image drawn, and a click on a test example brings that example's
  galleries from the kernel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.browser import REPO, _free_port

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

HERE = Path(__file__).resolve().parent
MARIMO_NOTEBOOK = REPO / "notebooks" / "explorer_marimo.py"
VOILA_NOTEBOOK = HERE / "explorer_digits.ipynb"
START_TIMEOUT_S = 120
COMPUTE_TIMEOUT_MS = 240_000
# Every tile shows its image: a canvas (no "missing image" placeholder) with pixels drawn.
DRAWN_JS = """(tiles) => tiles.length > 0 && tiles.every((t) => {
  const c = t.querySelector('canvas');
  if (!c || t.querySelector('.tracin-img-missing') || !c.width || !c.height) return false;
  const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 3; i < px.length; i += 4) if (px[i] > 0) return true;
  return false;
})"""


def _env(tmp: Path) -> dict[str, str]:
    dirs = {name: tmp / name for name in ("config", "data", "runtime", "ipython", "mpl", "xdg", "tmp")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"ANYWIDGET_HMR", "JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH"}}
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        MPLCONFIGDIR=str(dirs["mpl"]),
        MPLBACKEND="Agg",
        XDG_CONFIG_HOME=str(dirs["xdg"] / "config"),  # marimo's config, cache and state
        XDG_CACHE_HOME=str(dirs["xdg"] / "cache"),
        XDG_STATE_HOME=str(dirs["xdg"] / "state"),
        MARIMO_SKIP_UPDATE_CHECK="1",
        TRACIN_TUTORIAL_DIR=str(tmp / "work"),
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PYTHONUNBUFFERED="1",
        TMPDIR=str(dirs["tmp"]),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    return env


@contextlib.contextmanager
def _serving(cmd: list[str], port: int, cwd: Path, env: dict[str, str], log_path: Path):
    """Start ``cmd`` (a server on 127.0.0.1:``port``), wait until it answers HTTP, yield its URL, stop it."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[2]} exited with {proc.returncode}:\n{tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[2]} did not answer {url} in {START_TIMEOUT_S}s:\n{tail()}") from None
                time.sleep(0.25)  # readiness poll of a subprocess, not a browser wait
        yield url
    except BaseException:
        print(f"--- {cmd[2]} log ---\n{tail()}")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def browser_page(chromium_browser):
    """A fresh page of the session's headless Debian chromium, its uncaught errors collected in ``page.errors``."""
    if not (REPO / "tracin_widgets/widget/static/widget.js").exists():
        pytest.fail("the widget's JS bundle is missing: run `cd js && npm ci && npm run build` (bash .ci/setup does)")
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    try:
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(f"{exc.name}: {exc.message}"))
        page.on(
            "console",
            lambda m: page.errors.append(m.text) if m.type == "error" and "tracin" in m.text.lower() else None,
        )
        yield page
    finally:
        context.close()


def _explains_a_clicked_test_example(root) -> str | None:
    """Click the third test example: its galleries come from the kernel (Python computes them on the selection)."""
    item = root.get_by_test_id("tracin-test-item").nth(2)
    index = item.get_attribute("data-index")
    item.click()
    expect(root.get_by_test_id("tracin-query")).to_contain_text(f"#{index}", timeout=COMPUTE_TIMEOUT_MS)
    expect(root.get_by_test_id("tracin-gallery-status")).to_contain_text(f"#{index}", timeout=COMPUTE_TIMEOUT_MS)
    return index


def _tiles_drawn(root, k: int) -> None:
    expect(root.get_by_test_id("tracin-proponent")).to_have_count(k, timeout=COMPUTE_TIMEOUT_MS)
    expect(root.get_by_test_id("tracin-opponent")).to_have_count(k)
    for testid in ("tracin-test-item", "tracin-proponent", "tracin-opponent"):
        tiles = root.get_by_test_id(testid).element_handles()
        assert root.page.evaluate(DRAWN_JS, tiles), f"a {testid} tile shows no image"


def test_marimo_runs_the_explorer_notebook(tmp_path, browser_page):
    pytest.importorskip("marimo")
    port = _free_port()
    cmd = [sys.executable, "-m", "marimo", "run", str(MARIMO_NOTEBOOK), "--headless", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--no-token", "--no-sandbox", "--", "--quick"]
    page = browser_page
    with _serving(cmd, port, tmp_path, _env(tmp_path), tmp_path / "marimo.log") as url:
        page.goto(url)
        roots = page.locator(".tracin-root")
        expect(roots).to_have_count(2, timeout=COMPUTE_TIMEOUT_MS)
        explorer, review = roots.nth(0), roots.nth(1)
        _tiles_drawn(explorer, 10)
        index = _explains_a_clicked_test_example(explorer)
        # the cell that reads the widget's value re-ran with the page's selection (the page's state is Python's)
        expect(page.get_by_text(f"Selected test example: {index}")).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)

        rows = review.get_by_test_id("tracin-table-row")  # the review opens on the ranking (view="ranking")
        expect(rows.first).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
        flagged = rows.first.get_attribute("data-index")
        rows.first.get_by_test_id("tracin-row-flag").check()
        expect(page.get_by_text(f"Flagged in the page: [{flagged}]")).to_be_visible(timeout=COMPUTE_TIMEOUT_MS)
    assert page.errors == []


def test_voila_renders_the_explorer(tmp_path, browser_page):
    pytest.importorskip("voila")
    root_dir = tmp_path / "root"
    root_dir.mkdir()
    shutil.copy(VOILA_NOTEBOOK, root_dir / VOILA_NOTEBOOK.name)
    port = _free_port()
    cmd = [sys.executable, "-m", "voila", VOILA_NOTEBOOK.name, "--no-browser", "--Voila.ip=127.0.0.1"]
    cmd += [f"--Voila.port={port}", "--Voila.port_retries=0"]
    page = browser_page
    with _serving(cmd, port, root_dir, _env(tmp_path), tmp_path / "voila.log") as url:
        page.goto(url, timeout=COMPUTE_TIMEOUT_MS)  # Voilà runs the notebook before it sends the page
        root = page.locator(".tracin-root")
        expect(root).to_have_count(1, timeout=COMPUTE_TIMEOUT_MS)
        expect(page.get_by_text("torch.manual_seed(0)")).to_have_count(0)  # outputs only: Voilà shows no code
        _tiles_drawn(root, 5)
        _explains_a_clicked_test_example(root)
    assert page.errors == []
