"""Probe (a script, not a test; CI has no GPU): the engine on CUDA gives the CPU's scores.

The tutorial's ``Net`` on CIFAR-shaped random data, 3 checkpoints with different learning rates: TracInCPFast,
TracInCPFastRandProj (exact rerank) and TracInCP (all layers) on ``device='cuda'`` against ``device='cpu'``
(top-10 indices and scores, self-influence), the same through ``nn.DataParallel`` on one GPU, and Captum 0.9's
TracInCPFast when it is importable. The checks run in strict float32 (``torch.backends.cudnn.allow_tf32 =
False``, as the matmul default): the scores must then agree to 1e-4 of the largest. PyTorch's default lets
cuDNN's convolutions use TF32 (10-bit mantissa) and the engine follows PyTorch's settings, so the same engines
are compared once more under TF32 ("tf32" rows: same top-10 required, the error reported, not gated). Prints one
JSON object; exits 1 when anything disagrees.

    PYTHONPATH=. python3 -m benchmarks.probes.gpu_smoke
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_widgets.influence import TracInCP, TracInCPFast, TracInCPFastRandProj
from tracin_widgets.tutorial import Net


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def main() -> int:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" only to try the script itself
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this probe needs a CUDA GPU")
    torch.manual_seed(0)
    n, n_test = 3000, 6
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    test = (torch.randn(n_test, 3, 32, 32), torch.randint(0, 10, (n_test,)))
    ds = TensorDataset(x, y)
    net = Net()
    out: dict = {
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else dev,
        "torch": torch.__version__,
        "checks": {},
    }
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for c, lr in enumerate((0.5, 0.2, 0.05)):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            paths.append(str(Path(tmp) / f"ckpt-{c}.pt"))
            torch.save({"model_state_dict": net.state_dict(), "learning_rate": lr}, paths[-1])
        loss = nn.CrossEntropyLoss(reduction="sum")
        kinds = {
            "fast": lambda dev, m: TracInCPFast(m, "fc3", ds, paths, loss_fn=loss, batch_size=256, device=dev),
            "randproj": lambda dev, m: TracInCPFastRandProj(
                m,
                "fc3",
                ds,
                paths,
                loss_fn=loss,
                batch_size=256,
                device=dev,
                projection_dim=64,
                nearest_neighbors=__import__("tracin_widgets.influence", fromlist=["x"]).ExactNearestNeighbors(),
            ),
            "cp": lambda dev, m: TracInCP(
                m,
                TensorDataset(x[:600], y[:600]),
                paths,
                loss_fn=nn.CrossEntropyLoss(reduction="none"),
                batch_size=128,
                device=dev,
            ),
        }
        tf32 = torch.backends.cudnn.allow_tf32
        runs = [(name, label, False) for name in kinds for label in (dev, f"{dev}-dataparallel")]
        runs += [(name, f"{dev}-tf32", True) for name in kinds]
        refs = {name: make("cpu", Net()) for name, make in kinds.items()}
        for name, label, allow in runs:
            torch.backends.cudnn.allow_tf32 = allow
            try:
                ref, model = refs[name], nn.DataParallel(Net()) if label.endswith("dataparallel") else Net()
                eng = kinds[name](dev, model)
                row = {}
                for prop in (True, False):
                    a, b = ref.influence(test, k=10, proponents=prop), eng.influence(test, k=10, proponents=prop)
                    row[f"top10_same_{'pro' if prop else 'opp'}"] = bool(torch.equal(a.indices, b.indices))
                    row[f"rel_err_{'pro' if prop else 'opp'}"] = _rel(b.influence_scores, a.influence_scores)
                    row["dtype"] = str(b.influence_scores.dtype)
                row["self_rel_err"] = _rel(eng.self_influence(), ref.self_influence())
                good = all(v for k, v in row.items() if k.startswith("top10"))
                if not allow:
                    good = good and max(v for k, v in row.items() if "rel_err" in k) < 1e-4
                row["ok"] = good
                ok &= good
                out["checks"][f"{name}/{label}"] = row
            finally:
                torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            from captum.influence import TracInCPFast as CaptumFast

            cnet = Net()
            on_dev = TensorDataset(x.to(dev), y.to(dev))  # Captum never moves the data (captum#1161)
            cap = CaptumFast(
                cnet, cnet.fc3, on_dev, paths, checkpoints_load_func=_captum_load, loss_fn=loss, batch_size=256
            )
            cap.model.to(dev)
            ours = TracInCPFast(
                Net(), "fc3", ds, paths, checkpoints_load_func=_captum_load, loss_fn=loss, batch_size=256, device=dev
            )
            tc = tuple(t.to(dev) for t in test)
            a = cap.influence(tc, k=10, proponents=True)
            b = ours.influence(test, k=10, proponents=True)
            row = {
                "top10_same": bool(torch.equal(a[0].cpu(), b.indices)),
                "rel_err": _rel(b.influence_scores, a[1].cpu()),
            }
            row["ok"] = row["top10_same"] and row["rel_err"] < 1e-4
            ok &= row["ok"]
            out["checks"][f"captum-fast/{dev}"] = row
        except ImportError:
            out["checks"][f"captum-fast/{dev}"] = "captum not installed"
        except Exception as e:  # Captum's own failure: still print the engine's checks above
            out["checks"][f"captum-fast/{dev}"] = f"captum failed: {type(e).__name__}: {e}"
            ok = False
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
    out["ok"] = ok
    print(json.dumps(out, indent=1), flush=True)
    return 0 if ok else 1


def _captum_load(model: nn.Module, path: str) -> float:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(obj["model_state_dict"])
    return float(obj["learning_rate"])


if __name__ == "__main__":
    sys.exit(main())
