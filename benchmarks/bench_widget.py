#!/usr/bin/env python
"""InfluenceExplorer latency on issue #3's workload, Python-side and end to end in a real browser.

Targets (issue #3, speed section), with the training factors cached:
  (i)   a new test selection shows its galleries        <= 300 ms after the click
  (ii)  a table page of 50 rows with thumbnails         <= 200 ms
  (iii) the first factor pass shows progress from its first second (construction -> first progress with done > 0)

Workload (generated here, seeded, cached in benchmarks/data/ which is gitignored):
* 50,000 synthetic CIFAR-shaped training images (uint8 32x32x3; each class a fixed low-frequency colour pattern plus
  noise; 5% of the training labels flipped, passed as ``is_mislabelled``) and 2,000 test images;
* a dataset that turns the uint8 image into a normalised 3x32x32 float tensor per item (as ToTensor + Normalize);
* the tutorial's ``Net`` (3x32x32 -> conv 6 -> conv 16 -> 120 -> 84 -> 10), 6 checkpoints (one per 10,000-example
  chunk of SGD), loaded by the default loader;
* ``InfluenceExplorer(model, checkpoints, train, test, class_names=CIFAR classes, k=10, is_mislabelled=...)``: the
  default engine (TracInCPFast on fc3, cross-entropy with reduction="sum"); ``cache_dir=`` for the cached factors.

Parts (``--parts``, comma separated):
  python   in-process, no kernel. (iii) a cold explorer: construction -> first ``progress_info`` update with done > 0
           (any phase, and the "training factors" phase), the largest gap between factor-pass updates, time to
           ready; it writes the factor cache. Then on that ready explorer: (i) the frontend's ``update`` message
           (selected_test + query, through ``Widget._handle_msg``) -> the ``gallery`` state update leaves
           ``Widget._send`` (JSON-encoded as the kernel would); (ii) a ``rows`` custom message for the next page ->
           its reply leaves ``_send``. Also a warm explorer built from the factor cache: construction -> ready.
  browser  JupyterLab on 127.0.0.1 + Debian chromium (Playwright), as tests/e2e. A notebook loads the same data;
           (iii) runs a cold explorer cell: run-cell -> progress bar visible / first "n / 50,000" with n > 0;
           then cancels it and builds the explorer from the factor cache. (i) click test example j of the strip ->
           all k proponent and k opponent tiles of that example in the DOM (gallery not stale), and the next
           animation frame; (ii) click "next page" -> 50 rows with thumbnails of that page in the DOM, and the next
           frame; (iv) click row j of that table page -> its label and self-influence rank in the details panel.
           Times are taken in the page (performance.now(), MutationObserver); the kernel-side share (message
           received -> reply sent) is recorded by the kernel's explorer.
  load     a warm explorer (factor cache): new test selections on the machine as it is ("quiet") and with --busy
           busy-loop processes started and killed here ("loaded"), under the explorer's query thread policies
           (auto, one thread, torch's default), interleaved (issue 10 point 11: loaded <= 3x quiet).
  size     a cold explorer at --n-train (no factor cache): time to ready and each background step's share, the
           process's memory against the engine's factors, then each interaction once: new sorts and filters (page
           0 of each), the next page, a details request, a new test example's galleries (issue 10 point 12).

Medians and p90 over ``--reps`` (>= 10) new selections / new pages. Results: JSON in benchmarks/out/ (gitignored),
summary on stdout. ``python -m benchmarks widget`` runs it and records the figures in benchmarks/results/ and
benchmarks/RESULTS.md.

Examples (from the repository root):
  .venv/bin/python -m benchmarks widget                               # prepare data, python + browser, 15 reps
  .venv/bin/python -m benchmarks.bench_widget --parts python --reps 20 --profile
  .venv/bin/python -m benchmarks.bench_widget --n-train 5000 --reps 10   # quick smoke run
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tracin_widgets.tutorial import Net  # the tutorial's network; 3x32x32 by default
from tracin_widgets.widget import InfluenceExplorer

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

TARGETS_MS = {"gallery": 300.0, "table_page": 200.0, "details": 200.0, "first_progress": 1000.0}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
N_CHECKPOINTS = 6
FLIP_FRACTION = 0.05


# ---------------------------------------------------------------------------------------------------------------------
# data, model, checkpoints
# ---------------------------------------------------------------------------------------------------------------------
class SynthCIFAR(Dataset):
    """uint8 NHWC images -> (normalised float 3x32x32 tensor, int label), like ToTensor() + Normalize(0.5, 0.5)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(images)  # (n, 32, 32, 3) uint8, shared, no copy
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].permute(2, 0, 1).float().div_(255.0).sub_(0.5).div_(0.5)
        return x, int(self.labels[i])


def _paths(data_dir: Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    tag = f"n{n_train}-t{n_test}-seed{seed}"
    return {
        "npz": data_dir / f"widget-synth-{tag}.npz",
        "ckpt": data_dir / f"widget-checkpoints-{tag}",
        "cache": data_dir / f"widget-factor-cache-{tag}",
        "meta": data_dir / f"widget-meta-{tag}.json",
    }


def _generate(n: int, rng: np.random.Generator, templates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(templates), n)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for s in range(0, n, 5000):  # chunks: the float noise of 50k images at once would take 600 MB
        e = min(n, s + 5000)
        noise = rng.normal(0.0, 0.22, (e - s, 32, 32, 3)).astype(np.float32)
        img = templates[labels[s:e]] + noise
        out[s:e] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out, labels


def prepare(data_dir: Path, n_train: int, n_test: int, seed: int, log: Callable[[str], None] = print) -> dict:
    """Generate the images and train the checkpoints once (idempotent); returns the paths."""
    p = _paths(data_dir, n_train, n_test, seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not p["npz"].is_file():
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        coarse = rng.uniform(0.15, 0.85, (len(CLASSES), 4, 4, 3)).astype(np.float32)
        templates = coarse.repeat(8, axis=1).repeat(8, axis=2)  # low-frequency colour blocks, 32x32x3
        x_train, y_train = _generate(n_train, rng, templates)
        x_test, y_test = _generate(n_test, rng, templates)
        flipped = np.zeros(n_train, dtype=bool)
        flip = rng.choice(n_train, int(round(FLIP_FRACTION * n_train)), replace=False)
        flipped[flip] = True
        y_noisy = y_train.copy()
        y_noisy[flip] = (y_train[flip] + rng.integers(1, len(CLASSES), len(flip))) % len(CLASSES)
        tmp = p["npz"].with_suffix(".tmp.npz")
        np.savez(tmp, x_train=x_train, y_train=y_noisy, x_test=x_test, y_test=y_test, flipped=flipped)
        os.replace(tmp, p["npz"])
        log(f"generated {p['npz'].name} in {time.perf_counter() - t0:.1f} s")
    ckpts = [p["ckpt"] / f"checkpoint-{i}.pt" for i in range(N_CHECKPOINTS)]
    if not all(c.is_file() for c in ckpts):
        t0 = time.perf_counter()
        d = np.load(p["npz"])
        train = SynthCIFAR(d["x_train"], d["y_train"])
        torch.manual_seed(seed)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(seed)
        chunk = min(10_000, len(train))
        p["ckpt"].mkdir(parents=True, exist_ok=True)
        for path in ckpts:  # one checkpoint per chunk of SGD on a random 10k examples
            order = torch.randperm(len(train), generator=g)[:chunk]
            for s in range(0, chunk, 128):
                idx = order[s : s + 128].tolist()
                xb = torch.stack([train[j][0] for j in idx])
                yb = torch.as_tensor([train[j][1] for j in idx])
                opt.zero_grad()
                loss_fn(model(xb), yb).backward()
                opt.step()
            torch.save(model.state_dict(), path)
        with torch.no_grad():
            xt = torch.from_numpy(d["x_test"]).permute(0, 3, 1, 2).contiguous().float().div(255).sub(0.5).div(0.5)
            acc = float((model(xt).argmax(1).numpy() == d["y_test"]).mean())
        p["meta"].write_text(json.dumps({"train_seconds": time.perf_counter() - t0, "test_accuracy": acc}))
        log(f"trained {len(ckpts)} checkpoints in {time.perf_counter() - t0:.1f} s (test accuracy {acc:.3f})")
    return p


def load(data_dir: Path, n_train: int, n_test: int, seed: int) -> dict:
    """The workload (data prepared by :func:`prepare`): model, checkpoints, datasets, ground truth, cache dir."""
    p = _paths(Path(data_dir), n_train, n_test, seed)
    d = np.load(p["npz"])
    model = Net()
    ckpts = [str(p["ckpt"] / f"checkpoint-{i}.pt") for i in range(N_CHECKPOINTS)]
    model.load_state_dict(torch.load(ckpts[-1], weights_only=True))
    return {
        "model": model,
        "checkpoints": ckpts,
        "train": SynthCIFAR(d["x_train"], d["y_train"]),
        "test": SynthCIFAR(d["x_test"], d["y_test"]),
        "is_mislabelled": d["flipped"],
        "cache_dir": p["cache"],
    }


def make_explorer(d: dict, *, k: int = 10, cache_dir: Any = None, cls: type = InfluenceExplorer) -> InfluenceExplorer:
    """The explorer as a user builds it (default engine); ``cache_dir`` for the cached factors."""
    return cls(
        d["model"],
        d["checkpoints"],
        d["train"],
        d["test"],
        class_names=list(CLASSES),
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

    if args.profile:
        out["profile"] = profile_python(w, d, args, rng)
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


# ---------------------------------------------------------------------------------------------------------------------
# a 1.28M-row factor store, streamed (issue 11 point 8)
# ---------------------------------------------------------------------------------------------------------------------
STORE_TARGET_MS = 2000.0  # factors ready -> the first table page's reply leaves the kernel
STORE_CHECKPOINTS = 5
STORE_MAX_MEMORY = "64MB"  # far below the factors: the store is streamed block by block


def store_workload(n_train: int, n_test: int, seed: int, folder: Path) -> dict:
    """Digits-like data at any size, made in seconds: 8x8 grayscale images (each class a fixed random 8x8 pattern
    plus noise, float32 (1, 8, 8)) in TensorDatasets, 5 % of the training labels flipped; an MLP 64 -> 32 -> 10
    trained with SGD, one checkpoint per 20,000 random rows, ``STORE_CHECKPOINTS`` checkpoints."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0.0, 1.0, (10, 8, 8)).astype(np.float32)

    def make(n: int) -> tuple[torch.Tensor, np.ndarray]:
        y = rng.integers(0, 10, n)
        x = np.empty((n, 1, 8, 8), np.float32)
        for s in range(0, n, 250_000):
            e = min(n, s + 250_000)
            x[s:e, 0] = templates[y[s:e]] + 0.4 * rng.standard_normal((e - s, 8, 8), dtype=np.float32)
        return torch.from_numpy(x), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    flipped = np.zeros(n_train, dtype=bool)
    flip = rng.choice(n_train, int(round(FLIP_FRACTION * n_train)), replace=False)
    flipped[flip] = True
    y_noisy = y_train.copy()
    y_noisy[flip] = (y_train[flip] + rng.integers(1, 10, len(flip))) % 10
    train = torch.utils.data.TensorDataset(x_train, torch.from_numpy(y_noisy))
    test = torch.utils.data.TensorDataset(x_test, torch.from_numpy(y_test))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ckpts = []
    for c in range(STORE_CHECKPOINTS):
        order = torch.randint(0, n_train, (20_000,), generator=g)
        for s in range(0, len(order), 256):
            idx = order[s : s + 256]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[idx]), train.tensors[1][idx]).backward()
            opt.step()
        ckpts.append(str(folder / f"checkpoint-{c}.pt"))
        torch.save(model.state_dict(), ckpts[-1])
    with torch.no_grad():
        acc = float((model(x_test).argmax(1).numpy() == y_test).mean())
    return {"model": model, "checkpoints": ckpts, "train": train, "test": test, "is_mislabelled": flipped, "acc": acc}


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
    interaction ``--reps`` times, the kernel's memory against the store's size, and proof that the explorer never
    held the factors in memory (``FactorBank.keep``) and made thumbnails only for the rows it sent."""
    from tracin_widgets.influence import TracInCPFast
    from tracin_widgets.widget import _payload

    out: dict[str, Any] = {
        "loadavg_start": loadavg(),
        "n_train": args.n_train,
        "max_memory": STORE_MAX_MEMORY,
        "checkpoints": STORE_CHECKPOINTS,
        "first_page_target_ms": STORE_TARGET_MS,
    }
    tmp = Path(tempfile.mkdtemp(prefix="tracin-bench-store-", dir=args.data_dir if args.data_dir.is_dir() else None))
    real_encode = _payload.encode_image  # spied below: thumbnails made against rows sent
    try:
        t0 = time.perf_counter()
        d = store_workload(args.n_train, args.n_test, args.seed, tmp / "checkpoints")
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

        ensure_calls: list[float] = []  # the factors held in memory (a bank's keep; a streamed bank never)
        real_new_bank = engine._new_bank

        def new_bank():
            bank = real_new_bank()
            real_keep = bank.keep

            def keep(*a, **kw):
                ensure_calls.append(time.perf_counter())
                return real_keep(*a, **kw)

            bank.keep = keep
            return bank

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
        engine._new_bank = new_bank
        thumbs: list[int] = []

        def encode(*a, **kw):
            thumbs.append(1)
            return real_encode(*a, **kw)

        _payload.encode_image = encode
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

        sent_rows = 50
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
            sent_rows += 6 * 50
            flagged = list(w.flagged)
            w._table._score_stats = None  # computed anew, as for new scores
            timed("stats: histogram, ROC, found curve", lambda fl=flagged: w._table.stats(fl, {}, False))
            s = w._examples.self_infl
            timed("histogram alone", lambda s=s: _payload.histogram(s))
            dt, c = ask({"kind": "detail", "index": int(rng.integers(0, n))})
            times.setdefault("details of a row", []).append(dt)
            sent_rows += 1
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
            sent_rows += 2 * args.k + 1
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
        out["ensure_factors_calls"] = len(ensure_calls)
        out["factors_in_memory"] = engine.factors_ is not None and engine.factors_.factors is not None
        out["thumbnails_made"] = len(thumbs)
        out["thumbnail_bound"] = sent_rows + len(w._examples.test_ids)
        log(
            f"store: rss before {out['rss_before_mb']} -> ready {out['rss_ready_mb']} (trimmed "
            f"{out['rss_ready_trimmed_mb']}) -> end {out['rss_end_mb']} MB, peak {out['rss_peak_explorer_mb']} MB; "
            f"store {out['store_mb']} MB; explorer arrays {out['explorer_arrays_mb']} MB; factors kept in memory "
            f"{out['ensure_factors_calls']}; thumbnails {out['thumbnails_made']} (bound {out['thumbnail_bound']}); "
            f"peak by phase {out['rss_peak_by_phase_mb']}"
        )
        assert not ensure_calls and not out["factors_in_memory"], "the explorer asked for the factors in memory"
        assert out["thumbnails_made"] <= out["thumbnail_bound"], "thumbnails beyond the rows sent"
        w.close()
    finally:
        _payload.encode_image = real_encode
        shutil.rmtree(tmp, ignore_errors=True)
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
    (``_engine.QUERY_THREADS``: "auto", the idle cores), one thread and torch's default threads, interleaved."""
    from tracin_widgets.widget import _engine

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
    default = _engine.QUERY_THREADS
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
                    _engine.QUERY_THREADS = n
                    try:
                        times[name].append(query(next(ids)))
                    finally:
                        _engine.QUERY_THREADS = default
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


def profile_python(w, d, args, rng) -> dict:
    """cProfile of the gallery computation and of a table page, in this thread; top functions by cumulative time."""
    res = {}
    ids = rng.choice(len(d["test"]), 5, replace=False).tolist()
    prof = cProfile.Profile()
    for idx in ids:
        with w._lock:
            w._gallery_gen += 1
            gen = w._gallery_gen
        prof.runcall(w._compute_gallery, {"source": "test", "index": int(idx)}, args.k, gen)
    res["gallery"] = _top(prof)
    prof = cProfile.Profile()
    for page in range(500, 505):
        prof.runcall(w._handle_msg, custom_msg(rows_request(page, page)))
    res["table_page"] = _top(prof)
    return res


def _top(prof: cProfile.Profile, n: int = 25) -> str:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(n)
    return s.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# browser part
# ---------------------------------------------------------------------------------------------------------------------
NOTEBOOK_CELLS = [
    # 0: load the workload
    "import sys, json\n"
    "sys.path[:0] = [{repo!r}]\n"
    "import benchmarks.bench_widget as B\n"
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
# and the next animation frame after that.
MEASURE_GALLERY_JS = """
async ([j, k]) => {
  const root = document.querySelectorAll('.tracin-root')[document.querySelectorAll('.tracin-root').length - 1];
  const item = root.querySelectorAll('[data-testid=tracin-test-item]')[j];
  const idx = item.dataset.index;
  const done = () => {
    const g = root.querySelector('section.tracin-gallery');
    const st = root.querySelector('[data-testid=tracin-gallery-status]').textContent;
    const pro = root.querySelectorAll('[data-testid=tracin-proponent]');
    const opp = root.querySelectorAll('[data-testid=tracin-opponent]');
    return !g.classList.contains('is-stale') && (st === `test #${idx}` || st.startsWith(`test #${idx} `))
      && pro.length === k && opp.length === k && [...pro, ...opp].every((t) => t.querySelector('canvas'));
  };
  return await new Promise((resolve, reject) => {
    let t0 = 0;
    const mo = new MutationObserver(() => {
      if (!done()) return;
      const dom = performance.now() - t0;
      mo.disconnect();
      requestAnimationFrame(() => resolve({ index: Number(idx), dom, frame: performance.now() - t0 }));
    });
    mo.observe(root, { subtree: true, childList: true, attributes: true, characterData: true });
    setTimeout(() => { mo.disconnect(); reject(new Error('gallery timeout')); }, 60000);
    t0 = performance.now();
    item.click();
  });
}
"""

MEASURE_PAGE_JS = """
async (page) => {
  const root = document.querySelectorAll('.tracin-root')[document.querySelectorAll('.tracin-root').length - 1];
  const next = root.querySelector('[data-testid=tracin-table-next]');
  const text = root.querySelector('[data-testid=tracin-table-page]');
  const tbody = root.querySelector('[data-testid=tracin-table] tbody');
  const done = () => !tbody.classList.contains('is-loading') && text.textContent.includes(`page ${page + 1}/`)
    && tbody.rows.length === 50 && [...tbody.rows].every((r) => r.querySelector('canvas.tracin-img-row'));
  return await new Promise((resolve, reject) => {
    let t0 = 0;
    const mo = new MutationObserver(() => {
      if (!done()) return;
      const dom = performance.now() - t0;
      mo.disconnect();
      requestAnimationFrame(() => resolve({ page, first: Number(tbody.rows[0].dataset.index), dom,
                                            frame: performance.now() - t0 }));
    });
    mo.observe(root, { subtree: true, childList: true, attributes: true, characterData: true });
    setTimeout(() => { mo.disconnect(); reject(new Error('page timeout')); }, 60000);
    t0 = performance.now();
    next.click();
  });
}
"""

MEASURE_DETAILS_JS = """
async (j) => {
  const root = document.querySelectorAll('.tracin-root')[document.querySelectorAll('.tracin-root').length - 1];
  const row = root.querySelectorAll('[data-testid=tracin-table-row]')[j];
  const idx = row.dataset.index;
  const panel = root.querySelector('[data-testid=tracin-details]');
  const done = () => !panel.hidden && panel.dataset.index === idx
    && panel.querySelector('[data-testid=tracin-details-label]') !== null
    && panel.querySelector('[data-testid=tracin-details-rank]') !== null;
  return await new Promise((resolve, reject) => {
    let t0 = 0;
    const mo = new MutationObserver(() => {
      if (!done()) return;
      const dom = performance.now() - t0;
      mo.disconnect();
      requestAnimationFrame(() => resolve({ index: Number(idx), dom, frame: performance.now() - t0 }));
    });
    mo.observe(root, { subtree: true, childList: true, attributes: true, characterData: true });
    setTimeout(() => { mo.disconnect(); reject(new Error('details timeout')); }, 60000);
    t0 = performance.now();
    row.click();
  });
}
"""

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

    from tests.e2e.conftest import CHROME_ARGS, JupyterPage, _start_server, _stop_server

    if not (REPO / "tracin_widgets/widget/static/widget.js").exists():
        raise SystemExit("the widget's JS bundle is missing: cd js && npm ci && npm run build")
    if shutil.which("chromium") is None:
        raise SystemExit("Debian chromium is needed for --parts browser (bash .ci/setup --test)")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))  # the kernel: torch's default threads
    out: dict[str, Any] = {"loadavg_start": loadavg()}
    fmt = dict(
        repo=str(REPO),
        data_dir=str(paths["npz"].parent),
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        k=args.k,
        cache=str(paths["cache"]),
    )
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(**fmt)) for c in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    name = "bench_widget.ipynb"
    tmp = Path(tempfile.mkdtemp(prefix="tracin-bench-widget-"))
    server = _start_server("lab", tmp)
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
            widget.get_by_test_id("tracin-tab-table").click()
            expect(widget.get_by_test_id("tracin-table-row")).to_have_count(50, timeout=120_000)
            time.sleep(0.5)
            out["loadavg_table"] = loadavg()
            n0 = _kernel_json(server, name, "print(len(rec.events))")
            pages = []
            for page in range(1, args.reps + 1):
                pages.append(jp.page.evaluate(MEASURE_PAGE_JS, page))
                time.sleep(0.3)
            ker = _kernel_json(server, name, KERNEL_ROWS_TIMES.format(n0=n0))
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
        _stop_server(server)
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

KERNEL_ROWS_TIMES = """
_ev = rec.events[{n0}:]
_out = []
for _i, (_t, _k, _m) in enumerate(_ev):
    if _k == 'recv' and _m.get('method') == 'custom' and _m['content'].get('kind') == 'rows':
        _id = _m['content'].get('id')
        for _t2, _k2, _m2 in _ev[_i + 1:]:
            if _k2 == 'send' and _m2.get('method') == 'custom' and _m2['content'].get('id') == _id:
                _out.append(_t2 - _t)
                break
print(json.dumps(_out))
"""


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import anywidget
    import ipywidgets

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "anywidget": anywidget.__version__,
        "ipywidgets": ipywidgets.__version__,
        "platform": platform.platform(),
    }


def summary(res: dict) -> str:
    """A markdown table of the numbers against the targets."""
    rows = []

    def line(what, st, target):
        if not st:
            return
        ok = "met" if st["median_ms"] <= target else "MISSED"
        p90ok = "" if st["p90_ms"] <= target else " (p90 over)"
        rows.append(f"| {what} | {st['median_ms']:.0f} | {st['p90_ms']:.0f} | {target:.0f} | {ok}{p90ok} |")

    py, br = res.get("python", {}), res.get("browser", {})
    line("(i) gallery, Python: update message -> gallery state sent", py.get("gallery"), TARGETS_MS["gallery"])
    line("(i) gallery, browser: click -> 2k tiles in the DOM", br.get("gallery_dom"), TARGETS_MS["gallery"])
    line("(i) gallery, browser: click -> next frame", br.get("gallery_frame"), TARGETS_MS["gallery"])
    line("(i) gallery, kernel share of the browser runs", br.get("gallery_kernel"), TARGETS_MS["gallery"])
    line("(ii) table page, Python: rows message -> reply sent", py.get("table_page"), TARGETS_MS["table_page"])
    line("(ii) table page, browser: click next -> 50 rows in the DOM", br.get("table_dom"), TARGETS_MS["table_page"])
    line("(ii) table page, browser: click next -> next frame", br.get("table_frame"), TARGETS_MS["table_page"])
    line("(ii) table page, kernel share of the browser runs", br.get("table_kernel"), TARGETS_MS["table_page"])
    line("(iv) details, browser: click a row -> its details in the panel", br.get("details_dom"), TARGETS_MS["details"])
    line("(iv) details, kernel share of the browser runs", br.get("details_kernel"), TARGETS_MS["details"])
    head = "| measure | median ms | p90 ms | target ms | |\n|---|---:|---:|---:|---|\n"
    text = head + "\n".join(rows)
    if py.get("progress"):
        p = py["progress"]
        text += (
            f"\n\n(iii) Python: constructor {p['constructor_ms']:.0f} ms; first progress with done > 0 at "
            f"{p['first_done_any_ms']:.0f} ms ({p['first_done_any_phase']}); first factor-pass progress at "
            f"{p['first_done_factor_ms']:.0f} ms; {p['factor_updates']} factor-pass updates, largest gap "
            f"{p['factor_max_gap_ms']:.0f} ms; ready after {p['ready_s']} s (cold); "
            f"{py.get('warm_ready_s')} s from the factor cache."
        )
    if br.get("progress"):
        p = br["progress"]
        text += (
            f"\n(iii) browser: run-cell -> progress bar visible {p['visible']} ms; first 'n / total' with n > 0 "
            f"{p['first_any']} ms; first factor-pass n > 0 {p['first_factor']} ms."
        )
    return text


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
    ap.add_argument("--data-dir", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/out/widget-<time>.json)")
    ap.add_argument("--profile", action="store_true", help="cProfile the Python-side gallery and table page")
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
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets_ms": TARGETS_MS,
        "loadavg_start": loadavg(),
    }
    if "store" in parts:  # its own digits-like workload, made in memory
        res["store"] = store_part(args, log)
    paths = prepare(args.data_dir, args.n_train, args.n_test, args.seed, log) if parts - {"store"} else {}
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
        res["browser"] = browser_part(paths, args, log)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["loadavg_end"] = loadavg()
    out = args.out or HERE / "out" / f"widget-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    prof = res.get("python", {}).pop("profile", None)
    out.write_text(json.dumps(res, indent=1))
    if prof:
        for key, text in prof.items():
            out.with_name(out.stem + f"-profile-{key}.txt").write_text(text)
    print(summary(res))
    print(f"\nresults: {out}")
    return res


if __name__ == "__main__":
    main()
