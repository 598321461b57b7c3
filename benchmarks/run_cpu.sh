#!/bin/bash
# The CPU session of RESULTS.md (2 cores; 1 torch thread for the 10k rows, 2 threads for the real 50k side by side;
# bench_engine records the load average before and after every rep). About 14 minutes on a quiet 2-core machine;
# the first run also generates the data and checkpoints in benchmarks/data/ (about 13 minutes more).
set -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/cpu}
mkdir -p "$OUT"
B="$PY benchmarks/bench_engine.py --threads 1 --floor-workers 0"
{
echo "== start $(date '+%F %T'); $(uptime)"
# 10k, 1 thread, 3 interleaved reps: (1+2) workflow, (2) self, (3) query, (5) TracInCP on 1,000, floors
$B --n-train 10000 --tasks workflow,self,query,cp,floor --cp-n-train 1000 --reps 3 --out "$OUT/cpu10k.json"
echo "== $(uptime)"
# the same from a TensorDataset (the engine's slicing fast path)
$B --n-train 10000 --sources tensor --tasks workflow,self --reps 3 --out "$OUT/cpu10k-tensor.json"
echo "== $(uptime)"
# (4) RandProj set-up and query at 10k, 2 interleaved reps, recall@10 of the first test batch
$B --n-train 10000 --tasks randproj --reps 2 --out "$OUT/cpu10k-randproj.json"
echo "== $(uptime)"
# the real 50k side by side, 2 threads, 1 rep: (1+2) workflow and (3) warm query
$PY benchmarks/bench_engine.py --threads 2 --n-train 50000 --tasks workflow,query --reps 1 --out "$OUT/cpu50k.json"
echo "== $(uptime)"
# where the time goes (ours only, cProfile of one rep): TracInCP on 1,000 and RandProj set-up at 10k
$B --n-train 10000 --cp-n-train 1000 --tasks cp,randproj --reps 1 --warm-reps 0 --skip-captum cp,randproj \
   --profile "ours:cp[pil],ours:randproj[pil]" --out "$OUT/cpu10k-profile.json"
# our RandProj set-up when its batches are 512 rows instead of the tutorial's 128 (ours only; scores do not change)
$B --n-train 10000 --tasks randproj --reps 2 --skip-captum randproj --randproj-batch-size 512 \
   --out "$OUT/cpu10k-randproj-ours-bs512.json"
echo "== $(uptime)"
# RandProj recall@10 over 10 test batches, with and without our exact rerank (Captum's too at 10k), the recall that
# brute-force candidates would give, and our set-up when a TracInCPFast has cached the factors
$PY benchmarks/randproj_recall.py --threads 2 --n-train 10000,50000 --captum-n 10000 --out "$OUT/randproj-recall.json"
echo "== end $(date '+%F %T'); $(uptime)"
} 2>&1 | tee -a "$OUT/cpu-log.txt"
