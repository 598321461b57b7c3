"""Peak memory of TracInCPFast over a factor store larger than ``max_memory`` (issue 11, point 11, on the CPU).

A synthetic problem shaped like the tutorial's last layer: an MLP ``d_in -> 84 -> 10`` (TracIn on the 84 -> 10
layer), ``--checkpoints`` checkpoints, ``--rows`` random training rows in a TensorDataset. Each step runs in a
fresh process and reports its resident memory before the step (imports, model, data) and its peak (ru_maxrss):

* ``build``: the factor pass into a store in ``--dir`` with ``max_memory`` = the factors' bytes / ``--ratio``;
* ``stream``: a new engine over the complete store, same ``max_memory``: top-10 proponents and opponents of a
  test batch of 4, and self-influence;
* ``memory``: the same queries with the factors in memory (``max_memory=None``), the reference top-10.

  .venv/bin/python -m benchmarks.probes.store_memory --rows 1000000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _problem(a: argparse.Namespace, folder: Path):
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


def step(a: argparse.Namespace) -> dict:
    from tracin_widgets.influence import TracInCPFast

    folder = Path(a.dir)
    model, paths, ds, test = _problem(a, folder)
    factor_bytes = a.rows * a.checkpoints * (84 + 10) * 4
    max_memory = None if a.step == "memory" else factor_bytes // a.ratio
    obj = TracInCPFast(
        model,
        "2",
        ds,
        paths,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=4096,
        cache_dir=folder / "cache" if a.step != "memory" else None,
        max_memory=max_memory,
    )
    out = {"step": a.step, "factor_bytes": factor_bytes, "max_memory": max_memory, "rss_before": _rss()}
    t = time.perf_counter()
    obj.fit()
    out["fit_s"] = time.perf_counter() - t
    out["placement"] = obj.factors_.placement
    if a.step != "build":
        t = time.perf_counter()
        pro, opp = obj.influence(test, k=10), obj.influence(test, k=10, proponents=False)
        out["query_s"] = (time.perf_counter() - t) / 2
        t = time.perf_counter()
        self_inf = obj.self_influence()
        out["self_s"] = time.perf_counter() - t
        out["pro"], out["opp"] = pro.indices.tolist(), opp.indices.tolist()
        out["pro_scores"], out["self_top"] = pro.influence_scores.tolist(), self_inf.topk(10).indices.tolist()
    out["peak_rss"] = _peak()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--checkpoints", type=int, default=6)
    p.add_argument("--d-in", type=int, default=32)
    p.add_argument("--ratio", type=int, default=3, help="max_memory = factor bytes / ratio")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dir", default="", help="where the checkpoints and the store go (default: a temporary folder)")
    p.add_argument("--step", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "out" / "store-memory.json"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.step:
        print(json.dumps(step(a)))
        return 0
    tmp = None if a.dir else tempfile.mkdtemp(prefix="tracin-store-")
    a.dir = a.dir or tmp
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    try:
        res = {}
        for name in ("build", "stream", "memory"):
            given = sys.argv[1:] if argv is None else list(argv)
            cmd = [sys.executable, "-m", "benchmarks.probes.store_memory", *given]
            run = subprocess.run([*cmd, "--dir", a.dir, "--step", name], capture_output=True, text=True, check=True)
            res[name] = json.loads(run.stdout.strip().splitlines()[-1])
            r = res[name]
            print(
                f"{name}: placement {r['placement']}, factors {r['factor_bytes'] / 1e9:.2f} GB, max_memory "
                f"{(r['max_memory'] or 0) / 1e9:.2f} GB; RSS before {r['rss_before'] / 1e9:.2f} GB, peak "
                f"{r['peak_rss'] / 1e9:.2f} GB (+{(r['peak_rss'] - r['rss_before']) / 1e9:.2f}); fit "
                f"{r['fit_s']:.1f} s"
                + (f", query {r['query_s']:.2f} s, self {r['self_s']:.2f} s" if "query_s" in r else ""),
                flush=True,
            )
        same = res["stream"]["pro"] == res["memory"]["pro"] and res["stream"]["opp"] == res["memory"]["opp"]
        res["same_top10"] = same and res["stream"]["self_top"] == res["memory"]["self_top"]
        print(f"streamed top-10 (pro, opp, self-influence) == in memory: {res['same_top10']}")
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(a), "results": res}, indent=1))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
