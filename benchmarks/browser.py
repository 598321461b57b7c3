"""The real-browser harness shared by ``tests/e2e`` and ``python -m benchmarks widget``: a JupyterLab or Notebook 7
server on 127.0.0.1 and a Playwright page on one of its notebooks.

Each server gets its own config/data/runtime dirs and a token, listens on 127.0.0.1 only, and is stopped by
:func:`stop_server`. Everything the server and its kernels write lives under the folder given to
:func:`start_server`. No browser download: Playwright drives the system ``chromium`` through ``executable_path``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tracin-e2e-token"
SERVER_START_TIMEOUT_S = 120
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Notebook 7.6 throws this from notebook_core on every page, even /tree with no widget (widget-anchors 5.3).
KNOWN_PAGE_ERRORS = ("reading 'schema'",)

FRONTENDS = {
    # name: (python -m module, app class for expose_app_in_browser, notebook URL template)
    "lab": ("jupyterlab", "LabApp", "lab/tree/{path}"),
    "notebook": ("notebook", "JupyterNotebookApp", "notebooks/{path}"),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@dataclass
class JupyterServer:
    frontend: str  # "lab" | "notebook"
    base_url: str
    token: str
    root: Path  # server root_dir: put notebooks here
    runtime_dir: Path
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    def notebook_url(self, name: str) -> str:
        return f"{self.base_url}/{FRONTENDS[self.frontend][2].format(path=name)}?token={self.token}"

    def api(self, path: str):
        req = urllib.request.Request(f"{self.base_url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def kernel_exec(self, notebook: str, code: str, timeout_s: float = 60) -> str:
        """Run ``code`` in the kernel of ``notebook`` (same namespace) via a second client; returns its stdout.

        Raises AssertionError with the traceback if the code fails.
        """
        from jupyter_client import BlockingKernelClient

        sessions = [s for s in self.api("/api/sessions") if s["path"] == notebook]
        assert sessions, f"no kernel session for {notebook!r}: {self.api('/api/sessions')}"
        kernel_id = sessions[0]["kernel"]["id"]
        client = BlockingKernelClient(connection_file=str(self.runtime_dir / f"kernel-{kernel_id}.json"))
        client.load_connection_file()
        client.start_channels()
        out: list[str] = []
        errors: list[str] = []

        def hook(msg):
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                out.append(content["text"])
            elif kind == "error":
                errors.append("\n".join(content["traceback"]))

        try:
            client.wait_for_ready(timeout=timeout_s)
            reply = client.execute_interactive(code, output_hook=hook, timeout=timeout_s, store_history=False)
        finally:
            client.stop_channels()
        assert reply["content"]["status"] == "ok" and not errors, f"kernel code failed:\n{code}\n" + "\n".join(errors)
        return "".join(out)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no log>"


def start_server(frontend: str, tmp: Path) -> JupyterServer:
    module, app_class, _ = FRONTENDS[frontend]
    names = ("root", "config", "data", "settings", "workspaces", "runtime", "ipython", "mpl", "tmp", "cache")
    dirs = {name: tmp / name for name in names}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # Lab 4.6: --LabApp.news_url=None does not stop the news toast; this settings file does (pitfall 3).
    _write_json(
        dirs["settings"] / "@jupyterlab/apputils-extension/notification.jupyterlab-settings",
        {"fetchNews": "false", "checkForUpdates": False},
    )
    env = {k: v for k, v in os.environ.items() if k not in {"ANYWIDGET_HMR", "JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH"}}
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        MPLCONFIGDIR=str(dirs["mpl"]),
        XDG_CACHE_HOME=str(dirs["cache"]),  # the explorer's default review files land in the server's folder
        MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        PYTHONUNBUFFERED="1",
        TMPDIR=str(dirs["tmp"]),  # the notebook's tempfile.mkdtemp() (checkpoints) lands under pytest's tmp
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
    )
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between probe and bind: retry with another
        port = _free_port()
        log_path = tmp / f"server-{port}.log"
        log = open(log_path, "wb")  # closed when the process ends
        cmd = [
            sys.executable,
            "-m",
            module,
            "--no-browser",
            "--allow-root",  # CI runs as root (pitfall 1)
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={dirs['root']}",
            f"--{app_class}.expose_app_in_browser=True",
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=dirs["root"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        server = JupyterServer(
            frontend, f"http://127.0.0.1:{port}", TOKEN, dirs["root"], dirs["runtime"], log_path, proc
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = f"{module} exited with {proc.returncode}:\n{server.log_tail()}"
                break
            try:
                server.api("/api/status")
                return server
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)  # readiness poll of a subprocess, not a browser wait
        else:
            stop_server(server)
            raise RuntimeError(
                f"{module} did not answer /api/status in {SERVER_START_TIMEOUT_S}s:\n{server.log_tail()}"
            )
    raise RuntimeError(last_error)


def stop_server(server: JupyterServer) -> None:
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down (pitfall 10)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class JupyterPage:
    """A Playwright page on one notebook, with the few Jupyter commands the tests need."""

    def __init__(self, page, server: JupyterServer):
        self.page = page
        self.server = server
        self.page_errors: list[str] = []
        self.widget = None  # set by tests: the locator of the widget's output
        page.on("pageerror", lambda exc: self.page_errors.append(f"{exc.name}: {exc.message}"))

    @property
    def unexpected_page_errors(self) -> list[str]:
        return [e for e in self.page_errors if not any(k in e for k in KNOWN_PAGE_ERRORS)]

    def open(self, name: str, timeout_ms: float = 90_000) -> None:
        self.page.goto(self.server.notebook_url(name))
        self.page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout_ms)
        self.wait_kernel_idle(timeout_ms)
        # JupyterLab: collapse the file browser so the widget gets the width (Notebook 7 has no left area open).
        self.page.evaluate("() => { const s = window.jupyterapp.shell; if (s.collapseLeft) s.collapseLeft(); }")

    def wait_kernel_idle(self, timeout_ms: float = 90_000) -> None:
        self.page.wait_for_function(
            "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
            timeout=timeout_ms,
        )

    def command(self, command_id: str, args: dict | None = None):
        return self.page.evaluate(
            "([id, args]) => window.jupyterapp.commands.execute(id, args)", [command_id, args or {}]
        )

    def run_cell(self, index: int) -> None:
        self.page.evaluate("(i) => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = i; }", index)
        self.command("notebook:run-cell")

    def cell(self, index: int):
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def cell_output(self, index: int):
        return self.cell(index).locator(".jp-OutputArea-output")
