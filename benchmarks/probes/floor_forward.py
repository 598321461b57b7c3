#!/usr/bin/env python
"""Forward-pass floor of the tutorial Net on the CPU: how the time of 6 checkpoints' forward passes over N
examples depends on the batch size, the memory format and the thread count (no library involved).

This bounds any cold TracInCPFast factor pass (one forward per checkpoint per example) and so the cold
speed-up over Captum, whose passes cost about the same per pass. Wall and process CPU time are printed;
on a shared machine, trust the CPU time.

  .venv/bin/python -m benchmarks.probes.floor_forward --n 10000 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.bench_engine import N_CKPT, _preprocess, prepare_data
from tracin_widgets.tutorial import Net, checkpoints_load_func


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--threads", default="1", help="comma separated thread counts")
    p.add_argument("--batch-sizes", default="128,256,512,1024,2048")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "data"))
    args = p.parse_args()
    data = prepare_data(Path(args.data_dir), 0, "cpu")
    x = _preprocess(data["x_train"][: args.n])
    y = torch.from_numpy(data["y_train"][: args.n])
    nets = []
    for path in data["checkpoints"][:N_CKPT]:
        net = Net()
        checkpoints_load_func(net, path)
        nets.append(net.eval())
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    def run(bs: int, fmt: str, grad: bool) -> None:
        xx = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
        for s in range(0, args.n, bs):
            xb, yb = xx[s : s + bs], y[s : s + bs]
            for net in nets:
                if not grad:
                    with torch.no_grad():
                        net(xb)
                    continue
                # what a factor pass does: forward without a graph, then dLoss/dlogits at the output
                with torch.no_grad():
                    out = net(xb)
                out = out.requires_grad_(True)
                torch.autograd.grad(loss_fn(out, yb), out)

    print(f"n={args.n}, {N_CKPT} checkpoints; median of {args.reps} (wall / process CPU, seconds)")
    for th in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(th)
        for fmt in ("contiguous",):  # channels_last breaks the tutorial forward (x.view)
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                for grad in (False, True):
                    walls, cpus = [], []
                    for _ in range(args.reps):
                        t0, c0 = time.perf_counter(), time.process_time()
                        run(bs, fmt, grad)
                        walls.append(time.perf_counter() - t0)
                        cpus.append(time.process_time() - c0)
                    what = "fwd+dlogits" if grad else "fwd no-grad"
                    print(
                        f"threads {th} {fmt:13s} batch {bs:5d} {what:12s} wall {statistics.median(walls):6.2f}  "
                        f"cpu {statistics.median(cpus):6.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
