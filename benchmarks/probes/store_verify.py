"""What verifying the factor store's checksums costs (every row of every file is checked when it is read).

* ``checksum``: GB/s of the row checksum (``influence/_integrity.py``: an integer matrix-vector product of
  64-bit words) for rows of the store's widths, next to zlib's crc32 and adler32 over the same 64 MiB;
* on a problem of an MLP ``d_in -> 84 -> 10``, ``--checkpoints`` checkpoints, ``--rows``
  rows: at 1,281,167 rows and 6 checkpoints a 2.9 GB store), once the store is built, each measured with the
  checksums verified and not (``FactorStore.verify_reads``), alternately, ``--reps`` times (the median is kept):
  ``read``: every block of the store read as a streamed query reads it (no compute); ``stream``: a streamed
  top-10 query (``max_memory`` = the factors' bytes / 3); ``load``: a new engine loading the store into memory.
  The store stays in the page cache (it is read once before), so the figures are the reads' CPU cost; each is
  given as wall time and as this process's CPU time (the latter barely moved by other processes on the machine).

  .venv/bin/python -m benchmarks.probes.store_verify --rows 1281167 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn


def checksum_speed() -> dict:
    from tracin_widgets.influence._integrity import row_sums

    n = 64 << 20
    data = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
    out = {}

    def rate(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(5):
            fn()
        return round(5 * n / (time.perf_counter() - t) / 1e9, 2)

    for words in (10, 84, 2049):
        rows = n // (4 * words)
        buf = data[: rows * 4 * words]
        out[f"rows of {words} x 4 bytes"] = rate(lambda b=buf, r=rows: row_sums(b, r, 1))
    out["zlib.crc32"] = rate(lambda: zlib.crc32(data))
    out["zlib.adler32"] = rate(lambda: zlib.adler32(data))
    return out


def _problem(a: argparse.Namespace, folder: Path):
    """The MLP ``d_in -> 84 -> 10``, its ``a.checkpoints`` checkpoints in ``folder`` and ``a.rows`` random rows."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(a.d_in, 84), nn.ReLU(), nn.Linear(84, 10))
    paths = []
    for c in range(a.checkpoints):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        paths.append(str(folder / f"ckpt-{c}.pt"))
        if not Path(paths[-1]).is_file():
            torch.save(model.state_dict(), paths[-1])
    x = torch.randn(a.rows, a.d_in, generator=g)
    y = torch.randint(0, 10, (a.rows,), generator=g)
    test = (torch.randn(4, a.d_in, generator=g), torch.randint(0, 10, (4,), generator=g))
    return model, paths, TensorDataset(x, y), test


def _document(a: argparse.Namespace, res: dict) -> dict:
    """The results file (``benchmarks/results/store-verify-<machine>.json``): the scenario keys the report reads."""
    from benchmarks.suite import git_commit

    cores = os.cpu_count()
    return {
        "scenario": "store-verify",
        "machine_tag": f"{cores}core",
        "machine_label": f"CPU, {cores} cores",
        "source": "measured by python -m benchmarks.probes.store_verify "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k in ("rows", "threads", "checkpoints")
        ),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "notes": "wall and this process's CPU seconds (medians); the machine is shared, so the CPU figures are the "
        "steadier; 'slower' is verified / not verified - 1",
        "args": vars(a),
        "results": res,
    }


def main(argv=None) -> int:
    from tracin_widgets.influence import TracInCPFast
    from tracin_widgets.influence._store import FactorStore, stream_rows

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_281_167)
    p.add_argument("--checkpoints", type=int, default=6)
    p.add_argument("--d-in", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dir", default="", help="where the checkpoints and the store go (default: a temporary folder)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "out" / "store-verify.json"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res: dict = {"checksum_GBps": checksum_speed()}
    print("checksum GB/s:", res["checksum_GBps"], flush=True)
    folder = Path(a.dir or tempfile.mkdtemp(prefix="tracin-verify-"))
    folder.mkdir(parents=True, exist_ok=True)
    model, paths, ds, test = _problem(a, folder)
    factor_bytes = a.rows * a.checkpoints * (84 + 10) * 4

    def engine(max_memory):
        return TracInCPFast(
            model,
            "2",
            ds,
            paths,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=4096,
            cache_dir=folder / "cache",
            max_memory=max_memory,
        )

    t = time.perf_counter()
    stream = engine(factor_bytes // 3).fit()
    res["build_s"] = time.perf_counter() - t
    assert stream.factors_ is not None
    store = stream.factors_.store  # streamed (max_memory below the factors' bytes)
    assert store is not None
    step = stream_rows(store.row_bytes, stream.max_memory)

    def read() -> None:
        for _ in store.blocks(step):
            pass

    def query() -> None:
        stream.influence(test, k=10)

    def load() -> None:
        engine(None).fit()

    read()  # into the page cache
    kinds = ("verified", "not verified", "verified cpu", "not verified cpu")  # wall and this process's CPU seconds
    times: dict[str, dict[str, list[float]]] = {k: {v: [] for v in kinds} for k in ("read", "stream", "load")}
    for _ in range(a.reps):
        for verify in (True, False):
            FactorStore.verify_reads = verify
            key = "verified" if verify else "not verified"
            for name, fn in (("read", read), ("stream", query), ("load", load)):
                t, cpu = time.perf_counter(), time.process_time()
                fn()
                times[name][key].append(time.perf_counter() - t)
                times[name][key + " cpu"].append(time.process_time() - cpu)
    FactorStore.verify_reads = True
    res["store_bytes"] = sum(path.stat().st_size for path, _ in store.files())
    for name, by in times.items():
        med = {k: statistics.median(v) for k, v in by.items()}
        res[name] = {
            **{f"{k}_s": round(v, 3) for k, v in med.items()},
            "slower": round(med["verified"] / med["not verified"] - 1, 3),
            "slower_cpu": round(med["verified cpu"] / med["not verified cpu"] - 1, 3),
        }
        print(f"{name}: {res[name]}", flush=True)
    res["read"]["verified_GBps"] = round(res["store_bytes"] / res["read"]["verified_s"] / 1e9, 2)
    res["read"]["not_verified_GBps"] = round(res["store_bytes"] / res["read"]["not verified_s"] / 1e9, 2)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_document(a, res), indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
