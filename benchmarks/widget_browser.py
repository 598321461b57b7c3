"""The browser part of ``benchmarks/widget.py``: JupyterLab on 127.0.0.1 + Debian chromium (Playwright), through
the harness of ``benchmarks/browser.py`` (the one ``tests/e2e`` uses).

A notebook loads the workload; (iii) runs a cold explorer cell: run-cell -> progress bar visible / first
"n / total" with n > 0; then cancels it and builds the explorer from the factor cache. (i) click test example j
of the strip -> all k proponent and k opponent tiles of that example in the DOM (gallery not stale), and the next
animation frame; (ii) click "next page" -> 50 rows with thumbnails of that page in the DOM, and the next frame;
(iv) click row j of that table page -> its label and self-influence rank in the details panel. Times are taken in
the page (performance.now(), MutationObserver); the kernel-side share (message received -> reply sent) is
recorded by the kernel's explorer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.widget import loadavg, stats_ms

REPO = Path(__file__).resolve().parent.parent

NOTEBOOK_CELLS = [
    # 0: load the workload
    "import sys, json\n"
    "sys.path[:0] = [{repo!r}]\n"
    "import benchmarks.widget as B\n"
    "d = B.load({data_dir!r}, {n_train}, {n_test}, {seed})\n"
    "rec = B.Recorder()\n"
    "print('LOADED')",
    # 1: a cold explorer (no factor cache): progress from the first second?
    "cold = B.make_explorer(d, k={k})\ncold",
    # 2: stop it
    "cold.cancel(); cold.wait(600); cold.close(); print('COLD', cold.status)",
    # 3: the explorer with cached factors, instrumented
    "explorer = B.make_explorer(d, k={k}, cache_dir={cache!r}, cls=B.timed_class(rec))\nexplorer",
    # 4: wait for the background work
    "explorer.wait(3600); print('READY', explorer.status)",
]

# In-page timers. Each returns {dom, frame} in ms from the click: the DOM holds the complete answer (MutationObserver),
# and the next animation frame after that. SETUP defines `target` (what is clicked) and `done()`.
_TIMER_JS = """
async (arg) => {
  const roots = document.querySelectorAll('.tracin-root');
  const root = roots[roots.length - 1];
  %s
  return await new Promise((resolve, reject) => {
    let t0 = 0;
    const mo = new MutationObserver(() => {
      if (!done()) return;
      const dom = performance.now() - t0;
      mo.disconnect();
      requestAnimationFrame(() => resolve({ dom, frame: performance.now() - t0 }));
    });
    mo.observe(root, { subtree: true, childList: true, attributes: true, characterData: true });
    setTimeout(() => { mo.disconnect(); reject(new Error('timeout')); }, 60000);
    t0 = performance.now();
    target.click();
  });
}
"""

MEASURE_GALLERY_JS = (
    _TIMER_JS
    % """
  const [j, k] = arg;
  const target = root.querySelectorAll('[data-testid=tracin-test-item]')[j];
  const idx = target.dataset.index;
  const done = () => {
    const g = root.querySelector('section.tracin-gallery');
    const st = root.querySelector('[data-testid=tracin-gallery-status]').textContent;
    const pro = root.querySelectorAll('[data-testid=tracin-proponent]');
    const opp = root.querySelectorAll('[data-testid=tracin-opponent]');
    return !g.classList.contains('is-stale') && (st === `test #${idx}` || st.startsWith(`test #${idx} `))
      && pro.length === k && opp.length === k && [...pro, ...opp].every((t) => t.querySelector('canvas'));
  };"""
)

MEASURE_PAGE_JS = (
    _TIMER_JS
    % """
  const target = root.querySelector('[data-testid=tracin-table-next]');
  const text = root.querySelector('[data-testid=tracin-table-page]');
  const tbody = root.querySelector('[data-testid=tracin-table] tbody');
  const done = () => !tbody.classList.contains('is-loading') && text.textContent.includes(`page ${arg + 1}/`)
    && tbody.rows.length === 50 && [...tbody.rows].every((r) => r.querySelector('canvas.tracin-img-row'));"""
)

MEASURE_DETAILS_JS = (
    _TIMER_JS
    % """
  const target = root.querySelectorAll('[data-testid=tracin-table-row]')[arg];
  const idx = target.dataset.index;
  const panel = root.querySelector('[data-testid=tracin-details]');
  const done = () => !panel.hidden && panel.dataset.index === idx
    && panel.querySelector('[data-testid=tracin-details-label]') !== null
    && panel.querySelector('[data-testid=tracin-details-rank]') !== null;"""
)

MEASURE_PROGRESS_JS = """
async ([cell, timeoutMs]) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget.content;
  nb.activeCellIndex = cell;
  const node = nb.widgets[cell].node;
  const out = { visible: null, first_any: null, first_factor: null, texts: [] };
  const t0 = performance.now();
  app.commands.execute('notebook:run-cell');
  return await new Promise((resolve) => {
    const tick = () => {
      const t = performance.now() - t0;
      const p = node.querySelector('[data-testid=tracin-progress]');
      if (p && !p.hidden && p.getClientRects().length) {
        if (out.visible === null) out.visible = t;
        const txt = p.querySelector('[data-testid=tracin-progress-text]').textContent;
        if (!out.texts.length || out.texts[out.texts.length - 1][1] !== txt) out.texts.push([Math.round(t), txt]);
        const m = txt.match(/([\\d,]+) \\/ ([\\d,]+)/);
        const n = m ? Number(m[1].replace(/,/g, '')) : 0;
        if (n > 0 && out.first_any === null) out.first_any = t;
        if (n > 0 && /training factors/i.test(txt) && out.first_factor === null) out.first_factor = t;
      }
      if (out.first_factor !== null || t > timeoutMs) resolve(out); else requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
}
"""


def _kernel_json(server, nb: str, code: str) -> Any:
    return json.loads(server.kernel_exec(nb, code, timeout_s=300).strip().splitlines()[-1])


def browser_part(paths: dict, args, log) -> dict:
    import nbformat
    from playwright.sync_api import expect, sync_playwright

    from benchmarks.browser import CHROME_ARGS, JupyterPage, start_server, stop_server

    if not (REPO / "tracin_widgets/widget/static/widget.js").exists():
        raise SystemExit("the widget's JS bundle is missing: cd js && npm ci && npm run build")
    if shutil.which("chromium") is None:
        raise SystemExit("Debian chromium is needed for --parts browser (bash .ci/setup --test)")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # the kernel: torch's default threads
    out: dict[str, Any] = {"loadavg_start": loadavg()}
    fmt = dict(
        repo=str(REPO),
        data_dir=str(paths["data"]),
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        k=args.k,
        cache=str(paths["cache"]),
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(**fmt)) for c in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    name = "widget_benchmark.ipynb"
    tmp = Path(tempfile.mkdtemp(prefix="tracin-bench-widget-"))
    server = start_server("lab", tmp)
    shots = REPO / "benchmarks" / "out"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        nbformat.write(nb, server.root / name)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=CHROME_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(120_000)
            jp = JupyterPage(context.new_page(), server)
            jp.open(name)
            jp.run_cell(0)
            expect(jp.cell_output(0)).to_have_text("LOADED", timeout=600_000)
            jp.wait_kernel_idle(600_000)

            # (iii) cold explorer: run-cell -> progress bar visible, first "n / total" with n > 0
            prog = jp.page.evaluate(MEASURE_PROGRESS_JS, [1, 120_000])
            out["progress"] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in prog.items()}
            log(
                f"browser (iii): visible {prog['visible']:.0f} ms, first n>0 {prog['first_any']} ms, "
                f"first factor n>0 {prog['first_factor']} ms"
            )
            jp.cell_output(1).screenshot(path=str(shots / "widget-progress.png"))
            jp.run_cell(2)
            expect(jp.cell_output(2)).to_contain_text("COLD", timeout=600_000)

            # the explorer with cached factors
            jp.run_cell(3)
            jp.run_cell(4)
            expect(jp.cell_output(4)).to_contain_text("READY", timeout=3_600_000)
            out["ready_status"] = jp.cell_output(4).inner_text().strip()
            widget = jp.cell_output(3)
            expect(widget.get_by_test_id("tracin-test-item").first).to_be_visible()
            expect(widget.get_by_test_id("tracin-proponent")).to_have_count(args.k, timeout=120_000)
            expect(widget.get_by_test_id("tracin-progress")).to_be_hidden(timeout=600_000)
            jp.page.mouse.move(0, 0)
            time.sleep(1.0)
            out["loadavg_gallery"] = loadavg()

            # (i) click test examples 1..reps of the strip (new selections)
            n_items = widget.get_by_test_id("tracin-test-item").count()
            reps = min(args.reps, n_items - 1)
            gal = []
            n0 = _kernel_json(server, name, "print(len(rec.events))")
            for j in range(1, reps + 1):
                r = jp.page.evaluate(MEASURE_GALLERY_JS, [j, args.k])
                gal.append(r)
                time.sleep(0.3)
            ker = _kernel_json(server, name, KERNEL_GALLERY_TIMES.format(n0=n0))
            out["gallery_dom"] = stats_ms([r["dom"] / 1000 for r in gal])
            out["gallery_frame"] = stats_ms([r["frame"] / 1000 for r in gal])
            out["gallery_kernel"] = stats_ms(ker)
            log(
                f"browser (i) gallery: dom {out['gallery_dom']['median_ms']} / p90 {out['gallery_dom']['p90_ms']} ms, "
                f"frame {out['gallery_frame']['median_ms']} / {out['gallery_frame']['p90_ms']} ms, "
                f"kernel {out['gallery_kernel'].get('median_ms')} ms"
            )
            widget.screenshot(path=str(shots / "widget-gallery.png"))

            # (ii) the table: open it (first page), then next pages
            widget.get_by_test_id("tracin-tab-ranking").click()
            expect(widget.get_by_test_id("tracin-table-row")).to_have_count(50, timeout=120_000)
            time.sleep(0.5)
            out["loadavg_table"] = loadavg()
            n0 = _kernel_json(server, name, "print(len(rec.events))")
            pages = []
            for page in range(1, args.reps + 1):
                pages.append(jp.page.evaluate(MEASURE_PAGE_JS, page))
                time.sleep(0.3)
            ker = _kernel_json(server, name, KERNEL_REPLY_TIMES.format(n0=n0, kind="rows"))
            out["table_dom"] = stats_ms([r["dom"] / 1000 for r in pages])
            out["table_frame"] = stats_ms([r["frame"] / 1000 for r in pages])
            out["table_kernel"] = stats_ms(ker)
            log(
                f"browser (ii) table page: dom {out['table_dom']['median_ms']} / p90 {out['table_dom']['p90_ms']} ms, "
                f"frame {out['table_frame']['median_ms']} / {out['table_frame']['p90_ms']} ms, "
                f"kernel {out['table_kernel'].get('median_ms')} ms"
            )
            widget.screenshot(path=str(shots / "widget-table.png"))

            # (iv) the details panel: click row j of the table page -> its details (label, rank) in the panel
            n0 = _kernel_json(server, name, "print(len(rec.events))")
            det = []
            for j in range(min(args.reps, 50)):
                det.append(jp.page.evaluate(MEASURE_DETAILS_JS, j))
                time.sleep(0.3)
            ker = _kernel_json(server, name, KERNEL_REPLY_TIMES.format(n0=n0, kind="detail"))
            out["details_dom"] = stats_ms([r["dom"] / 1000 for r in det])
            out["details_frame"] = stats_ms([r["frame"] / 1000 for r in det])
            out["details_kernel"] = stats_ms(ker)
            log(
                f"browser (iv) details: dom {out['details_dom']['median_ms']} / max {out['details_dom']['max_ms']} "
                f"ms, frame {out['details_frame']['median_ms']} ms, kernel {out['details_kernel'].get('median_ms')} ms"
            )
            widget.screenshot(path=str(shots / "widget-details.png"))
            out["page_errors"] = jp.unexpected_page_errors
            context.close()
            browser.close()
    finally:
        stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_end"] = loadavg()
    return out


# Kernel side: message received (recv) -> the answer left the widget (send), per request after event n0.
KERNEL_GALLERY_TIMES = """
_ev = rec.events[{n0}:]
_out = []
for _i, (_t, _k, _m) in enumerate(_ev):
    if _k == 'recv' and _m.get('method') == 'update' and 'query' in _m.get('state', {{}}):
        _q = _m['state']['query']
        for _t2, _k2, _m2 in _ev[_i + 1:]:
            _g = _m2.get('state', {{}}).get('gallery') if _k2 == 'send' and _m2.get('method') == 'update' else None
            if _g is not None and _g.get('query') == _q:
                _out.append(_t2 - _t)
                break
print(json.dumps(_out))
"""

KERNEL_REPLY_TIMES = """
_ev = rec.events[{n0}:]
_out = []
for _i, (_t, _k, _m) in enumerate(_ev):
    if _k == 'recv' and _m.get('method') == 'custom' and _m['content'].get('kind') == {kind!r}:
        _id = _m['content'].get('id')
        for _t2, _k2, _m2 in _ev[_i + 1:]:
            if _k2 == 'send' and _m2.get('method') == 'custom' and _m2['content'].get('id') == _id:
                _out.append(_t2 - _t)
                break
print(json.dumps(_out))
"""
