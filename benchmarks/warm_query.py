"""A warm TracInCPFast query, quiet and under load: ``python -m benchmarks.warm_query [--package DIR]``.

The workload's 50k training images (a TensorDataset of the preprocessed floats), the tutorial's ``Net`` and its 6
checkpoints, ``final_fc_layer=fc3``: after ``fit()``, a top-10 query (proponents, then opponents) of 4 test
examples is timed ``--reps`` times, first on a quiet machine, then while ``--busy`` busy-loop processes load the
cores. It also counts the changes of Python module along one warm ``influence(batch, k=3)`` (a ``sys.setprofile``
tracer over the package's own modules). ``--package DIR`` imports ``tracin_widgets`` from another checkout (to
measure an earlier commit side by side); the figures go to ``benchmarks/results/warm-query-<machine>.json`` under
the key given by ``--label``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _busy() -> None:
    while True:
        pass


def module_changes(call) -> int:
    """The changes of module along ``call()`` among the package's own frames (calls and returns)."""
    changes, last = 0, None

    def tracer(frame, event, arg):
        nonlocal changes, last
        if event not in ("call", "return"):
            return
        mod = frame.f_globals.get("__name__", "")
        if not mod.startswith("tracin_widgets"):
            return
        if last is not None and mod != last:
            changes += 1
        last = mod

    sys.setprofile(tracer)
    try:
        call()
    finally:
        sys.setprofile(None)
    return changes


def timed_ms(call, reps: int) -> dict:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), "reps": reps}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, default=None, help="import tracin_widgets from this checkout")
    ap.add_argument("--label", default="this commit", help="the key of these figures in the results file")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes for the loaded figure")
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.package is not None:
        sys.path.insert(0, str(args.package.resolve()))
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import tracin_widgets
    from benchmarks import workload
    from tracin_widgets.influence import TracInCPFast
    from tracin_widgets.tutorial import Net, checkpoints_load_func

    data = workload.prepare_data(n_full=args.n)
    train = TensorDataset(workload.preprocess(data["x_train"]), torch.from_numpy(data["y_train"]))
    xt, yt = workload.preprocess(data["x_test"][:4]), torch.from_numpy(data["y_test"][:4])
    net = Net()
    engine = TracInCPFast(
        net,
        net.fc3,
        train,
        data["checkpoints"],
        checkpoints_load_func,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
    ).fit()

    def query() -> None:
        engine.influence((xt, yt), k=10, proponents=True)
        engine.influence((xt, yt), k=10, proponents=False)

    query()  # warm
    out: dict = {
        "package": str(Path(tracin_widgets.__file__).parent.parent),
        "n_train": len(train),
        "module_changes_k3": module_changes(lambda: engine.influence((xt, yt), k=3)),
        "quiet": timed_ms(query, args.reps),
    }
    procs = [mp.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for p in procs:
        p.start()
    try:
        time.sleep(1.0)
        out["loaded"] = timed_ms(query, args.reps)
    finally:
        for p in procs:
            p.terminate()
    out["loaded_over_quiet"] = round(out["loaded"]["median_ms"] / out["quiet"]["median_ms"], 2)
    out["busy_processes"] = args.busy
    out["machine"] = workload.machine_info()
    path = args.out or HERE / "results" / "warm-query-2core.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc = {"scenario": "warm-query", "machine_tag": "2core", "runs": {}, **doc}
    doc["runs"][args.label] = out
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, indent=1))
    return out


if __name__ == "__main__":
    main()
