"""TracInCPFast at ImageNet's shape on one GPU (``python -m benchmarks imagenet``).

1,281,167 training rows, a final layer 2048 -> 1000 (ResNet-50's ``fc``, on synthetic pooled features: the
features are the layer's input, so the model is the layer itself), 5 checkpoints with different learning
rates. For float32 factors (78 GB, kept on the GPU) and bfloat16 ones (39 GB), in the same process:

* the factor pass (wall time, peak GPU memory, where the factors went), against the floor of a plain no-grad
  forward of the 5 checkpoints over the same rows (the features copied to the GPU once per block, as the pass
  does);
* a warm top-10 query of one test row, proponents and opponents (median of 10 calls, 2 when the factors are in
  host memory; wall time of the public ``influence`` call: test factors, the products over every training row,
  top-k, results on the CPU);
* self-influence of every training row (the first call after the pass);
* bfloat16 only, with ``--store``: the pass again, writing a store in ``--dir`` (its write rate against the
  rate a real backbone produces factors: ResNet-50 at the measured images/s writes ~30 KB per image);
* the bfloat16 scores' error and top-10 overlap against float32.

    python -m benchmarks.probes.imagenet_shape [--rows 1281167] [--store --dir /tmp/store]

Prints JSON lines as it goes and the whole report at the end (also to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _say(report: dict, key: str, value: object) -> None:
    report[key] = value
    print(json.dumps({key: value}), flush=True)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--store", action="store_true", help="also time the bfloat16 pass into a store in --dir")
    ap.add_argument("--dir", default="", help="where the checkpoints (and the store) go; default a temp folder")
    ap.add_argument("--dtypes", default="fp32,bf16", help="which factor dtypes (fp32 needs ~85 GB of GPU memory)")
    ap.add_argument("--out", default="")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one warm query per dtype")
    return ap.parse_args()


def _features(N: int, D: int, dev: torch.device) -> torch.Tensor:
    """Pooled, post-ReLU features ``(N, D)`` on the CPU, made on the device block by block."""
    X = torch.empty(N, D)
    gen_dev = dev if dev.type == "cuda" else torch.device("cpu")
    for s in range(0, N, 200_000):
        X[s : s + 200_000] = torch.randn(min(200_000, N - s), D, device=gen_dev).relu_().cpu()
    return X


def _write_checkpoints(model: nn.Module, tmp: Path, C: int) -> list[str]:
    """``C`` perturbed checkpoints of ``model`` (learning rates 0.1 * 0.6^c) in ``tmp``; ``model`` ends as the last."""
    lrs = [0.1 * (0.6**c) for c in range(C)]
    paths = []
    for c in range(C):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        paths.append(str(tmp / f"ckpt-{c}.pt"))
        torch.save({"model_state_dict": model.state_dict(), "learning_rate": lrs[c]}, paths[-1])
    return paths


def _plain_forward(model: nn.Module, X: torch.Tensor, paths: list[str], batch_size: int, dev: torch.device) -> dict:
    """The floor: a plain no-grad forward of every checkpoint, the features copied once per block."""
    states = [{k: v.to(dev) for k, v in torch.load(p, weights_only=True)["model_state_dict"].items()} for p in paths]
    net = model.to(dev).eval()
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, X.shape[0], batch_size):
            xb = X[s : s + batch_size].to(dev, non_blocking=True)
            for st in states:
                functional_call(net, st, (xb,))
    _sync(dev)
    fwd = time.perf_counter() - t0
    model.cpu()
    del states
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {"wall_s": round(fwd, 2), "rows_x_ckpts_per_s": round(X.shape[0] * len(paths) / fwd)}


def _queries(eng, test: tuple, name: str, results: dict[str, torch.Tensor]) -> dict:
    """The median and the slowest of warm top-10 queries, proponents and opponents; their indices into ``results``."""
    row: dict = {}
    for prop in (True, False):
        eng.influence(test, k=10, proponents=prop)  # warm
        times = []
        for _ in range(10 if eng.factors_.placement == "device" else 2):  # host memory: ~1 s or more a query
            t0 = time.perf_counter()
            res = eng.influence(test, k=10, proponents=prop)
            times.append(time.perf_counter() - t0)
        row[f"query_ms_{'pro' if prop else 'opp'}"] = round(1000 * statistics.median(times), 2)
        row[f"query_ms_{'pro' if prop else 'opp'}_max"] = round(1000 * max(times), 2)
        results[f"{name}-{prop}"] = res.indices[0]
    return row


def _profile(eng, test: tuple, dev: torch.device) -> bool:
    """Print the top CUDA kernels of one warm query; whether matmuls write the factor dtype directly."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        eng.influence(test, k=10)
        _sync(dev)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60)
    print(table, flush=True)
    from tracin_widgets.influence.fast import _bank

    return bool(_bank._mm_out_dtype())


def _measure_dtype(eng, test: tuple, name: str, args: argparse.Namespace, dev, results: dict) -> dict:
    """One factor dtype: the pass, where the factors went, warm queries, self-influence; scores into ``results``."""
    N, C = args.rows, args.checkpoints
    row: dict = {}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    eng.fit()
    _sync(dev)
    row["fit_s"] = round(time.perf_counter() - t0, 2)
    row["fit_rows_x_ckpts_per_s"] = round(N * C / row["fit_s"])
    row["placement"] = eng.factors_.placement
    row["factor_gb"] = round(eng.factors_.nbytes() / 1e9, 2)
    if dev.type == "cuda":
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1e9, 2)
    row.update(_queries(eng, test, name, results))
    if args.profile and dev.type == "cuda":
        row["mm_out_dtype"] = _profile(eng, test, dev)
    t0 = time.perf_counter()
    si = eng.self_influence()
    row["self_influence_s"] = round(time.perf_counter() - t0, 3)
    results[f"{name}-self"] = si
    results[f"{name}-scores"] = eng.influence_by_checkpoint(test, list(range(0, N, max(1, N // 4096)))).sum(-1)
    return row


def _bf16_vs_fp32(results: dict[str, torch.Tensor]) -> dict | None:
    a, b = results.get("fp32-scores"), results.get("bf16-scores")
    if a is None or b is None:
        return None
    return {
        "top10_overlap_pro": len(set(results["fp32-True"].tolist()) & set(results["bf16-True"].tolist())) / 10,
        "top10_overlap_opp": len(set(results["fp32-False"].tolist()) & set(results["bf16-False"].tolist())) / 10,
        "max_err_rel_to_max_score": float((a - b).abs().max() / a.abs().max()),
        "self_influence_equal": bool(torch.allclose(results["fp32-self"], results["bf16-self"], rtol=1e-5)),
    }


def _store_pass(eng, store: Path, test: tuple, dev: torch.device, results: dict) -> dict:
    """The bfloat16 pass written into a store: its rate, and whether it gives the in-memory top-10."""
    _sync(dev)
    t0 = time.perf_counter()
    eng.fit()
    _sync(dev)
    wall = time.perf_counter() - t0
    nbytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    return {
        "fit_s": round(wall, 2),
        "store_gb": round(nbytes / 1e9, 2),
        "write_gb_per_s": round(nbytes / 1e9 / wall, 2),
        "placement": eng.factors_.placement,
        "same_top10": bool(torch.equal(eng.influence(test, k=10).indices[0], results["bf16-True"]))
        if "bf16-True" in results
        else None,
    }


def main() -> None:
    args = _parse_args()
    from tracin_widgets.influence import TracInCPFast

    dev = torch.device(args.device)
    torch.manual_seed(0)
    N, D, K, C = args.rows, args.features, args.classes, args.checkpoints
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "rows": N,
        "layer": f"{D}->{K}",
        "checkpoints": C,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    t0 = time.perf_counter()
    X = _features(N, D, dev)
    y = torch.randint(0, K, (N,))
    test = (torch.randn(1, D).relu_(), torch.randint(0, K, (1,)))
    _say(report, "data_s", round(time.perf_counter() - t0, 1))

    model = nn.Sequential(nn.Linear(D, K))
    tmp = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="imagenet-shape-"))
    tmp.mkdir(parents=True, exist_ok=True)
    paths = _write_checkpoints(model, tmp, C)
    _say(report, "plain_forward", _plain_forward(model, X, paths, args.batch_size, dev))

    loss = nn.CrossEntropyLoss(reduction="sum")
    results: dict[str, torch.Tensor] = {}

    def engine(dtype: torch.dtype | None, cache: Path | None = None) -> TracInCPFast:
        return TracInCPFast(
            model,
            "0",
            TensorDataset(X, y),
            paths,
            loss_fn=loss,
            batch_size=args.batch_size,
            device=dev,
            factor_dtype=dtype,
            cache_dir=cache,
        )

    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        if name not in args.dtypes.split(","):
            continue
        eng = engine(dtype)
        _say(report, name, _measure_dtype(eng, test, name, args, dev, results))
        del eng
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    report["bf16_vs_fp32"] = _bf16_vs_fp32(results)
    print(json.dumps({"bf16_vs_fp32": report["bf16_vs_fp32"]}), flush=True)

    if args.store:
        store = tmp / "store"
        shutil.rmtree(store, ignore_errors=True)
        _say(report, "bf16_store", _store_pass(engine(torch.bfloat16, store), store, test, dev, results))
        shutil.rmtree(store, ignore_errors=True)
    if not args.dir:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
