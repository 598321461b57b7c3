#!/usr/bin/env python
"""Focused GPU probes behind the engine's loader and forward choices (ours only; prints a report).

* worker start-up: time to the first batch of a DataLoader over a trivial dataset, 1..15 workers;
* the tutorial Net's 6-checkpoint forward at 16k rows: cudnn.benchmark, channels_last, vmap over checkpoints;
* host-to-device: pageable chunk copies on a side stream overlapped with the forward, and a pinned double buffer.

  python3 -m benchmarks.probes.gpu_probe
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.bench_engine import N_CKPT, PILDataset, _preprocess, prepare_data
from benchmarks.probes.gpu_profile import timed as _timed
from tracin_widgets.tutorial import Net, checkpoints_load_func

DATA = Path(__file__).resolve().parent.parent / "data"


class Trivial(Dataset):
    def __len__(self):
        return 4096

    def __getitem__(self, i):
        return torch.zeros(3), i


def timed(name, fn, reps=3, sync=True):
    """``gpu_profile.timed``; ``sync=False`` for host-only work (no CUDA synchronisation around it)."""
    _timed(name, fn, reps=reps, dev=torch.device("cuda") if sync else None)


def main() -> None:
    dev = torch.device("cuda")
    data = prepare_data(DATA, 0, "cuda")
    torch.zeros(1, device=dev)
    print("tf32 cudnn", torch.backends.cudnn.allow_tf32, "matmul", torch.backends.cuda.matmul.allow_tf32)
    # --- worker start-up
    for w in (1, 4, 8, 15):

        def first(w=w):
            it = iter(DataLoader(Trivial(), batch_size=64, num_workers=w))
            next(it)
            return it

        timed(f"start-up: iter + first batch, {w} workers (trivial data)", first, reps=2, sync=False)

        def whole(w=w):
            for _ in DataLoader(Trivial(), batch_size=64, num_workers=w):
                pass

        timed(f"whole trivial pass incl. shutdown, {w} workers", whole, reps=2, sync=False)
    pil = PILDataset(data["x_train"], data["y_train"])
    t0 = time.perf_counter()
    for i in range(2000):
        pil[i]
    print(f"PIL item in the main process: {(time.perf_counter() - t0) / 2000 * 1e6:.0f} us", flush=True)
    for w, mp in ((15, None), (15, "forkserver")):

        def pas(w=w, mp=mp):
            for _ in DataLoader(pil, batch_size=834, num_workers=w, multiprocessing_context=mp, prefetch_factor=4):
                pass

        timed(f"PIL 50k pass, {w} workers, context {mp}, no pin", pas, reps=2, sync=False)
    # --- forward
    x_cpu = _preprocess(data["x_train"])
    y_cpu = torch.from_numpy(data["y_train"]).long()
    xg, yg = x_cpu.to(dev), y_cpu.to(dev)
    nets = []
    for path in data["checkpoints"][:N_CKPT]:
        net = Net().to(dev)
        checkpoints_load_func(net, path)
        nets.append(net.eval())
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    rows = 16384

    def fwd(x=xg):
        for s in range(0, 50000, rows):
            for net in nets:
                with torch.no_grad():
                    out = net(x[s : s + rows])
                out.requires_grad_(True)
                torch.autograd.grad(loss_fn(out, yg[s : s + rows]), out)

    timed("fwd 6x50k 16k rows (default)", fwd)
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        fwd()
        timed("fwd 6x50k 16k rows, cudnn.benchmark", fwd)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        timed("fwd 6x50k 16k rows, no tf32", fwd)
    xcl = xg.contiguous(memory_format=torch.channels_last)
    try:
        timed("fwd 6x50k 16k rows, channels_last input", lambda: fwd(xcl))
    except Exception as e:  # report any failure of the probe, whatever it is
        print("channels_last failed:", e)
    from torch.func import functional_call, stack_module_state, vmap

    params, bufs = stack_module_state(nets)

    def f(p, xb):
        return functional_call(nets[0], p, (xb,))

    def vfwd():
        for s in range(0, 50000, rows):
            with torch.no_grad():
                vmap(f, in_dims=(0, None))(params, xg[s : s + rows])

    timed("fwd 6x50k 16k rows, vmap over checkpoints (no dlogits)", vfwd)
    # --- copies overlapped with the forward
    side = torch.cuda.Stream()

    def pageable_overlap():
        chunks = [(s, min(s + rows, 50000)) for s in range(0, 50000, rows)]
        nxt = None
        with torch.cuda.stream(side):
            nxt = x_cpu[0:rows].to(dev, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(side)
        for j, (s, e) in enumerate(chunks):
            torch.cuda.current_stream().wait_event(ev)
            cur = nxt
            cur.record_stream(torch.cuda.current_stream())
            if j + 1 < len(chunks):
                s2, e2 = chunks[j + 1]
                with torch.cuda.stream(side):
                    nxt = x_cpu[s2:e2].to(dev, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(side)
            for net in nets:
                with torch.no_grad():
                    out = net(cur)
                out.requires_grad_(True)
                torch.autograd.grad(loss_fn(out, yg[s:e]), out)

    timed("copy+fwd: pageable chunks, side stream", pageable_overlap)

    def serial():
        for s in range(0, 50000, rows):
            cur = x_cpu[s : s + rows].to(dev, non_blocking=True)
            for net in nets:
                with torch.no_grad():
                    out = net(cur)
                out.requires_grad_(True)
                torch.autograd.grad(loss_fn(out, yg[s : s + rows]), out)

    timed("copy+fwd: pageable chunks, one stream (current engine)", serial)
    bufs_p = [torch.empty((4096,) + tuple(x_cpu.shape[1:]), pin_memory=True) for _ in range(2)]

    def pinned_db(r=4096):
        evs = [None, None]
        for j, s in enumerate(range(0, 50000, r)):
            e = min(s + r, 50000)
            b = bufs_p[j % 2]
            if evs[j % 2] is not None:
                evs[j % 2].synchronize()
            b[: e - s].copy_(x_cpu[s:e])
            cur = b[: e - s].to(dev, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            evs[j % 2] = ev
            for net in nets:
                with torch.no_grad():
                    out = net(cur)
                out.requires_grad_(True)
                torch.autograd.grad(loss_fn(out, yg[s:e]), out)

    timed("copy+fwd: pinned double buffer 4k rows (buffers preallocated)", pinned_db)
    timed(
        "alloc 2 pinned 4k-row buffers (100 MB)",
        lambda: [torch.empty((4096, 3, 32, 32), pin_memory=True) for _ in range(2)],
        sync=False,
    )
    timed(
        "host copy 614 MB into pinned (threads)",
        lambda: [bufs_p[0][: min(4096, 50000 - s)].copy_(x_cpu[s : s + 4096]) for s in range(0, 50000, 4096)],
        sync=False,
    )


if __name__ == "__main__":
    main()
