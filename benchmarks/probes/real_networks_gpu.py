#!/usr/bin/env python
"""TracInCP on real networks on a GPU: the cases of ``benchmarks/real_networks.py`` (resnet18 conv layers, a tiny
BERT's encoder layers) on CUDA, cold and warm, with the peak CUDA memory of each query, against Captum 0.9's
TracInCP when Captum is importable (it need not be: the engine's figures come alone then), and against the
engine on the CPU for a small subset (``--check``: the scores' max relative difference and the top-10).

  python3 -m benchmarks.probes.real_networks_gpu --out $OUT/real-networks-gpu.json [--quick] [--only CASES]

Sizes are larger than the CPU scenario's (``--rows`` overrides them). Needs torchvision and transformers (carry
their wheels to a bare device machine, as CONTRIBUTING.md says for Captum's); the timings synchronise the device.
``got2`` (the warm query) is timed but only the cold query is compared with Captum (its warm call costs the same).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import real_networks as rn

ROWS = {"resnet18-2": (5000, 256), "resnet18-all": (1000, 64), "bert-2": (5000, 256), "bert-all": (2000, 128)}
LAYERS = {
    "resnet18-2": ["fc", "layer4.1.conv2"],
    "resnet18-all": None,
    "bert-2": ["classifier", "bert.encoder.layer.1.output.dense"],
    "bert-all": None,
}


def _sync() -> None:
    torch.cuda.synchronize()


def _query(fn: Any) -> tuple[torch.Tensor, dict]:
    torch.cuda.reset_peak_memory_stats()
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return out, {"seconds": round(time.perf_counter() - t0, 3), "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1e9}


def run(name: str, n: int, folder: Path, captum: bool, check: bool, batch_size: int) -> dict:
    make = rn.resnet18_case if name.startswith("resnet") else rn.bert_case
    model, train, test1, test2 = make(n)
    paths = rn.save_checkpoints(model, folder)
    layers = LAYERS[name]
    row: dict[str, Any] = {"case": name, "n_train": n, "n_test": rn.N_TEST, "batch_size": batch_size}
    eng = rn.ours(model, train, paths, layers, batch_size, device="cuda")
    got1, row["ours_cold"] = _query(lambda: eng.influence(test1, k=None))
    got2, row["ours_warm"] = _query(lambda: eng.influence(test2, k=None))
    row["gradient_paths"] = eng.gradient_paths()
    eng = None
    if captum:  # Captum computes on the model's device; its training rows are given there too
        try:
            cuda_train = torch.utils.data.TensorDataset(*(t.cuda() for t in train.tensors))
            ref = rn.captum(model.cuda(), cuda_train, paths, layers, batch_size)
            cuda_test = tuple(t.cuda() for t in test1)
            want1, row["captum_cold"] = _query(lambda: ref.influence(cuda_test, k=None))
            row["speedup_cold"] = round(row["captum_cold"]["seconds"] / row["ours_cold"]["seconds"], 2)
            row["agreement_captum"] = rn.agreement(got1.cpu(), want1.cpu())
        except Exception as e:  # a probe: record why Captum could not run, keep the engine's figures
            row["captum_error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            model.cpu()
            ref = cuda_train = None
    if check:  # the engine on the CPU for the first 64 rows: the same scores
        sub = torch.utils.data.TensorDataset(*(t[:64] for t in train.tensors))
        cpu = rn.ours(model, sub, paths, layers, batch_size).influence(test1, k=None)
        gpu = rn.ours(model, sub, paths, layers, batch_size, device="cuda").influence(test1, k=None)
        row["agreement_cpu"] = rn.agreement(gpu.cpu(), cpu)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--quick", action="store_true", help="a few rows per case")
    p.add_argument("--only", help="comma-separated cases: " + ", ".join(ROWS))
    p.add_argument("--rows", type=int, help="training rows for every case")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-captum", action="store_true", help="skip Captum even when it is importable")
    p.add_argument("--check", action="store_true", help="compare with the engine on the CPU (64 rows)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this probe measures the GPU (the CPU scenario is benchmarks.real_networks)")
    captum = not args.no_captum and importlib.util.find_spec("captum") is not None
    names = list(ROWS) if args.only is None else args.only.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            n = args.rows or ROWS[name][1 if args.quick else 0]
            print(f"{name}: {n} rows{' (and Captum)' if captum and name.endswith('-2') else ''}", file=sys.stderr)
            folder = Path(tmp) / name
            folder.mkdir()
            rows.append(run(name, n, folder, captum and name.endswith("-2"), args.check, args.batch_size))
            print(json.dumps(rows[-1], indent=1), flush=True)
    doc = {"probe": "real-networks-gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    doc["captum"] = captum
    doc["rows"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
