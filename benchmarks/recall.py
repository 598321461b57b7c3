"""Recall@10 of TracInCPFastRandProj against the exact top-10, with and without the exact rerank.

Same workload and settings as ``engine.py``'s randproj task (batch 128, AnnoyNearestNeighbors(num_trees=100),
projection_dim=100, final_fc_layer=fc3, CrossEntropyLoss(sum)), but over ``--batches`` test batches of 4 (not just
the first one), and for several values of our ``rerank`` (``None`` = the index's approximate top-k, as Captum).
One RandProj instance of ours is built per N; ``rerank`` is a plain attribute read at query time, so changing it
does not rebuild anything. "brute" rows take the candidates from an exact (brute-force) search of the projected
embeddings instead of Annoy's: the recall that the projection alone allows, i.e. what Annoy's search loses.
``--captum-n`` also builds Captum's TracInCPFastRandProj (for its recall; slow). The "cached" timing is our RandProj
``__init__`` when a TracInCPFast with the same ``cache_dir`` has already computed the factors (index build only).

  python -m benchmarks recall            # the recorded run: 10k and 50k, Captum's recall at 10k
  python -m benchmarks.recall --threads 2 --n-train 10000,50000 --captum-n 10000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import engine as be
from benchmarks import workload as wl

BENCH = Path(__file__).resolve().parent  # benchmarks/


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", default="10000", help="comma separated training sizes (first N of the 50k)")
    p.add_argument("--captum-n", default="", help="comma separated sizes at which Captum's RandProj is built too")
    p.add_argument("--batches", type=int, default=10, help="test batches of 4 (batch 0 is engine.py's)")
    p.add_argument("--reranks", default="none,1,2,5,10,20,50,100")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--source", default="pil")
    p.add_argument("--out", default=str(BENCH / "out" / "randproj-recall.json"))
    p.add_argument("--data-dir", default=str(wl.DATA_DIR))
    p.add_argument("--data-size", type=int, default=wl.N_FULL, help="training images to generate (smoke runs: fewer)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    bench = be.recall_bench(a.data_dir, a.data_size, a.device)
    from captum.influence import TracInCPFastRandProj as C
    from captum.influence._utils.nearest_neighbors import AnnoyNearestNeighbors as CAnnoy

    from tracin_widgets.influence import AnnoyNearestNeighbors as OAnnoy
    from tracin_widgets.influence import TracInCPFast as OFast
    from tracin_widgets.influence import TracInCPFastRandProj as O

    reranks = [None if r.strip().lower() == "none" else int(r) for r in a.reranks.split(",")]
    captum_n = {int(x) for x in a.captum_n.split(",") if x.strip()}
    batches = [bench.test_batch_at(i) for i in range(a.batches)]
    doc = {"machine": wl.machine_info(bench.device), "args": vars(a), "results": {}}
    for n in (int(x) for x in a.n_train.split(",")):
        ds = bench.dataset(a.source, n)
        exact_inst = bench.warm_instance(a.source, n)
        exact = [
            (
                exact_inst.influence(b, k=be.K, proponents=True).indices,
                exact_inst.influence(b, k=be.K, proponents=False).indices,
            )
            for b in batches
        ]
        full = [exact_inst.influence(b, k=None) for b in batches]  # exact score matrices (4, n)
        t0 = time.perf_counter()
        ours = O(
            bench.net,
            bench.net.fc3,
            ds,
            bench.ckpts,
            checkpoints_load_func=be.checkpoints_load_func,
            loss_fn=bench.loss_sum,
            batch_size=128,
            nearest_neighbors=OAnnoy(num_trees=100),
            projection_dim=100,
            device=bench.device,
        )
        res = {"ours_init_s": time.perf_counter() - t0, "ours": {}}

        def measure(inst, exact=exact):
            pro, opp, times = [], [], []
            for b, (ep, eo) in zip(batches, exact, strict=False):
                t = time.perf_counter()
                rp = inst.influence(b, k=be.K, proponents=True)
                ro = inst.influence(b, k=be.K, proponents=False)
                times.append(time.perf_counter() - t)
                pro.append(be.recall(rp.indices, ep))
                opp.append(be.recall(ro.indices, eo))
            return {
                "pro_batch0": pro[0],
                "opp_batch0": opp[0],
                "pro_mean": float(np.mean(pro)),
                "opp_mean": float(np.mean(opp)),
                "query_median_s": float(np.median(times)),
            }

        for r in [x for x in reranks if x]:  # brute-force candidates in the projected space, exact rerank
            pro, opp = [], []
            for b, (ep, eo), sc in zip(batches, exact, full, strict=False):
                q = ours.compute_intermediate_quantities(b)
                approx = q @ ours._train_embeddings.cpu().T
                for sign, ref, acc in ((1, ep, pro), (-1, eo, opp)):
                    cand = torch.topk(sign * approx, min(n, r * be.K), dim=1).indices
                    best = torch.topk(sign * torch.gather(sc, 1, cand), be.K, dim=1).indices
                    acc.append(be.recall(torch.gather(cand, 1, best), ref))
            res["ours"][f"brute{r}"] = {"pro_mean": float(np.mean(pro)), "opp_mean": float(np.mean(opp))}
            print(
                f"n={n} brute-force candidates, rerank={r}: recall pro {np.mean(pro):.3f} opp {np.mean(opp):.3f}",
                flush=True,
            )
        with tempfile.TemporaryDirectory() as cache:
            OFast(
                bench.net,
                bench.net.fc3,
                ds,
                bench.ckpts,
                checkpoints_load_func=be.checkpoints_load_func,
                loss_fn=bench.loss_sum,
                batch_size=128,
                device=bench.device,
                cache_dir=cache,
            ).fit()
            t0 = time.perf_counter()
            O(
                bench.net,
                bench.net.fc3,
                ds,
                bench.ckpts,
                checkpoints_load_func=be.checkpoints_load_func,
                loss_fn=bench.loss_sum,
                batch_size=128,
                nearest_neighbors=OAnnoy(num_trees=100),
                projection_dim=100,
                device=bench.device,
                cache_dir=cache,
            )
            res["ours_init_cached_s"] = time.perf_counter() - t0
        print(
            f"n={n} ours RandProj __init__: cold {res['ours_init_s']:.2f} s, factors cached by a TracInCPFast "
            f"{res['ours_init_cached_s']:.2f} s",
            flush=True,
        )
        for r in reranks:
            ours.rerank = r
            res["ours"][str(r)] = m = measure(ours)
            print(
                f"n={n} ours rerank={r}: recall pro {m['pro_mean']:.3f} opp {m['opp_mean']:.3f} "
                f"(batch 0: {m['pro_batch0']:.3f} / {m['opp_batch0']:.3f}), query {m['query_median_s'] * 1e3:.1f} ms",
                flush=True,
            )
        if n in captum_n:
            t0 = time.perf_counter()
            cap = C(
                bench.net,
                bench.net.fc3,
                ds,
                bench.ckpts,
                checkpoints_load_func=be.checkpoints_load_func,
                loss_fn=bench.loss_sum,
                batch_size=128,
                nearest_neighbors=CAnnoy(num_trees=100),
                projection_dim=100,
            )
            res["captum_init_s"] = time.perf_counter() - t0
            res["captum"] = m = measure(cap)
            print(
                f"n={n} captum: recall pro {m['pro_mean']:.3f} opp {m['opp_mean']:.3f} "
                f"(batch 0: {m['pro_batch0']:.3f} / {m['opp_batch0']:.3f}), query {m['query_median_s'] * 1e3:.1f} ms",
                flush=True,
            )
        doc["results"][str(n)] = res
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
