"""TracInCPFast's factor pass on torchvision's ResNet-50 against the plain no-grad forward of the same checkpoints
(``python -m benchmarks resnet50``; target: >= 0.8x its throughput on >= 100k images).

Synthetic 224x224 uint8 images (1,000 distinct ones, repeated: the data never limits either side) in a
TensorDataset; the model converts them to float (``x.float() / 255``) before ``resnet50(weights=None)``, as a
GPU-side normalisation does. Both sides run in this process under the same precision settings, and the
setting is named in the report: PyTorch's default (cuDNN convolutions in TF32) and strict float32
(``torch.backends.cudnn.allow_tf32 = False``). The engine uses whatever is set, as a plain forward does.

* ``plain``: for each checkpoint, load it and run ``model(x)`` over the images, ``--batch-size`` rows at a time;
* ``engine``: ``TracInCPFast(...).fit()`` (``batch_size=--batch-size``), wall time of the whole call.

First ``--n-small`` images in both precision modes, then ``--n`` in the default mode if ``--budget-s`` allows.

    python -m benchmarks.probes.resnet50_throughput [--n 100000] [--n-small 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


class FromUint8(nn.Module):
    """uint8 images in, the network on floats in [0, 1]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float().div_(255))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--n-small", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip the large run if it would not fit")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a CUDA GPU")
    import torchvision

    from tracin_widgets.influence import TracInCPFast

    start = time.perf_counter()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = FromUint8(torchvision.models.resnet50(weights=None))
    distinct = torch.randint(0, 256, (1000, 3, 224, 224), dtype=torch.uint8, device=dev).cpu()
    x = distinct.repeat(args.n // 1000 + 1, 1, 1, 1)[: args.n]
    y = torch.randint(0, 1000, (args.n,))
    report: dict = {
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "batch_size": args.batch_size,
        "checkpoints": args.checkpoints,
        "runs": [],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}), flush=True)
    tmp = tempfile.mkdtemp(prefix="resnet-")
    paths = []
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for c in range(args.checkpoints):
        sd = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in base.items()}
        paths.append(str(Path(tmp) / f"ckpt-{c}.pt"))
        torch.save(sd, paths[-1])
    states = [torch.load(p, map_location=dev, weights_only=True) for p in paths]

    def plain(n: int) -> float:
        model.to(dev).eval()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            for st in states:
                model.load_state_dict(st)
                for s in range(0, n, args.batch_size):
                    model(x[s : s + args.batch_size].to(dev, non_blocking=True))
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        model.load_state_dict(base)
        model.cpu()
        return wall

    def engine(n: int) -> tuple[float, dict]:
        rows: Counter = Counter()
        hook = model.net.conv1.register_forward_hook(lambda m, i, o: rows.update([int(i[0].shape[0])]))
        eng = TracInCPFast(
            model,
            "net.fc",
            TensorDataset(x[:n], y[:n]),
            paths,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=args.batch_size,
            device=dev,
        )
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        eng.fit()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        hook.remove()
        info = {
            "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2),
            "rows_per_forward": dict(rows.most_common(3)),
            "vmapped": eng._vmap_ok,
            "measured_mb_per_row": {
                "summed_outputs": round((eng._row_bytes or 0) / 1e6, 1),
                "allocator_peak": round((eng._row_peak or 0) / 1e6, 1),
            },
        }
        del eng
        torch.cuda.empty_cache()
        return wall, info

    def measure(n: int, tf32: bool) -> dict:
        torch.backends.cudnn.allow_tf32 = tf32
        plain(min(n, 2 * args.batch_size))  # warm-up: cuDNN's algorithm choice, lazy initialisation
        p = plain(n)
        e, info = engine(n)
        run = {
            "images": n,
            "precision": "cuDNN TF32 (PyTorch's default)" if tf32 else "strict float32 (cudnn.allow_tf32=False)",
            "plain_images_x_ckpts_per_s": round(n * args.checkpoints / p, 1),
            "engine_images_x_ckpts_per_s": round(n * args.checkpoints / e, 1),
            "ratio": round(p / e, 3),
            "plain_s": round(p, 1),
            "engine_s": round(e, 1),
            **info,
        }
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
        return run

    measure(args.n_small, True)
    small = measure(args.n_small, False)
    torch.backends.cudnn.allow_tf32 = True
    per_image = (small["plain_s"] + small["engine_s"]) / args.n_small * 0.75  # TF32 is faster than strict
    left = args.budget_s - (time.perf_counter() - start)
    if args.n > args.n_small and per_image * args.n < left:
        measure(args.n, True)
    else:
        report["skipped_large"] = f"needs ~{per_image * args.n:.0f} s, {left:.0f} s left"
    print(json.dumps(report, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
