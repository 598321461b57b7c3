"""How far TracInCPFast's scores move when its factors are kept in bfloat16 / float16 (``factor_dtype=``).

The workload is ``bench_engine.py``'s (the tutorial's ``Net``, 6 checkpoints, CrossEntropyLoss(sum), final layer
fc3), over the first ``--n-train`` training images and ``--batches`` test batches of 4. For each half dtype it
reports, against float32 factors (Captum's numbers):

* the score error of each test row, ``max |s - s_fp32| / max |s_fp32|`` (its median and maximum over the rows), and
  the median entry-wise relative error ``|s - s_fp32| / |s_fp32|`` (large only for scores near zero);
* the top-10 overlap ``|top10 ∩ top10_fp32| / 10`` of the proponents and of the opponents (mean and minimum);
* the self-influence's maximum relative error (exact by construction: the norms are kept in float32);
* the median time of one query (k=10, proponents and opponents) on this machine.

  .venv/bin/python -m benchmarks.probes.factor_dtype --threads 2 --n-train 10000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_engine as be

BENCH = Path(__file__).resolve().parent.parent  # benchmarks/


def _overlap(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [len(set(x.tolist()) & set(y.tolist())) / len(y) for x, y in zip(a, b, strict=True)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=10_000, help="the first N training images of the workload")
    p.add_argument("--batches", type=int, default=10, help="test batches of 4")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(BENCH / "out" / "factor-dtype.json"))
    p.add_argument("--data-dir", default=str(BENCH / "data"))
    p.add_argument("--data-size", type=int, default=be.N_FULL, help="training images to generate (smoke runs: fewer)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bench = be.probe_bench(a.data_dir, a.data_size, a.device)
    from tracin_widgets.influence import TracInCPFast

    ds = bench.dataset("tensor", a.n_train)
    batches = [bench.test_batch_at(i) for i in range(a.batches)]

    def engine(dtype):
        obj = TracInCPFast(
            bench.net,
            bench.net.fc3,
            ds,
            bench.ckpts,
            checkpoints_load_func=be.checkpoints_load_func,
            loss_fn=bench.loss_sum,
            batch_size=128,
            device=bench.device,
            factor_dtype=dtype,
        )
        return obj.fit()

    def query_time(obj) -> float:
        times = []
        for b in batches:
            t = time.perf_counter()
            obj.influence(b, k=be.K, proponents=True)
            obj.influence(b, k=be.K, proponents=False)
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    ref = engine(None)
    ref_scores = [ref.influence(b, k=None) for b in batches]
    ref_top = [(s.topk(be.K, dim=1).indices, s.topk(be.K, dim=1, largest=False).indices) for s in ref_scores]
    ref_self = ref.self_influence()
    doc = {
        "machine": be.machine_info(bench.device),
        "args": vars(a),
        "float32": {"query_median_s": query_time(ref)},
        "results": {},
    }
    for name in a.dtypes.split(","):
        obj = engine(getattr(torch, name.strip()))
        row_err, entry_err, pro, opp = [], [], [], []
        for b, s32, (tp, to) in zip(batches, ref_scores, ref_top, strict=True):
            s = obj.influence(b, k=None)
            d = (s - s32).abs()
            row_err += (d.amax(1) / s32.abs().amax(1)).tolist()
            entry_err.append(float((d / s32.abs()).median()))
            pro += _overlap(obj.influence(b, k=be.K, proponents=True).indices, tp)
            opp += _overlap(obj.influence(b, k=be.K, proponents=False).indices, to)
        self_err = float(((obj.self_influence() - ref_self).abs() / ref_self.abs()).max())
        res = {
            "row_error_median": float(np.median(row_err)),
            "row_error_max": float(np.max(row_err)),
            "entry_rel_error_median": float(np.median(entry_err)),
            "top10_overlap_pro_mean": float(np.mean(pro)),
            "top10_overlap_pro_min": float(np.min(pro)),
            "top10_overlap_opp_mean": float(np.mean(opp)),
            "top10_overlap_opp_min": float(np.min(opp)),
            "self_influence_rel_error_max": self_err,
            "query_median_s": query_time(obj),
        }
        doc["results"][name] = res
        print(
            f"n={a.n_train} {name}: score error per row median {res['row_error_median']:.2e} max "
            f"{res['row_error_max']:.2e} (entry-wise median {res['entry_rel_error_median']:.2e}); top-10 overlap "
            f"pro {res['top10_overlap_pro_mean']:.3f} (min {res['top10_overlap_pro_min']:.1f}) opp "
            f"{res['top10_overlap_opp_mean']:.3f} (min {res['top10_overlap_opp_min']:.1f}); self-influence "
            f"{self_err:.1e}; query {res['query_median_s'] * 1e3:.1f} ms (float32 "
            f"{doc['float32']['query_median_s'] * 1e3:.1f} ms)",
            flush=True,
        )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
