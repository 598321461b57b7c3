#!/usr/bin/env python
"""Where a cold TracInCPFast / TracInCP pass spends its time on a GPU (ours only, no Captum): data-loading
floors (worker counts, loader batch sizes), host-to-device copies, the 6-checkpoint forward floor, and the
engine's cold workflow with a cProfile summary. Prints a report; ``--out`` writes it as JSON too.

  python3 -m benchmarks.probes.gpu_profile --out benchmarks/out/h200/gpu-profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from benchmarks.bench_engine import N_CKPT, PILDataset, _preprocess, prepare_data
from tracin_widgets.tutorial import Net, checkpoints_load_func

DATA = Path(__file__).resolve().parent.parent / "data"

REPORT: dict = {}


def timed(name, fn, reps=3, dev=None):
    ts = []
    out = None
    for _ in range(reps):
        if dev is not None:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if dev is not None:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    REPORT[name] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}
    print(
        f"{name:60s} {statistics.median(ts) * 1000:9.1f} ms  (min {min(ts) * 1000:.1f}, max {max(ts) * 1000:.1f})",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sections", default="load,h2d,fwd,ours,cp")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    dev = torch.device("cuda")
    data = prepare_data(DATA, 0, "cuda")
    paths = data["checkpoints"]
    x_cpu = _preprocess(data["x_train"])
    y_cpu = torch.from_numpy(data["y_train"]).long()
    pil = PILDataset(data["x_train"], data["y_train"])
    test = (_preprocess(data["x_test"][:4]), torch.from_numpy(data["y_test"][:4]).long())
    torch.zeros(1, device=dev)
    REPORT["machine"] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}

    if "load" in sections:
        for w, bs in [(8, 2048), (15, 2048), (15, 834), (15, 256), (15, 128)]:

            def one_pass(w=w, bs=bs):
                n = 0
                for xb, yb in DataLoader(pil, batch_size=bs, num_workers=w, pin_memory=True, prefetch_factor=4):
                    xb.to(dev, non_blocking=True)
                    n += len(yb)
                return n

            timed(f"load: PIL pass 50k, {w} workers, batch {bs}, pinned -> GPU", one_pass, reps=2, dev=dev)
        sub = Subset(pil, range(5000))
        for w, bs in [(8, 2048), (15, 84)]:
            timed(
                f"load: PIL pass 5k, {w} workers, batch {bs}",
                lambda w=w, bs=bs: sum(
                    len(b[1]) for b in DataLoader(sub, batch_size=bs, num_workers=w, pin_memory=True)
                ),
                reps=2,
            )

    if "h2d" in sections:
        timed("h2d: 614 MB pageable, one copy", lambda: x_cpu.to(dev), dev=dev)
        timed(
            "h2d: pageable, 16k-row chunks",
            lambda: [x_cpu[s : s + 16384].to(dev) for s in range(0, 50000, 16384)],
            dev=dev,
        )
        xp = x_cpu.pin_memory()
        timed("h2d: pinned, one copy", lambda: xp.to(dev, non_blocking=True), dev=dev)
        timed("h2d: pin_memory() of the whole tensor (host copy)", lambda: x_cpu.pin_memory(), reps=2)

    if "fwd" in sections:
        nets = []
        for path in paths[:N_CKPT]:
            net = Net().to(dev)
            checkpoints_load_func(net, path)
            nets.append(net.eval())
        xg, yg = x_cpu.to(dev), y_cpu.to(dev)
        loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
        for rows in (2048, 16384, 50000):

            def fwd(rows=rows):
                for s in range(0, 50000, rows):
                    for net in nets:
                        with torch.no_grad():
                            out = net(xg[s : s + rows])
                        out.requires_grad_(True)
                        torch.autograd.grad(loss_fn(out, yg[s : s + rows]), out)

            timed(f"fwd: 6 ckpts x 50k, GPU-resident, {rows} rows, + dlogits", fwd, dev=dev)

    from tracin_widgets.influence import TracInCP, TracInCPFast

    loss = torch.nn.CrossEntropyLoss(reduction="sum")

    def workflow(ds, **kw):
        net = Net()
        t = TracInCPFast(
            net,
            net.fc3,
            ds,
            paths,
            checkpoints_load_func=checkpoints_load_func,
            loss_fn=loss,
            batch_size=2048,
            device="cuda",
            **kw,
        )
        t.influence(test, k=10, proponents=True)
        t.influence(test, k=10, proponents=False)
        t.self_influence()
        return t

    if "ours" in sections:
        tds = TensorDataset(x_cpu, y_cpu)
        workflow(tds)  # warm-up (cuDNN, allocator)
        timed("ours: cold workflow, TensorDataset", lambda: workflow(tds), reps=args.reps, dev=dev)
        timed("ours: cold workflow, PIL (auto workers)", lambda: workflow(pil), reps=args.reps, dev=dev)
        for w in (8,):
            timed(f"ours: cold workflow, PIL, {w} workers", lambda w=w: workflow(pil, num_workers=w), reps=2, dev=dev)
        for name, ds in (("tensor", tds), ("pil", pil)):
            pr = cProfile.Profile()
            pr.enable()
            workflow(ds)
            torch.cuda.synchronize()
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(28)
            REPORT[f"profile_{name}"] = s.getvalue()
            print(s.getvalue()[:6000])

    if "cp" in sections:
        loss_cp = torch.nn.CrossEntropyLoss(reduction="sum")
        sub = Subset(pil, range(5000))

        def cp(kind):
            net = Net()
            t = TracInCP(
                net,
                sub,
                paths,
                checkpoints_load_func=checkpoints_load_func,
                loss_fn=loss_cp,
                batch_size=2048,
                sample_wise_grads_per_batch=True,
                device="cuda",
            )
            if kind == "proopp":
                t.influence(test, k=10, proponents=True)
                t.influence(test, k=10, proponents=False)
            else:
                t.self_influence()

        cp("self")
        timed("ours: TracInCP 5k PIL, pro + opp", lambda: cp("proopp"), reps=args.reps, dev=dev)
        timed("ours: TracInCP 5k PIL, self", lambda: cp("self"), reps=args.reps, dev=dev)
        tsub = TensorDataset(x_cpu[:5000], y_cpu[:5000])
        REPORT["note"] = "TracInCP from tensors below"

        def cpt():
            net = Net()
            TracInCP(
                net,
                tsub,
                paths,
                checkpoints_load_func=checkpoints_load_func,
                loss_fn=loss_cp,
                batch_size=2048,
                sample_wise_grads_per_batch=True,
                device="cuda",
            ).self_influence()

        timed("ours: TracInCP 5k tensors, self", cpt, reps=args.reps, dev=dev)

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(REPORT, indent=1))


if __name__ == "__main__":
    main()
