"""Probe (a script, not a test): TracInCPFast on torchvision's ResNet-50 must not run out of GPU memory.

Before the engine sized its forwards by the model's activation memory, ``resnet50(weights=None)`` with 5
checkpoints, 5,000 images of 224x224 and ``batch_size=64`` stopped with CUDA out of memory (the GPU pass merged
loader batches up to 16,384 rows and vmapped 16,384 // 5 rows for all checkpoints at once). This script builds
that case on a CUDA machine, runs ``fit`` and one top-10 query, and prints JSON: peak memory
(``torch.cuda.max_memory_allocated``), wall times, the rows per forward the engine chose (seen by a forward hook
on ``conv1``), and the plain no-grad forward throughput of the same 5 checkpoints for comparison.

    PYTHONPATH=. python3 benchmarks/probes/resnet50_memory.py [--n 5000] [--batch-size 64] [--checkpoints 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import TensorDataset


def _sync() -> None:
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="synthetic 224x224 training images")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--n-test", type=int, default=8, help="rows of the top-10 query")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a CUDA GPU")
    import torchvision

    from tracin_widgets.influence import TracInCPFast

    torch.manual_seed(args.seed)
    dev = torch.device("cuda")
    model = torchvision.models.resnet50(weights=None)
    n_classes = model.fc.out_features
    x = torch.randn(args.n, 3, 224, 224)
    y = torch.randint(0, n_classes, (args.n,))
    test = (torch.randn(args.n_test, 3, 224, 224), torch.randint(0, n_classes, (args.n_test,)))
    report: dict = {
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "n_train": args.n,
        "batch_size": args.batch_size,
        "checkpoints": args.checkpoints,
        "gpu_total_gib": round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        base = {k: v.clone() for k, v in model.state_dict().items()}
        for c in range(args.checkpoints):  # random perturbations of the initial weights
            sd = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in base.items()}
            paths.append(str(Path(tmp) / f"ckpt-{c}.pt"))
            torch.save(sd, paths[-1])

        # plain no-grad forward of every checkpoint over the data, batch_size rows at a time (the floor)
        model.to(dev).eval()
        _sync()
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            for p in paths:
                model.load_state_dict(torch.load(p, map_location=dev, weights_only=True))
                for s in range(0, args.n, args.batch_size):
                    model(x[s : s + args.batch_size].to(dev, non_blocking=True))
        _sync()
        fwd_s = time.perf_counter() - t0
        report["plain_forward"] = {
            "wall_s": round(fwd_s, 3),
            "images_per_s": round(args.n * args.checkpoints / fwd_s, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3),
        }
        model.load_state_dict(base)
        model.cpu()
        torch.cuda.empty_cache()

        rows: Counter = Counter()
        hook = model.conv1.register_forward_hook(lambda m, i, o: rows.update([int(i[0].shape[0])]))
        engine = TracInCPFast(
            model,
            "fc",
            TensorDataset(x, y),
            paths,
            loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
            batch_size=args.batch_size,
            device="cuda",
        )
        _sync()
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        try:
            engine.fit()
            _sync()
        except torch.cuda.OutOfMemoryError as e:
            report["fit_error"] = f"CUDA out of memory: {str(e).splitlines()[0]}"
            print(json.dumps(report, indent=2))
            raise SystemExit(1) from None
        fit_s = time.perf_counter() - t0
        fit_rows = dict(sorted(rows.items()))
        report["fit"] = {
            "wall_s": round(fit_s, 3),
            "images_per_s": round(args.n * args.checkpoints / fit_s, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3),
            "rows_per_forward": fit_rows,  # rows seen by conv1 -> how many forwards (the first is the probe)
            "activation_mb_per_row": round((engine._row_bytes or 0) / 1e6, 2),
            "vmapped": engine._vmap_ok,
        }
        rows.clear()
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        res = engine.influence(test, k=10)
        _sync()
        report["query_top10"] = {
            "wall_s": round(time.perf_counter() - t0, 3),
            "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 3),
            "rows_per_forward": dict(sorted(rows.items())),
            "shape": list(res.indices.shape),
        }
        hook.remove()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
