#!/usr/bin/env python
"""Per-example Conv2d weight gradients: four formulations, timed on the tutorial Net's two convs.

Given a conv's input x (n, c, H, W) and the loss gradient at its output g (n, o, Ho, Wo) (stride 1, no
padding), each computes gw[i] = sum_{y,x} g[i, :, y, x] (outer) x[i, :, y:y+k, x:x+k], flattened:
  einsum_view  einsum over a strided unfold view (what tracin_widgets' TracInCP does at the time of writing)
  im2col_bmm   F.unfold + bmm
  grouped      one grouped conv2d: batch as groups (x as (c, n, H, W), g as (n*o, 1, Ho, Wo), groups=n)
  offsets      a bmm for each of the k*k kernel offsets over a shifted slice
Relative error is against the float64 einsum. ``--device cuda`` times with synchronisation.

  .venv/bin/python -m benchmarks.probes.conv_sample_grads --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def einsum_view(x, g, k):
    win = x.unfold(2, k, 1).unfold(3, k, 1)[:, :, : g.shape[2], : g.shape[3]]
    return torch.einsum("ncyxhw,noyx->nochw", win, g).reshape(x.shape[0], -1)


def im2col_bmm(x, g, k):
    return torch.bmm(g.flatten(2), F.unfold(x, k).transpose(1, 2)).reshape(x.shape[0], -1)


def grouped(x, g, k):
    n, c = x.shape[:2]
    o = g.shape[1]
    out = F.conv2d(x.transpose(0, 1), g.reshape(n * o, 1, g.shape[2], g.shape[3]), groups=n)  # (c, n*o, k, k)
    return out.reshape(c, n, o, k, k).permute(1, 2, 0, 3, 4).reshape(n, -1)


def offsets(x, g, k):
    n, c = x.shape[:2]
    o, ho, wo = g.shape[1], g.shape[2], g.shape[3]
    gf = g.reshape(n, o, ho * wo)
    out = x.new_empty(n, o, c, k, k)
    for h in range(k):
        for w in range(k):
            out[:, :, :, h, w] = torch.bmm(gf, x[:, :, h : h + ho, w : w + wo].reshape(n, c, ho * wo).transpose(1, 2))
    return out.reshape(n, -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--n", type=int, default=1000, help="examples per batch")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    for name, (c, size, o) in {"conv1 3->6 on 32x32": (3, 32, 6), "conv2 6->16 on 14x14": (6, 14, 16)}.items():
        x = torch.randn(args.n, c, size, size, generator=gen).to(dev)
        g = torch.randn(args.n, o, size - 4, size - 4, generator=gen).to(dev)
        ref = einsum_view(x.double(), g.double(), 5)
        for f in (einsum_view, im2col_bmm, grouped, offsets):
            out = f(x, g, 5)
            err = float((out.double() - ref).norm() / ref.norm())
            ts = []
            for _ in range(args.reps):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                f(x, g, 5)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            print(
                f"{name:22s} n={args.n} {f.__name__:12s} median {statistics.median(ts) * 1e3:8.2f} ms  "
                f"min {min(ts) * 1e3:8.2f} ms  rel err {err:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
