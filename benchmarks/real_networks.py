"""TracInCP on real networks against Captum 0.9's TracInCP, in one process, on the CPU.

``python -m benchmarks.real_networks [--quick] [--only NAMES] [--threads N]`` runs each case, prints a table and
writes ``benchmarks/results/real-networks-<machine>.json`` (``...-quick.json`` with ``--quick``). Cases:

  resnet18-2    torchvision ``resnet18(num_classes=10)`` on 32x32 images, ``layers=["fc", "layer4.1.conv2"]``
  resnet18-all  the same model, every parameter (``layers=None``)
  bert-2        a tiny ``transformers.BertForSequenceClassification`` (random init, called as
                ``model(input_ids, attention_mask)`` returning logits), ``layers=["classifier",
                "bert.encoder.layer.1.output.dense"]``
  bert-all      the same model, every parameter
  resnet18-2-mem  ours only, 5,000 training rows: the peak memory of a chunk-bounded pass

For each engine: a cold query (fresh instance: checkpoints loaded, the training pass) and a warm one (the same
instance, other test rows: another training pass), ``influence(test, k=None)``; the scores of both engines are
compared (max |ours - Captum| / max |Captum|, the same top-10 set per test row) and the peak resident memory
of each query is sampled (``/proc/self/statm`` every 5 ms, ``malloc_trim`` between queries). Captum gets the
model in eval mode (in train mode its BatchNorm scores are off, and it rewrites the running statistics).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

RESULTS = Path(__file__).resolve().parent / "results"
CHECKPOINTS = 3
N_TEST = 8
TOP = 10

# rows per case: (full, quick); sized for a few minutes on 2 cores
SIZES = {
    "resnet18-2": (1024, 32),
    "resnet18-all": (16, 4),
    "bert-2": (2048, 64),
    "bert-all": (128, 16),
    "resnet18-2-mem": (5000, 128),
}
BERT = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
TOKENS = 32


# ------------------------------------------------------------------------------------------------- memory
class PeakRSS:
    """The peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        _trim()
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def _trim() -> None:
    """Give freed heap memory back to the OS, so that one query's peak does not count the one before."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ------------------------------------------------------------------------------------------------- models
class TupleBert(nn.Module):
    """A Hugging Face BERT classifier called as ``model(input_ids, attention_mask)``, returning the logits (the
    form Captum and the engine call: ``model(*batch[:-1])``)."""

    def __init__(self, num_labels: int = 3, **config: Any) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(num_labels=num_labels, max_position_embeddings=64, attn_implementation="eager", **config)
        inner = BertForSequenceClassification(cfg)
        self.bert, self.classifier, self.dropout = inner.bert, inner.classifier, inner.dropout

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.bert(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.classifier(self.dropout(pooled))


def resnet18_case(n: int, seed: int = 0) -> tuple[nn.Module, TensorDataset, tuple, tuple]:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    tests = tuple((torch.randn(N_TEST, 3, 32, 32), torch.randint(0, 10, (N_TEST,))) for _ in range(2))
    return model.eval(), TensorDataset(x, y), tests[0], tests[1]


def bert_case(n: int, seed: int = 0) -> tuple[nn.Module, TensorDataset, tuple, tuple]:
    torch.manual_seed(seed)
    model = TupleBert(**BERT).eval()

    def rows(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.randint(1, BERT["vocab_size"], (m, TOKENS))
        lengths = torch.randint(TOKENS // 2, TOKENS + 1, (m,))
        mask = (torch.arange(TOKENS) < lengths[:, None]).long()
        return ids * mask, mask, torch.randint(0, 3, (m,))

    return model, TensorDataset(*rows(n)), rows(N_TEST), rows(N_TEST)


def save_checkpoints(model: nn.Module, folder: Path, seed: int = 1) -> list[str]:
    """``CHECKPOINTS`` perturbed copies of the weights, as a training run would leave them."""
    gen = torch.Generator().manual_seed(seed)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    paths = []
    for c in range(CHECKPOINTS):
        state = {
            k: v + 0.02 * torch.randn(v.shape, generator=gen) if v.is_floating_point() and "running" not in k else v
            for k, v in base.items()
        }
        paths.append(str(folder / f"checkpoint-{c}.pt"))
        torch.save(state, paths[-1])
    return paths


def load(model: nn.Module, path: str) -> float:
    model.load_state_dict(torch.load(path, weights_only=True))
    return 1.0


# ------------------------------------------------------------------------------------------------- engines
def ours(model, train, paths, layers, batch_size, device="cpu", **kw):
    from tracin_widgets.influence import TracInCP

    loss = nn.CrossEntropyLoss(reduction="none")
    return TracInCP(model, train, paths, load, layers=layers, loss_fn=loss, batch_size=batch_size, device=device, **kw)


def captum(model, train, paths, layers, batch_size):
    from captum.influence import TracInCP

    loss = nn.CrossEntropyLoss(reduction="none")
    return TracInCP(model, train, paths, load, layers=layers, loss_fn=loss, batch_size=batch_size)


def timed(fn: Callable[[], torch.Tensor], sync: Callable[[], None] = lambda: None) -> tuple[torch.Tensor, dict]:
    with PeakRSS() as mem:
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        dt = time.perf_counter() - t0
    return out, {"seconds": round(dt, 3), "peak_rss_gb": round(mem.peak / 1e9, 3)}


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Scores ``a`` (ours) against ``b`` (Captum): max relative difference, and whether the top-10 sets agree."""
    a, b = a.double(), b.double()
    rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
    k = min(TOP, a.shape[1])
    same = [set(x.tolist()) == set(y.tolist()) for x, y in zip(a.topk(k).indices, b.topk(k).indices, strict=True)]
    return {"max_rel_diff": rel, "same_top10": all(same), "same_top10_rows": sum(same)}


def run_case(name: str, n: int, with_captum: bool, folder: Path, batch_size: int = 64) -> dict:
    make, layers = {
        "resnet18-2": (resnet18_case, ["fc", "layer4.1.conv2"]),
        "resnet18-all": (resnet18_case, None),
        "resnet18-2-mem": (resnet18_case, ["fc", "layer4.1.conv2"]),
        "bert-2": (bert_case, ["classifier", "bert.encoder.layer.1.output.dense"]),
        "bert-all": (bert_case, None),
    }[name]
    model, train, test1, test2 = make(n)
    paths = save_checkpoints(model, folder)
    row: dict[str, Any] = {"case": name, "n_train": n, "n_test": N_TEST, "checkpoints": CHECKPOINTS}
    row["layers"] = "all" if layers is None else layers
    row["batch_size"] = batch_size
    with torch.no_grad():  # torch's one-time start-up (kernels, thread pool) is nobody's cold query
        model(*test1[:-1])
    engine = ours(model, train, paths, layers, batch_size)
    got1, row["ours_cold"] = timed(lambda: engine.influence(test1, k=None))
    got2, row["ours_warm"] = timed(lambda: engine.influence(test2, k=None))
    row["gradient_paths"] = engine.gradient_paths()
    engine = None
    if with_captum:
        ref = captum(model, train, paths, layers, batch_size)
        want1, row["captum_cold"] = timed(lambda: ref.influence(test1, k=None))
        want2, row["captum_warm"] = timed(lambda: ref.influence(test2, k=None))
        ref = None
        for which in ("cold", "warm"):
            row[f"speedup_{which}"] = round(row[f"captum_{which}"]["seconds"] / row[f"ours_{which}"]["seconds"], 2)
        agree = [agreement(got1, want1), agreement(got2, want2)]
        row["agreement"] = {
            "max_rel_diff": max(a["max_rel_diff"] for a in agree),
            "same_top10": all(a["same_top10"] for a in agree),
        }
    return row


# ------------------------------------------------------------------------------------------------- output
def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def table(rows: list[dict]) -> str:
    head = (
        f"{'case':15s} {'rows':>5s} {'ours cold':>10s} {'ours warm':>10s} {'captum cold':>12s} {'captum warm':>12s} "
        f"{'x cold':>7s} {'x warm':>7s} {'max rel':>9s} {'top10':>6s} {'RSS ours':>9s} {'RSS captum':>10s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def sec(key: str, r: dict = r) -> str:
            return f"{r[key]['seconds']:9.2f}s" if key in r else f"{'-':>10s}"

        agree = r.get("agreement", {})
        rss_c = max(r[k]["peak_rss_gb"] for k in ("captum_cold", "captum_warm")) if "captum_cold" in r else None
        lines.append(
            f"{r['case']:15s} {r['n_train']:5d} {sec('ours_cold')} {sec('ours_warm')} {sec('captum_cold'):>12s} "
            f"{sec('captum_warm'):>12s} {r.get('speedup_cold', '-'):>7} {r.get('speedup_warm', '-'):>7} "
            f"{agree.get('max_rel_diff', float('nan')):9.1e} {str(agree.get('same_top10', '-')):>6s} "
            f"{max(r['ours_cold']['peak_rss_gb'], r['ours_warm']['peak_rss_gb']):8.2f}G "
            f"{'-' if rss_c is None else f'{rss_c:.2f}G':>10s}"
        )
    return "\n".join(lines)


def cases(only: str | None) -> Iterator[str]:
    names = list(SIZES) if only is None else only.split(",")
    for name in names:
        if name not in SIZES:
            raise SystemExit(f"--only: unknown case {name!r}; cases: {', '.join(SIZES)}")
        yield name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: a few rows per case (results not recorded)")
    p.add_argument(
        "--only",
        help="comma-separated cases (default: all; a partial run keeps the file's other rows): " + ", ".join(SIZES),
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, help="the JSON file to write (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases(args.only):
            n = SIZES[name][1 if args.quick else 0]
            with_captum = name != "resnet18-2-mem"
            print(f"{name}: {n} training rows{' (and Captum)' if with_captum else ''} ...", file=sys.stderr, flush=True)
            folder = Path(tmp) / name
            folder.mkdir()
            rows.append(run_case(name, n, with_captum, folder))
    print(table(rows))
    tag = f"{os.cpu_count()}core"
    out = args.out or RESULTS / f"real-networks-{tag}{'-quick' if args.quick else ''}.json"
    doc = {
        "scenario": "real-networks",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "quick": args.quick,
        "rows": rows,
    }
    if args.only and out.is_file():  # a partial run replaces its own cases' rows of an earlier file
        done = {r["case"] for r in rows}
        doc["rows"] = [r for r in json.loads(out.read_text())["rows"] if r["case"] not in done] + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
