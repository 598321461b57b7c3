"""Captum 0.9 vs tracin_widgets.influence on the workload of Captum's TracInCP tutorial, side by side.

One process, the same model, checkpoints, data and test batch for both libraries; repetitions are
interleaved (Captum first on even reps, ours first on odd reps) and every task records how far our scores are
from Captum's. The workload is ``benchmarks/workload.py``'s. See benchmarks/RESULTS.md for the recorded figures.

Tasks (``--tasks``, comma separated):
  self      (2) TracInCPFast self_influence() (fresh instances)
  workflow  (1+2) one fresh instance: proponents + opponents + self-influence; ours is cold (factor pass
            included), then ``--warm-reps`` warm repeats of the same three calls on the same instance
  query     (3) warm query latency: a new test batch of 4 per rep, top-10 pro + opp, on a fitted instance
  randproj  (4) TracInCPFastRandProj __init__ (batch 128, AnnoyNearestNeighbors(num_trees=100),
            projection_dim=100) and its top-10 pro + opp query; recall@10 against the exact top-10
  cp        (5) TracInCP on all layers (sample_wise_grads_per_batch=True, CrossEntropyLoss(sum)) on the
            first ``--cp-n-train`` examples: top-10 pro + opp, and self_influence()

The named scenarios of ``python -m benchmarks`` run this module with fixed options (benchmarks/suite.py); to run
one configuration by hand (from the repository root):
  python -m benchmarks.engine --n-train 10000 --reps 3 --tasks self,workflow
  python -m benchmarks.engine --device cuda --reps 3 --out benchmarks/out/gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from benchmarks import workload as wl
from tracin_widgets.tutorial import Net, checkpoints_load_func  # the tutorial's network and checkpoint loader

HERE = Path(__file__).resolve().parent
K = 10
TASKS = ("self", "workflow", "query", "randproj", "cp")


# ----------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CaptumTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None):
    if not seconds:
        yield
        return

    def handler(signum, frame):
        raise CaptumTimeout(f"did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Clock:
    """Named segments of wall (and process CPU) time; the device is synchronised around each segment."""

    def __init__(self, device: torch.device):
        self.device = device
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.load_before = os.getloadavg()[0]

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync(self.device)
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - t0
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0
        return out

    def record(self) -> dict:
        return {"wall": self.wall, "cpu": self.cpu, "load": [self.load_before, os.getloadavg()[0]]}


def summary(values: list[float]) -> dict:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    if x < 1:
        return f"{x * 1000:.1f} ms"
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


# ----------------------------------------------------------------------------------------------- checks
def rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        return float("inf")
    return float(((ours - ref).abs() / ref.abs().clamp_min(1e-30)).max()) if ref.numel() else 0.0


def topk_check(ours, ref) -> dict:
    """max relative difference of the top-k scores, and the fraction of top-k indices in common (row sets)."""
    oi, os_ = ours.indices.cpu(), ours.influence_scores.cpu()
    ri, rs = ref.indices.cpu(), ref.influence_scores.cpu()
    common = [len(set(a.tolist()) & set(b.tolist())) / max(1, len(b)) for a, b in zip(oi, ri, strict=False)]
    return {
        "max_rel_diff": rel_diff(os_, rs),
        "index_overlap": float(np.mean(common)),
        "same_order": bool(torch.equal(oi, ri)),
    }


def recall(approx_idx: torch.Tensor, exact_idx: torch.Tensor) -> float:
    pairs = zip(approx_idx.cpu(), exact_idx.cpu(), strict=True)
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b) for a, b in pairs]))


# ----------------------------------------------------------------------------------------------- benchmark
class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.loss_sum = nn.CrossEntropyLoss(reduction="sum")
        self.data = wl.prepare_data(Path(args.data_dir), args.seed, args.device, getattr(args, "data_size", wl.N_FULL))
        self.ckpts = self.data["checkpoints"]
        self.net = Net().to(self.device)
        checkpoints_load_func(self.net, self.ckpts[-1])
        self.net.eval()
        self.pool_x = wl.preprocess(self.data["x_test"])
        self.pool_y = torch.from_numpy(self.data["y_test"])
        self.test_batch = self.test_batch_at(0)
        if self.device.type == "cuda":  # CUDA context, cuDNN and allocator warm-up, outside every timing
            for m in (2048, 128, 4):
                xb = self.pool_x[:m].repeat(max(1, 2048 // len(self.pool_x) + 1), 1, 1, 1)[:m].to(self.device)
                self.loss_sum(self.net(xb), torch.zeros(m, dtype=torch.long, device=self.device)).backward()
            self.net.zero_grad(set_to_none=True)
            sync(self.device)
        self.results: dict[str, Any] = {}
        self.warm: dict[tuple, Any] = {}  # (source, n) -> fitted TracInCPFast of ours
        self.exact: dict[tuple, Any] = {}  # (source, n) -> exact top-k (pro, opp) of the main test batch

    def test_batch_at(self, i: int):
        s = (4 * i) % (len(self.pool_y) - 4)
        return (self.pool_x[s : s + 4].to(self.device), self.pool_y[s : s + 4].to(self.device))

    # datasets -------------------------------------------------------------------------------------
    def dataset(self, source: str, n: int) -> Dataset:
        return wl.dataset(source, self.data["x_train"][:n], self.data["y_train"][:n])

    def captum_train(self, ds: Dataset, batch_size: int):
        """What Captum is given: the Dataset itself on the CPU; a batch-moving DataLoader on a GPU."""
        if self.device.type == "cpu" and self.args.captum_workers == 0:
            return ds
        return wl.DeviceLoader(
            ds, batch_size=batch_size, shuffle=False, num_workers=self.args.captum_workers, device=self.device
        )

    def ours_extras(self) -> dict:
        return {"device": self.device, "num_workers": None if self.args.num_workers < 0 else self.args.num_workers}

    # constructors ---------------------------------------------------------------------------------
    def captum_fast(self, ds, bs):
        from captum.influence import TracInCPFast as C

        return C(
            self.net,
            self.net.fc3,
            self.captum_train(ds, bs),
            self.ckpts,
            checkpoints_load_func=checkpoints_load_func,
            loss_fn=self.loss_sum,
            batch_size=bs,
        )

    def ours_fast(self, ds, bs):
        from tracin_widgets.influence import TracInCPFast as O

        return O(
            self.net,
            self.net.fc3,
            ds,
            self.ckpts,
            checkpoints_load_func=checkpoints_load_func,
            loss_fn=self.loss_sum,
            batch_size=bs,
            **self.ours_extras(),
        )

    # running --------------------------------------------------------------------------------------
    def interleaved(self, name: str, reps: int, run_captum, run_ours, check=None) -> dict:
        """``run_x(rep, clock) -> result``; reps alternate which library goes first."""
        rec: dict[str, Any] = {"captum": [], "ours": [], "checks": []}
        for rep in range(reps):
            skip = self.args.skip_captum.split(",") if self.args.skip_captum else []
            if name in skip or name.split("[")[0] in skip:
                run_captum = None
            order = [("captum", run_captum), ("ours", run_ours)]
            if rep % 2:
                order.reverse()
            outs = {}
            for lib, fn in order:
                if fn is None:
                    continue
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                clock = Clock(self.device)
                try:
                    outs[lib] = fn(rep, clock)
                    err = None
                except CaptumTimeout as e:
                    outs[lib], err = None, str(e)
                r = clock.record()
                if err:
                    r["timeout"] = err
                rec[lib].append(r)
                print(
                    f"  [{name}] rep {rep} {lib:6s} "
                    + ", ".join(f"{k} {fmt_s(v)}" for k, v in r["wall"].items())
                    + (f"  TIMEOUT ({err})" if err else "")
                    + f"  load {r['load'][0]:.2f}->{r['load'][1]:.2f}",
                    flush=True,
                )
            if check and outs.get("captum") is not None and outs.get("ours") is not None:
                c = check(outs["captum"], outs["ours"])
                rec["checks"].append(c)
                print(f"  [{name}] rep {rep} check {c}", flush=True)
            outs.clear()
        for lib in ("captum", "ours"):
            segs = sorted({k for r in rec[lib] for k in r["wall"]})
            rec[f"{lib}_summary"] = {
                k: summary([r["wall"].get(k) for r in rec[lib] if "timeout" not in r]) for k in segs
            }
            rec[f"{lib}_cpu_summary"] = {
                k: summary([r["cpu"].get(k) for r in rec[lib] if "timeout" not in r]) for k in segs
            }
        self.results[name] = rec
        return rec

    # tasks ----------------------------------------------------------------------------------------
    def task_self(self, source: str):
        n, bs = self.args.n_train, self.args.batch_size
        ds = self.dataset(source, n)

        def cap(rep, clk):
            return clk("total", lambda: self.captum_fast(ds, bs).self_influence())

        def ours(rep, clk):
            return clk("total", lambda: self.ours_fast(ds, bs).self_influence())

        def check(c, o):
            return {"self": {"max_rel_diff": rel_diff(o, c)}, **self.mislabel_auc(o)}

        self.interleaved(f"self[{source}]", self.args.reps, cap, ours, check)

    def mislabel_auc(self, self_inf: torch.Tensor) -> dict:
        """How well self-influence ranks the flipped labels first (a sanity check that scores mean something)."""
        flipped = self.data["flipped"][: len(self_inf)]
        s = self_inf.double().cpu().numpy()
        order = np.argsort(-s)
        top = flipped[order[: max(1, int(0.05 * len(s)))]].mean()
        pos, neg = s[flipped], s[~flipped]
        ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
        auc = (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / max(1, len(pos) * len(neg))
        return {"mislabel_auc": float(auc), "flipped_in_top5pct": float(top)}

    def task_workflow(self, source: str):
        n, bs, tb = self.args.n_train, self.args.batch_size, self.test_batch

        ds = self.dataset(source, n)

        def cap(rep, clk):
            inst = clk("init", lambda: self.captum_fast(ds, bs))
            pro = clk("pro", lambda: inst.influence(tb, k=K, proponents=True))
            opp = clk("opp", lambda: inst.influence(tb, k=K, proponents=False))
            si = clk("self", lambda: inst.self_influence())
            clk.wall["total"] = sum(clk.wall.values())
            clk.wall["pro+opp"] = clk.wall["init"] + clk.wall["pro"] + clk.wall["opp"]
            return pro, opp, si

        def ours(rep, clk):
            inst = clk("init", lambda: self.ours_fast(ds, bs))
            pro = clk("pro", lambda: inst.influence(tb, k=K, proponents=True))
            opp = clk("opp", lambda: inst.influence(tb, k=K, proponents=False))
            si = clk("self", lambda: inst.self_influence())
            clk.wall["total"] = sum(clk.wall.values())
            clk.wall["pro+opp"] = clk.wall["init"] + clk.wall["pro"] + clk.wall["opp"]
            warm = []
            for _ in range(self.args.warm_reps):
                w = Clock(self.device)
                w(
                    "x",
                    lambda: (
                        inst.influence(tb, k=K, proponents=True),
                        inst.influence(tb, k=K, proponents=False),
                        inst.self_influence(),
                    ),
                )
                warm.append(w.wall["x"])
            if warm:
                clk.wall["warm_total_median"] = statistics.median(warm)
                clk.wall["warm_total_min"] = min(warm)
            self.warm[(source, n)] = inst
            return pro, opp, si

        def check(c, o):
            self.exact[(source, n)] = (o[0], o[1])
            return {
                "pro": topk_check(o[0], c[0]),
                "opp": topk_check(o[1], c[1]),
                "self": {"max_rel_diff": rel_diff(o[2], c[2])},
                **self.mislabel_auc(o[2]),
            }

        self.interleaved(f"workflow[{source}]", self.args.reps, cap, ours, check)

    def warm_instance(self, source: str, n: int):
        if (source, n) not in self.warm:
            print(f"  (building a fitted instance of ours for {source}, n={n}: untimed)", flush=True)
            inst = self.ours_fast(self.dataset(source, n), self.args.batch_size).fit()
            self.warm[(source, n)] = inst
        return self.warm[(source, n)]

    def exact_topk(self, source: str, n: int):
        if (source, n) not in self.exact:
            inst = self.warm_instance(source, n)
            self.exact[(source, n)] = (
                inst.influence(self.test_batch, k=K, proponents=True),
                inst.influence(self.test_batch, k=K, proponents=False),
            )
        return self.exact[(source, n)]

    def task_query(self, source: str):
        n = self.args.n_train
        inst = self.warm_instance(source, n)
        for i in range(3):  # warm-up (allocator, thread pools)
            b = self.test_batch_at(1000 + i)
            inst.influence(b, k=K, proponents=True), inst.influence(b, k=K, proponents=False)

        def ours(rep, clk):
            b = self.test_batch_at(1 + rep)  # a new test batch of 4 every rep
            clk("pro+opp", lambda: (inst.influence(b, k=K, proponents=True), inst.influence(b, k=K, proponents=False)))
            clk("self_train", lambda: inst.self_influence())

        self.interleaved(f"query[{source}]", self.args.query_reps, None, ours)

    def task_randproj(self, source: str):
        from captum.influence import TracInCPFastRandProj as C
        from captum.influence._utils.nearest_neighbors import AnnoyNearestNeighbors as CAnnoy

        from tracin_widgets.influence import AnnoyNearestNeighbors as OAnnoy
        from tracin_widgets.influence import TracInCPFastRandProj as O

        n = self.args.randproj_n_train or self.args.n_train
        bs, tb = self.args.randproj_batch_size, self.test_batch
        ds = self.dataset(source, n)
        exact = self.exact_topk(source, n)
        fc = self.net.fc3

        def query(inst, clk):
            res = None
            for _ in range(self.args.randproj_query_reps):
                w = Clock(self.device)
                r = w(
                    "q", lambda: (inst.influence(tb, k=K, proponents=True), inst.influence(tb, k=K, proponents=False))
                )
                res = res or r
                clk.wall.setdefault("_q", []).append(w.wall["q"])
            qs = clk.wall.pop("_q")
            clk.wall["query_median"] = statistics.median(qs)
            clk.wall["query_min"] = min(qs)
            return res

        def cap(rep, clk):
            with time_limit(self.args.captum_timeout):
                inst = clk(
                    "init",
                    lambda: C(
                        self.net,
                        fc,
                        self.captum_train(ds, bs),
                        self.ckpts,
                        checkpoints_load_func=checkpoints_load_func,
                        loss_fn=self.loss_sum,
                        batch_size=bs,
                        nearest_neighbors=CAnnoy(num_trees=100),
                        projection_dim=100,
                    ),
                )
            return query(inst, clk)

        def ours(rep, clk):
            inst = clk(
                "init",
                lambda: O(
                    self.net,
                    fc,
                    ds,
                    self.ckpts,
                    checkpoints_load_func=checkpoints_load_func,
                    loss_fn=self.loss_sum,
                    batch_size=bs,
                    nearest_neighbors=OAnnoy(num_trees=100),
                    projection_dim=100,
                    **self.ours_extras(),
                ),
            )
            return query(inst, clk)

        def check(c, o):
            return {
                "recall_at_10_vs_exact": {
                    "captum_pro": recall(c[0].indices, exact[0].indices),
                    "captum_opp": recall(c[1].indices, exact[1].indices),
                    "ours_pro": recall(o[0].indices, exact[0].indices),
                    "ours_opp": recall(o[1].indices, exact[1].indices),
                }
            }

        self.interleaved(f"randproj[{source}]", self.args.randproj_reps or self.args.reps, cap, ours, check)
        self.results[f"randproj[{source}]"]["n_train"] = n

    def task_cp(self, source: str):
        from captum.influence import TracInCP as C

        from tracin_widgets.influence import TracInCP as O

        n, bs, tb = self.args.cp_n_train, self.args.cp_batch_size or self.args.batch_size, self.test_batch
        ds = self.dataset(source, n)

        def cap(rep, clk):
            inst = clk(
                "init",
                lambda: C(
                    self.net,
                    self.captum_train(ds, bs),
                    self.ckpts,
                    checkpoints_load_func=checkpoints_load_func,
                    layers=None,
                    loss_fn=self.loss_sum,
                    batch_size=bs,
                    sample_wise_grads_per_batch=True,
                ),
            )
            pro = clk("pro", lambda: inst.influence(tb, k=K, proponents=True))
            opp = clk("opp", lambda: inst.influence(tb, k=K, proponents=False))
            si = clk("self", lambda: inst.self_influence())
            clk.wall["pro+opp"] = clk.wall["init"] + clk.wall["pro"] + clk.wall["opp"]
            clk.wall["total"] = clk.wall["pro+opp"] + clk.wall["self"]
            return pro, opp, si

        def ours(rep, clk):
            def make():
                return O(
                    self.net,
                    ds,
                    self.ckpts,
                    checkpoints_load_func=checkpoints_load_func,
                    layers=None,
                    loss_fn=self.loss_sum,
                    batch_size=bs,
                    sample_wise_grads_per_batch=True,
                    **self.ours_extras(),
                )

            inst = clk("init", make)
            pro = clk("pro", lambda: inst.influence(tb, k=K, proponents=True))
            opp = clk("opp", lambda: inst.influence(tb, k=K, proponents=False))
            clk("self_after", lambda: inst.self_influence())
            clk.wall["pro+opp"] = clk.wall["init"] + clk.wall["pro"] + clk.wall["opp"]
            clk.wall["total"] = clk.wall["pro+opp"] + clk.wall["self_after"]
            inst2 = clk("init2", make)
            si = clk("self", lambda: inst2.self_influence())  # cold self-influence on a fresh instance
            clk.wall["self"] += clk.wall.pop("init2")
            return pro, opp, si

        def check(c, o):
            return {
                "pro": topk_check(o[0], c[0]),
                "opp": topk_check(o[1], c[1]),
                "self": {"max_rel_diff": rel_diff(o[2], c[2])},
            }

        self.interleaved(f"cp[{source}]", self.args.reps, cap, ours, check)
        self.results[f"cp[{source}]"]["n_train"] = n


def recall_bench(data_dir: str, data_size: int, device: str) -> Bench:
    """The workload as recall.py uses it: seed 0, fc3, batch 2048, workers decided per pass, no Captum."""
    args = argparse.Namespace(
        data_dir=data_dir,
        data_size=data_size,
        seed=0,
        device=device,
        num_workers=-1,
        batch_size=2048,
        captum_workers=0,
        skip_captum="",
    )
    return Bench(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=wl.N_FULL, help="training examples (the first N)")
    p.add_argument(
        "--data-size",
        type=int,
        default=wl.N_FULL,
        help="training images to generate (default the tutorial's 50000; smaller for smoke runs)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--reps", type=int, default=1, help="interleaved repetitions of each Captum-vs-ours task")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--tasks", default="workflow,query", help=f"comma separated, from {','.join(TASKS)} (or 'all')")
    p.add_argument(
        "--sources",
        default="pil",
        help="comma separated: pil (a PIL-per-item Dataset like the tutorial's), cifar10 (torchvision's "
        "CIFAR10 class itself, holding the synthetic arrays), tensor",
    )
    p.add_argument("--out", default=str(HERE / "out" / "bench.json"), help="JSON results path")
    p.add_argument("--data-dir", default=str(wl.DATA_DIR))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=2048, help="TracInCPFast batch size (tutorial: 2048)")
    p.add_argument("--randproj-batch-size", type=int, default=128, help="RandProj batch size (tutorial: 128)")
    p.add_argument("--randproj-n-train", type=int, default=0, help="RandProj training examples (default --n-train)")
    p.add_argument("--randproj-reps", type=int, default=0, help="reps for randproj (default --reps)")
    p.add_argument("--randproj-query-reps", type=int, default=5)
    p.add_argument("--cp-n-train", type=int, default=2000, help="TracInCP training subset (first N)")
    p.add_argument("--cp-batch-size", type=int, default=0, help="TracInCP batch size (default --batch-size)")
    p.add_argument("--query-reps", type=int, default=20, help="reps of the warm query task")
    p.add_argument("--warm-reps", type=int, default=5, help="warm repeats after the cold workflow")
    p.add_argument(
        "--num-workers",
        type=int,
        default=-1,
        help="our engine's num_workers (DataLoader processes); -1 = the engine default (None: auto)",
    )
    p.add_argument("--captum-workers", type=int, default=0, help="num_workers of the DataLoader given to Captum")
    p.add_argument(
        "--captum-timeout", type=float, default=0, help="seconds; abort a Captum RandProj __init__ after this"
    )
    p.add_argument("--skip-captum", default="", help="comma separated task names (e.g. randproj) to run ours only")
    args = p.parse_args(argv)

    tasks = TASKS if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        p.error(f"unknown task(s) {bad}; choose from {TASKS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if args.n_train > args.data_size:
        p.error(f"--n-train is at most --data-size ({args.data_size})")

    info = wl.machine_info(device)
    print(json.dumps(info), flush=True)
    bench = Bench(args)
    print(f"data ready: test accuracy of the last checkpoint {bench.data['meta']['test_acc']:.3f}", flush=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(done: bool) -> None:  # after every task, so that a run stopped early keeps what it measured
        doc = {
            "started": started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S") if done else None,
            "machine": info,
            "args": vars(args),
            "data_meta": bench.data["meta"],
            "results": bench.results,
        }
        out.write_text(json.dumps(doc, indent=1, default=str))

    for source in args.sources.split(","):
        for task in tasks:
            print(f"== {task} [{source}] n_train={args.n_train} load {os.getloadavg()[0]:.2f}", flush=True)
            getattr(bench, f"task_{task}")(source)
            save(False)
    save(True)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
