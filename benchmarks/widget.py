"""InfluenceExplorer latency, Python-side and end to end in a real browser.

Targets, with the training factors cached:
  (i)   a new test selection shows its galleries        <= 300 ms after the click
  (ii)  a table page of 50 rows with thumbnails         <= 200 ms
  (iii) the first factor pass shows progress from its first second (construction -> first progress with done > 0)
  (iv)  a table row's details                           <= 200 ms

Workload: ``benchmarks/workload.py``'s (``--n-train`` synthetic CIFAR-shaped images, the tutorial's ``Net``, 6
checkpoints loaded by the default loader), the training set read item by item (the ``uint8`` source), and
``InfluenceExplorer(model, checkpoints, train, test, class_names=CIFAR classes, k=10, is_mislabelled=...)``: the
default engine (TracInCPFast on fc3, cross-entropy with reduction="sum"); ``cache_dir=`` for the cached factors.

Parts (``--parts``, comma separated):
  python   in-process, no kernel. (iii) a cold explorer: construction -> first ``progress_info`` update with done > 0
           (any phase, and the "training factors" phase), the largest gap between factor-pass updates, time to
           ready; it writes the factor cache. Then on that ready explorer: (i) the frontend's ``update`` message
           (selected_test + query, through ``Widget._handle_msg``) -> the ``gallery`` state update leaves
           ``Widget._send`` (JSON-encoded as the kernel would); (ii) a ``rows`` custom message for the next page ->
           its reply leaves ``_send``. Also a warm explorer built from the factor cache: construction -> ready.
  browser  JupyterLab + Debian chromium (``benchmarks/widget_browser.py``): the same measures from the click to the
           complete answer in the DOM.
  load     a warm explorer (factor cache): new test selections on the machine as it is ("quiet") and with --busy
           busy-loop processes started and killed here ("loaded"), under the explorer's query thread policies
           (auto, one thread, torch's default), interleaved (target: loaded <= 3x quiet).
  size     a cold explorer at --n-train (no factor cache): time to ready and each background step's share, the
           process's memory against the engine's factors, then each interaction once: new sorts and filters (page
           0 of each), the next page, a details request, a new test example's galleries.
  store    an explorer over a streamed factor store of --n-train 8x8 images (``workload.store_workload``): factors
           ready -> first table page, each interaction, memory against the store's size.

Medians and p90 over ``--reps`` (>= 10) new selections / new pages. Results: JSON in benchmarks/out/ (gitignored).
``python -m benchmarks widget`` runs it and records the figures in benchmarks/results/ and
benchmarks/WIDGET_RESULTS.md. By hand (from the repository root):
  python -m benchmarks.widget --n-train 5000 --reps 10 --parts python   # quick smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import workload as wl
from tracin_widgets.tutorial import Net  # the tutorial's network; 3x32x32 by default
from tracin_widgets.widget import InfluenceExplorer

HERE = Path(__file__).resolve().parent


def prepare(data_dir: Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """Generate the workload once (idempotent); returns where its data and its factor cache live."""
    wl.prepare_data(data_dir, seed, "cpu", n_train, n_test)
    return {"data": Path(data_dir), "cache": Path(data_dir) / f"widget-factor-cache-{wl._tag(seed, n_train, n_test)}"}


def load(data_dir: Path, n_train: int, n_test: int, seed: int) -> dict:
    """The workload (prepared by :func:`prepare`): model, checkpoints, datasets, ground truth, cache dir."""
    d = wl.prepare_data(Path(data_dir), seed, "cpu", n_train, n_test)
    model = Net()
    model.load_state_dict(torch.load(d["checkpoints"][-1], weights_only=True)["model_state_dict"])
    return {
        "model": model,
        "checkpoints": d["checkpoints"],
        "train": wl.UInt8Dataset(d["x_train"], d["y_train"]),
        "test": wl.UInt8Dataset(d["x_test"], d["y_test"]),
        "is_mislabelled": d["flipped"],
        "cache_dir": prepare(data_dir, n_train, n_test, seed)["cache"],
    }


def make_explorer(d: dict, *, k: int = 10, cache_dir: Any = None, cls: type = InfluenceExplorer) -> InfluenceExplorer:
    """The explorer as a user builds it (default engine); ``cache_dir`` for the cached factors."""
    return cls(
        d["model"],
        d["checkpoints"],
        d["train"],
        d["test"],
        class_names=list(wl.CLASSES),
        k=k,
        is_mislabelled=d["is_mislabelled"],
        cache_dir=cache_dir,
    )


# ---------------------------------------------------------------------------------------------------------------------
# instrumentation: what enters and leaves the widget, with times
# ---------------------------------------------------------------------------------------------------------------------
class Recorder:
    """Thread-safe log of (perf_counter time, kind, payload) events; waits for one that matches."""

    def __init__(self):
        self.cv = threading.Condition()
        self.events: list[tuple[float, str, Any]] = []

    def add(self, kind: str, payload: Any, t: float | None = None) -> None:
        with self.cv:
            self.events.append((time.perf_counter() if t is None else t, kind, payload))
            self.cv.notify_all()

    def wait_for(self, pred: Callable[[str, Any], bool], start: int = 0, timeout: float = 600.0):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for ev in self.events[start:]:
                    if pred(ev[1], ev[2]):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the awaited widget event did not come")
                self.cv.wait(left)


def timed_class(rec: Recorder) -> type:
    """An InfluenceExplorer subclass that logs messages in (``recv``) and out (``send``, JSON-encoded like a kernel)."""

    class TimedExplorer(InfluenceExplorer):
        def _handle_msg(self, msg):
            rec.add("recv", msg["content"]["data"])
            return super()._handle_msg(msg)

        def _send(self, msg, buffers=None):
            json.dumps(msg, separators=(",", ":"))  # the kernel's session serialises it (buffers go as frames)
            rec.add("send", msg)
            return super()._send(msg, buffers)

    return TimedExplorer


def _state(kind: str, msg: Any, key: str) -> Any:
    if kind == "send" and msg.get("method") == "update":
        return msg["state"].get(key)
    return None


def _progress_done(kind: str, msg: Any, phase: str | None = None) -> bool:
    info = _state(kind, msg, "progress_info")
    return bool(info) and info.get("done", 0) > 0 and (phase is None or info.get("phase") == phase)


def update_msg(state: dict) -> dict:
    """A comm message as the frontend's ``model.save_changes()`` sends it."""
    return {"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []}


def custom_msg(content: dict) -> dict:
    """A comm message as the frontend's ``model.send(content)`` sends it."""
    return {"content": {"data": {"method": "custom", "content": content}}, "buffers": []}


def rows_request(rid: int, page: int) -> dict:
    return {
        "kind": "rows",
        "id": rid,
        "offset": 50 * page,
        "limit": 50,
        "sort": "rank",
        "descending": False,
        "label": None,
        "only": "all",
        "score_range": None,
    }


def stats_ms(values_s: list[float]) -> dict:
    ms = sorted(1000.0 * v for v in values_s)
    if not ms:
        return {}
    p90 = float(np.percentile(ms, 90, method="higher")) if len(ms) > 1 else ms[0]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(p90, 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
        "all_ms": [round(v, 1) for v in ms],
    }


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------------------------------
# Python-side part
# ---------------------------------------------------------------------------------------------------------------------
def python_part(d: dict, cache_dir: Path, args, log) -> dict:
    out: dict[str, Any] = {"loadavg_start": loadavg()}
    shutil.rmtree(cache_dir, ignore_errors=True)

    # (iii) cold explorer: first progress, continuity of the factor pass, time to ready; writes the factor cache
    rec = Recorder()
    gc.collect()
    t0 = time.perf_counter()
    w = make_explorer(d, k=args.k, cache_dir=cache_dir, cls=timed_class(rec))
    t_init = time.perf_counter()
    ev_any = rec.wait_for(lambda kd, m: _progress_done(kd, m))
    ev_fac = rec.wait_for(lambda kd, m: _progress_done(kd, m, "training factors"), timeout=1800)
    w.wait(3600)
    t_ready = time.perf_counter()
    fac = [t for t, kd, m in rec.events if _progress_done(kd, m, "training factors")]
    gaps = np.diff([ev_fac[0]] + fac) if len(fac) > 1 else np.zeros(1)
    first_any = _state(ev_any[1], ev_any[2], "progress_info")
    out["progress"] = {
        "constructor_ms": round(1000 * (t_init - t0), 1),
        "first_done_any_ms": round(1000 * (ev_any[0] - t0), 1),
        "first_done_any_phase": first_any.get("phase"),
        "first_done_factor_ms": round(1000 * (ev_fac[0] - t0), 1),
        "factor_updates": len(fac),
        "factor_max_gap_ms": round(1000 * float(np.max(gaps)), 1),
        "ready_s": round(t_ready - t0, 1),
        "status": w.status,
    }
    log(f"python (iii): {out['progress']}")
    assert w.status == "ready", w.error

    # instrument the engine and the thumbnails (breakdown of the gallery time)
    engine_s: list[float] = []
    real_influence = w.source.influence

    def influence(*a, **kw):
        t = time.perf_counter()
        try:
            return real_influence(*a, **kw)
        finally:
            engine_s.append(time.perf_counter() - t)

    w.source.influence = influence

    # (i) new test selections, as the frontend sends them
    rng = np.random.default_rng(args.seed + 1)
    queried = {int(w.selected_test)}
    test_ids = [i for i in rng.permutation(len(d["test"])).tolist() if i not in queried][: args.reps]
    gallery_s, engine_per = [], []
    for idx in test_ids:
        start, n_eng = len(rec.events), len(engine_s)
        t = time.perf_counter()
        w._handle_msg(update_msg({"selected_test": idx, "query": {"source": "test", "index": idx}}))

        def drawn(kd, m, idx=idx):
            g = _state(kd, m, "gallery")
            return g is not None and g.get("query", {}).get("index") == idx

        ev = rec.wait_for(drawn, start, timeout=120)
        g = _state(ev[1], ev[2], "gallery")
        assert g["error"] is None and len(g["proponents"]) == args.k and len(g["opponents"]) == args.k, g["error"]
        gallery_s.append(ev[0] - t)
        engine_per.append(sum(engine_s[n_eng:]))
        time.sleep(0.05)
    out["gallery"] = stats_ms(gallery_s)
    out["gallery_engine"] = stats_ms(engine_per)
    log(f"python (i) gallery: {out['gallery']} (engine influence(): {out['gallery_engine']['median_ms']} ms median)")

    # (ii) table pages: open the table (page 0: sorts 50k scores once), then next pages
    start = len(rec.events)
    t = time.perf_counter()
    w._handle_msg(custom_msg(rows_request(0, 0)))
    out["table_first_page_ms"] = round(1000 * (rec.wait_for(lambda kd, m: kd == "send", start)[0] - t), 1)
    page_s = []
    for page in range(1, args.reps + 1):
        start = len(rec.events)
        t = time.perf_counter()
        w._handle_msg(custom_msg(rows_request(page, page)))

        def answered(kd, m, page=page):
            return kd == "send" and m.get("method") == "custom" and m["content"].get("id") == page

        ev = rec.wait_for(answered, start)
        c = ev[2]["content"]
        assert c["kind"] == "rows" and len(c["rows"]) == 50 and all(r["image"] for r in c["rows"]), c.get("message")
        page_s.append(ev[0] - t)
    out["table_page"] = stats_ms(page_s)
    log(f"python (ii) table page: {out['table_page']} (first page {out['table_first_page_ms']} ms)")

    w.source.influence = real_influence
    w.close()
    del w
    gc.collect()

    # a warm explorer from the factor cache: construction -> ready (what a re-run notebook waits for)
    t0 = time.perf_counter()
    w2 = make_explorer(d, k=args.k, cache_dir=cache_dir)
    w2.wait(3600)
    out["warm_ready_s"] = round(time.perf_counter() - t0, 1)
    assert w2.status == "ready", w2.error
    log(f"python: explorer from the factor cache ready in {out['warm_ready_s']} s")
    w2.close()
    out["loadavg_end"] = loadavg()
    return out


def rss_mb(trim: bool = False) -> float | None:
    """This process's resident memory (Linux /proc), MB; ``trim``: first give freed heap memory back to the system
    (glibc ``malloc_trim``), so that what is left is what is held."""
    if trim:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _step_times(rec: Recorder, t0: float, t_ready: float) -> dict[str, float]:
    """Seconds per background step, from the ``progress_info`` updates (a step starts at its first update)."""
    starts: dict[int, tuple[str, float]] = {}
    for t, kd, m in rec.events:
        info = _state(kd, m, "progress_info")
        if info and info.get("step") and info["step"] not in starts:
            starts[info["step"]] = (info.get("phase", ""), t)
    keys = sorted(starts)
    out = {}
    for i, k in enumerate(keys):
        end = starts[keys[i + 1]][1] if i + 1 < len(keys) else t_ready
        out[starts[k][0]] = round(end - starts[k][1], 2)
    return out


SIZE_QUERIES: list[tuple[str, dict]] = [
    ("sort score descending", {"sort": "score", "descending": True}),
    ("sort rank", {"sort": "rank", "descending": False}),
    ("sort index", {"sort": "index", "descending": False}),
    ("sort label", {"sort": "label", "descending": False}),
    ("sort prediction descending", {"sort": "pred", "descending": True}),
    ("filter class 3", {"label": 3}),
    ("filter label != prediction", {"only": "disagree"}),
    ("filter mislabelled", {"only": "mislabelled"}),
    ("sort label, class 3, label != prediction", {"sort": "label", "label": 3, "only": "disagree"}),
    ("sort rank descending, mislabelled", {"sort": "rank", "descending": True, "only": "mislabelled"}),
]


def size_part(d: dict, args, log) -> dict:
    """A cold explorer at ``--n-train`` (no factor cache): time to ready and each background step's share, the
    kernel's memory for the explorer against its factors, then the interactions (new sorts and filters, a next
    page, a gallery, a details request), each timed once from the message to the reply leaving ``_send``."""
    gc.collect()
    out: dict[str, Any] = {"loadavg_start": loadavg(), "n_train": len(d["train"]), "rss_before_mb": rss_mb()}
    rec = Recorder()
    t0 = time.perf_counter()
    w = make_explorer(d, k=args.k, cls=timed_class(rec))
    w.wait(7200)
    t_ready = time.perf_counter()
    assert w.status == "ready", w.error
    out["ready_s"] = round(t_ready - t0, 1)
    out["steps_s"] = _step_times(rec, t0, t_ready)
    gc.collect()
    out["rss_ready_mb"] = rss_mb()
    out["rss_ready_trimmed_mb"] = rss_mb(trim=True)  # freed heap given back: what is still held
    bank = getattr(w.source, "factors_", None)
    fac = bank.factors if bank is not None else None
    tensors = [getattr(fac, "A", None), getattr(fac, "G", None)]
    nbytes = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    out["factors_mb"] = round(nbytes / 2**20, 1) if nbytes else None
    log(f"size: ready in {out['ready_s']} s, steps {out['steps_s']}, rss {out['rss_ready_mb']} MB")

    def ask(content: dict) -> float:
        start = len(rec.events)
        t = time.perf_counter()
        w._handle_msg(custom_msg(content))
        ev = rec.wait_for(
            lambda kd, m: kd == "send" and m.get("method") == "custom" and m["content"].get("id") == content["id"],
            start,
        )
        assert ev[2]["content"]["kind"] != "error", ev[2]["content"]
        return round(1000 * (ev[0] - t), 1)

    inter: dict[str, float] = {}
    rid = 1000
    for label, q in SIZE_QUERIES:
        rid += 1
        inter[label] = ask({**rows_request(rid, 0), **q, "id": rid})
    rid += 1
    inter["next page"] = ask({**rows_request(rid, 1), "id": rid})
    rid += 1
    inter["details"] = ask({"kind": "detail", "id": rid, "index": int(len(d["train"]) // 3)})
    start = len(rec.events)
    t = time.perf_counter()
    w._handle_msg(update_msg({"selected_test": 7, "query": {"source": "test", "index": 7}}))
    ev = rec.wait_for(
        lambda kd, m: (_state(kd, m, "gallery") or {}).get("query", {}).get("index") == 7, start, timeout=120
    )
    inter["gallery (new test example)"] = round(1000 * (ev[0] - t), 1)
    out["interactions_ms"] = inter
    out["max_interaction_ms"] = max(inter.values())
    log(f"size: interactions {inter}")
    w.close()
    out["loadavg_end"] = loadavg()
    return out


BUSY_LOOP = "while True: pass"


def busy_processes(n: int) -> list:
    """``n`` processes that keep a core each busy (a laptop running other work); the caller stops them."""
    import subprocess
    import sys

    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]


def load_part(d: dict, cache_dir: Path, args, log) -> dict:
    """Warm gallery queries (a new test example each time: top-k proponents and opponents) on a quiet machine and
    with ``--busy`` busy-loop processes started (and stopped) here, each under the explorer's query thread policy
    (``_threads.QUERY_THREADS``: "auto", the idle cores), one thread and torch's default threads, interleaved."""
    from tracin_widgets.widget import _threads

    rec = Recorder()
    w = make_explorer(d, k=args.k, cache_dir=cache_dir, cls=timed_class(rec))
    w.wait(3600)
    assert w.status == "ready", w.error
    rng = np.random.default_rng(args.seed + 2)
    ids = iter(i for i in rng.permutation(len(d["test"])).tolist() if i != int(w.selected_test))

    def query(idx: int) -> float:
        start = len(rec.events)
        t = time.perf_counter()
        w._handle_msg(update_msg({"selected_test": idx, "query": {"source": "test", "index": idx}}))
        ev = rec.wait_for(
            lambda kd, m: (_state(kd, m, "gallery") or {}).get("query", {}).get("index") == idx, start, timeout=120
        )
        g = _state(ev[1], ev[2], "gallery")
        assert g["error"] is None and len(g["proponents"]) == args.k, g["error"]
        return ev[0] - t

    policies = {"auto": "auto", "one_thread": 1, "torch_default": None}
    default = _threads.QUERY_THREADS
    out: dict[str, Any] = {
        "n_train": len(d["train"]),
        "busy_processes": args.busy,
        "query_threads": default,
        "torch_threads": torch.get_num_threads(),
    }
    for cond in ("quiet", "loaded"):
        procs = busy_processes(args.busy) if cond == "loaded" else []
        try:
            time.sleep(1.0)
            times: dict[str, list[float]] = {p: [] for p in policies}
            query(next(ids))  # first query of the condition: warm-up, not counted
            for _ in range(args.reps):
                for name, n in policies.items():
                    _threads.QUERY_THREADS = n
                    try:
                        times[name].append(query(next(ids)))
                    finally:
                        _threads.QUERY_THREADS = default
                    time.sleep(0.05)
            out[cond] = {name: stats_ms(v) for name, v in times.items()}
            out[cond]["loadavg"] = loadavg()
        finally:
            for p in procs:
                p.kill()
                p.wait()
        log(f"load: {cond}: " + ", ".join(f"{k} {v['median_ms']} ms" for k, v in out[cond].items() if k in policies))
    for name in policies:
        q, ld = out["quiet"][name]["median_ms"], out["loaded"][name]["median_ms"]
        out[f"loaded_over_quiet_{name}"] = round(ld / q, 2) if q else None
    w.close()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------
PARTS = {"python", "browser", "size", "load", "store"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=10, help="proponents and opponents per gallery (the widget's default)")
    ap.add_argument("--reps", type=int, default=15, help="new selections / new pages per measure (>= 10)")
    ap.add_argument(
        "--parts",
        default="python,browser",
        help="python, browser, load (warm queries quiet vs busy cores), size (ready time, memory, interactions at N)",
    )
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes of --parts load's loaded condition")
    ap.add_argument("--data-dir", type=Path, default=wl.DATA_DIR)
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/out/widget-<time>.json)")
    args = ap.parse_args(argv)
    if args.reps < 10:
        ap.error("--reps must be >= 10 (medians and p90 of at least 10 runs)")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - PARTS:
        ap.error(f"unknown --parts {sorted(parts - PARTS)}; choose from {sorted(PARTS)}")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {' '.join(map(str, loadavg()))}] {msg}", flush=True)

    torch.manual_seed(args.seed)
    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": wl.machine_info(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loadavg_start": loadavg(),
    }
    if "store" in parts:  # its own digits-like workload, made in memory
        from benchmarks.widget_store import store_part

        res["store"] = store_part(args, log)
    paths = prepare(args.data_dir, args.n_train, args.n_test, args.seed) if parts - {"store"} else {}
    if "python" in parts:
        d = load(args.data_dir, args.n_train, args.n_test, args.seed)
        res["python"] = python_part(d, paths["cache"], args, log)
        del d
        gc.collect()
    if "load" in parts:
        d = load(args.data_dir, args.n_train, args.n_test, args.seed)
        res["load"] = load_part(d, paths["cache"], args, log)
        del d
        gc.collect()
    if "size" in parts:
        d = load(args.data_dir, args.n_train, args.n_test, args.seed)
        res["size"] = size_part(d, args, log)
        del d
        gc.collect()
    if "browser" in parts:
        if not any(paths["cache"].glob("*.pt")):  # the browser's warm explorer needs the factor cache
            log("writing the factor cache first")
            d = load(args.data_dir, args.n_train, args.n_test, args.seed)
            make_explorer(d, k=args.k, cache_dir=paths["cache"]).wait(3600).close()
            del d
        from benchmarks.widget_browser import browser_part

        res["browser"] = browser_part(paths, args, log)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["loadavg_end"] = loadavg()
    out = args.out or HERE / "out" / f"widget-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"\nresults: {out}")
    return res


if __name__ == "__main__":
    main()
