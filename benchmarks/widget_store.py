"""The ``store`` part of ``benchmarks/widget.py``: an explorer over a 1.28M-row factor store that stays on disk
(queries stream it block by block): factors ready -> the first table page, each interaction, and the kernel's
memory against the store's size."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from benchmarks import workload as wl
from benchmarks.widget import (
    Recorder,
    _state,
    _step_times,
    custom_msg,
    loadavg,
    rows_request,
    rss_mb,
    stats_ms,
    timed_class,
    update_msg,
)
from tracin_widgets.widget import InfluenceExplorer

STORE_TARGET_MS = 2000.0  # factors ready -> the first table page's reply leaves the kernel
STORE_CHECKPOINTS = 5
STORE_MAX_MEMORY = "64MB"  # far below the factors: the store is streamed block by block


def _status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (Linux >= 4.0: ``clear_refs`` 5), so that VmHWM measures from now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples this process's resident memory every ``interval`` s on a daemon thread: the peak of any time window."""

    def __init__(self, interval: float = 0.01):
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open("/proc/self/statm") as f:
            while not self._stop.is_set():
                f.seek(0)
                self.samples.append((time.perf_counter(), int(f.read().split()[1]) * self._page))
                self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mb(self, start: float, end: float) -> float | None:
        inside = [b for t, b in self.samples if start <= t <= end]
        return round(max(inside) / 2**20, 1) if inside else None


def explorer_arrays(w: InfluenceExplorer) -> dict[str, int]:
    """Bytes of every numpy array the explorer holds for the training set (per-row scalars, cached orders, cached
    score rows), by where it is held."""
    out: dict[str, int] = {}
    ex, table, eng = w._examples, w._table, w._engine
    for name, v in vars(ex).items():
        if isinstance(v, np.ndarray):
            out[f"examples.{name}"] = v.nbytes
    for key, v in table._sorted.items():
        out[f"table.sorted{key}"] = v.nbytes
    for key, v in table._orders.items():
        out[f"table.filtered{key[:4]}"] = v.nbytes
    for j, v in enumerate(eng._score_cache.values()):
        out[f"engine.score_cache[{j}]"] = v.nbytes
    return out


def store_part(args, log) -> dict:
    """An explorer over a ``TracInCPFast(cache_dir=..., max_memory=STORE_MAX_MEMORY)`` whose factors stay on disk
    (queries stream the store): the first table page after the factors are ready (target ``STORE_TARGET_MS``), each
    interaction ``--reps`` times, and the kernel's memory against the store's size (that the explorer keeps the
    factors on disk and makes thumbnails only for the rows it sends is ``tests/widget/test_large_store.py``'s)."""
    from tracin_widgets.influence import TracInCPFast
    from tracin_widgets.widget import _stats

    out: dict[str, Any] = {
        "loadavg_start": loadavg(),
        "n_train": args.n_train,
        "max_memory": STORE_MAX_MEMORY,
        "checkpoints": STORE_CHECKPOINTS,
        "first_page_target_ms": STORE_TARGET_MS,
    }
    tmp = Path(tempfile.mkdtemp(prefix="tracin-bench-store-", dir=args.data_dir if args.data_dir.is_dir() else None))
    try:
        t0 = time.perf_counter()
        d = wl.store_workload(args.n_train, args.n_test, args.seed, tmp / "checkpoints", STORE_CHECKPOINTS)
        out["workload_s"] = round(time.perf_counter() - t0, 1)
        out["test_accuracy"] = round(d["acc"], 3)
        log(f"store: workload in {out['workload_s']} s (test accuracy {d['acc']:.3f})")
        engine = TracInCPFast(
            d["model"],
            "3",
            d["train"],
            d["checkpoints"],
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=8192,
            cache_dir=tmp / "cache",
            max_memory=STORE_MAX_MEMORY,
        )
        marks: dict[str, float] = {}
        real_fit = engine.fit

        def fit(*a, **kw):
            marks["fit_start"] = time.perf_counter()
            try:
                return real_fit(*a, **kw)
            finally:
                marks["fit_end"] = time.perf_counter()

        calls: list[tuple[str, float, float]] = []  # (engine method, start, end): who held the engine when

        def spy(name: str, real: Callable) -> Callable:
            def call(*a, **kw):
                t = time.perf_counter()
                try:
                    return real(*a, **kw)
                finally:
                    calls.append((name, t, time.perf_counter()))

            return call

        engine.self_influence = spy("self_influence", engine.self_influence)
        engine.influence = spy("influence", engine.influence)
        engine.train_probabilities = spy("train_probabilities", engine.train_probabilities)
        engine.fit = fit
        gc.collect()
        out["rss_before_mb"] = rss_mb(trim=True)
        out["peak_reset"] = reset_peak_rss()
        sampler = RssSampler()
        rec = Recorder()
        t0 = time.perf_counter()
        w = timed_class(rec)(
            d["model"],
            None,
            d["train"],
            d["test"],
            engine=engine,
            class_names=[str(c) for c in range(10)],
            k=args.k,
            is_mislabelled=d["is_mislabelled"],
            batch_size=8192,
        )
        # the frontend: when the stats say the self-influence is there, it asks for the table's first page
        ev = rec.wait_for(lambda kd, m: bool((_state(kd, m, "stats") or {}).get("ready")), timeout=7200)
        t_stats = ev[0]
        rid = 1
        start = len(rec.events)
        w._handle_msg(custom_msg({**rows_request(rid, 0), "id": rid}))
        ev = rec.wait_for(lambda kd, m: kd == "send" and (m.get("content") or {}).get("id") == rid, start)
        t_page = ev[0]
        c = ev[2]["content"]
        assert c["kind"] == "rows" and not c["pending"] and len(c["rows"]) == 50, c
        w.wait(7200)
        t_ready = time.perf_counter()
        assert w.status == "ready", w.error
        fit_end = marks["fit_end"]
        out["factor_pass_s"] = round(fit_end - marks["fit_start"], 1)
        out["first_page_after_factors_ms"] = round(1000 * (t_page - fit_end), 1)
        out["stats_after_factors_ms"] = round(1000 * (t_stats - fit_end), 1)
        out["ready_after_factors_s"] = round(t_ready - fit_end, 2)
        out["ready_s"] = round(t_ready - t0, 1)
        out["engine_calls_after_factors_ms"] = [
            [name, round(1000 * (a - fit_end), 1), round(1000 * (b - fit_end), 1)]
            for name, a, b in sorted(calls, key=lambda c: c[1])
            if b >= fit_end and a <= t_ready
        ]
        out["steps_s"] = _step_times(rec, t0, t_ready)
        out["train_path"] = w._pipeline.train_path
        out["store_mb"] = round(sum(f.stat().st_size for f in (tmp / "cache").rglob("*") if f.is_file()) / 1e6, 1)
        gc.collect()
        out["rss_ready_mb"] = rss_mb()
        out["rss_ready_trimmed_mb"] = rss_mb(trim=True)
        out["rss_peak_explorer_mb"] = round(_status_kb("VmHWM") or 0.0, 1) if out["peak_reset"] else None
        log(
            f"store: factor pass {out['factor_pass_s']} s, store {out['store_mb']} MB; first page "
            f"{out['first_page_after_factors_ms']} ms after the factors (stats {out['stats_after_factors_ms']} ms); "
            f"ready {out['ready_after_factors_s']} s after; steps {out['steps_s']}; engine calls (start, end ms after "
            f"the factors) {out['engine_calls_after_factors_ms']}"
        )

        def ask(content: dict) -> tuple[float, dict]:
            nonlocal rid
            rid += 1
            content = {**content, "id": rid}
            start = len(rec.events)
            t = time.perf_counter()
            w._handle_msg(custom_msg(content))
            ev = rec.wait_for(
                lambda kd, m: kd == "send" and m.get("method") == "custom" and m["content"].get("id") == rid, start
            )
            assert ev[2]["content"]["kind"] != "error", ev[2]["content"]
            return ev[0] - t, ev[2]["content"]

        rng = np.random.default_rng(args.seed + 3)
        n = args.n_train
        times: dict[str, list[float]] = {}

        def timed(name: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            res = fn()
            times.setdefault(name, []).append(time.perf_counter() - t)
            return res

        sorts = [("label", False), ("pred", True), ("score", True), ("index", True), ("label", True)]
        for r in range(args.reps):
            w._table.forget_orders()  # every sort and filter below is new: no cached order
            sort, desc = sorts[r % len(sorts)]
            dt, c = ask({**rows_request(0, 0), "sort": sort, "descending": desc})
            times.setdefault("new sort (all orders dropped first)", []).append(dt)
            dt, c = ask({**rows_request(0, 0), "label": r % 10})
            times.setdefault("class filter (new)", []).append(dt)
            w.flagged = sorted(rng.choice(n, 500, replace=False).tolist())
            dt, c = ask({**rows_request(0, 0), "only": "flagged"})
            times.setdefault("flag filter: flagged (new flags)", []).append(dt)
            dt, c = ask({**rows_request(0, 0), "only": "disagree"})
            times.setdefault("filter label != prediction (new)", []).append(dt)
            dt, c = ask({**rows_request(0, 0), "only": "mislabelled", "label": (r + 5) % 10})
            times.setdefault("filter mislabelled and class (new)", []).append(dt)
            dt, c = ask(rows_request(0, r + 1))
            times.setdefault("next page", []).append(dt)
            flagged = list(w.flagged)
            w._table._score_stats = None  # computed anew, as for new scores
            timed("stats: histogram, ROC, found curve", lambda fl=flagged: w._table.stats(fl, {}, False))
            s = w._examples.self_infl
            timed("histogram alone", lambda s=s: _stats.histogram(s))
            dt, c = ask({"kind": "detail", "index": int(rng.integers(0, n))})
            times.setdefault("details of a row", []).append(dt)
            idx = int(r + 1)
            start = len(rec.events)
            t = time.perf_counter()
            w._handle_msg(update_msg({"selected_test": idx, "query": {"source": "test", "index": idx}}))
            ev = rec.wait_for(
                lambda kd, m, idx=idx: (_state(kd, m, "gallery") or {}).get("query", {}).get("index") == idx,
                start,
                timeout=300,
            )
            g = _state(ev[1], ev[2], "gallery")
            assert g["error"] is None and len(g["proponents"]) == args.k, g["error"]
            times.setdefault("query: a test example's galleries", []).append(ev[0] - t)
        out["interactions"] = {k: stats_ms(v) for k, v in times.items()}
        out["max_interaction_median_ms"] = max(v["median_ms"] for v in out["interactions"].values())
        log("store: " + ", ".join(f"{k} {v['median_ms']} ms" for k, v in out["interactions"].items()))
        t_end = time.perf_counter()
        sampler.stop()
        out["rss_peak_by_phase_mb"] = {
            "construction": sampler.peak_mb(t0, marks["fit_start"]),
            "factor pass": sampler.peak_mb(marks["fit_start"], fit_end),
            "self-influence and stats": sampler.peak_mb(fit_end, t_stats),
            "first page, training predictions": sampler.peak_mb(t_stats, t_ready),
            "interactions": sampler.peak_mb(t_ready, t_end),
        }
        gc.collect()
        out["rss_end_mb"] = rss_mb()
        out["rss_end_trimmed_mb"] = rss_mb(trim=True)  # freed heap given back: what the kernel still holds
        out["rss_peak_explorer_mb"] = round(_status_kb("VmHWM") or 0.0, 1) if out["peak_reset"] else None
        held = explorer_arrays(w)
        out["explorer_arrays_mb"] = round(sum(held.values()) / 1e6, 1)
        out["largest_explorer_array"] = max(held.items(), key=lambda kv: kv[1])[0]
        out["largest_explorer_array_bytes_per_row"] = round(max(held.values()) / n, 2)
        log(
            f"store: rss before {out['rss_before_mb']} -> ready {out['rss_ready_mb']} (trimmed "
            f"{out['rss_ready_trimmed_mb']}) -> end {out['rss_end_mb']} MB, peak {out['rss_peak_explorer_mb']} MB; "
            f"store {out['store_mb']} MB; explorer arrays {out['explorer_arrays_mb']} MB; "
            f"peak by phase {out['rss_peak_by_phase_mb']}"
        )
        w.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_end"] = loadavg()
    return out
