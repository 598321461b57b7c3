#!/bin/bash
# The CPU session of RESULTS.md (2 cores shared with other jobs: 1 torch thread unless noted; the load
# average is recorded for every rep). Run in this order; the last block ran when the load had dropped.
set -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/cpu}
mkdir -p "$OUT"
B="$PY benchmarks/bench_engine.py --threads 1 --floor-workers 0"
{
$B --n-train 10000 --tasks workflow,self,query,cp,floor --cp-n-train 1000 --reps 3 --out "$OUT/cpu10k-a.json"
$B --n-train 50000 --tasks workflow,query --reps 1 --out "$OUT/cpu50k-a.json"
$B --n-train 10000 --tasks randproj --reps 2 --out "$OUT/cpu10k-randproj.json"
$B --n-train 10000 --sources tensor --tasks workflow,self --reps 3 --out "$OUT/cpu10k-tensor.json"
$B --n-train 50000 --tasks randproj --reps 1 --out "$OUT/cpu50k-randproj.json"
# where the time goes (ours only, cProfile) and what the batch size does to our factor pass
$B --n-train 10000 --cp-n-train 1000 --sources tensor --tasks workflow,cp --reps 1 --warm-reps 0 \
   --skip-captum workflow,cp --profile "ours:workflow[tensor],ours:cp[tensor]" --out "$OUT/cpu10k-profile.json"
for bs in 2048 512 256; do
  $B --n-train 10000 --sources tensor,pil --tasks workflow --reps 2 --warm-reps 0 --skip-captum workflow \
     --batch-size $bs --out "$OUT/cpu10k-ours-bs$bs.json"
done
$PY benchmarks/floor_forward.py --n 5000 --threads 1 --reps 2 --batch-sizes 128,512,2048
$PY benchmarks/conv_sample_grads.py --threads 1 --n 1000
# load average about 1: the headline runs
$B --n-train 10000 --tasks workflow --reps 3 --out "$OUT/cpu10k-workflow-lowload.json"
$PY benchmarks/bench_engine.py --threads 2 --n-train 50000 --tasks workflow,query --reps 1 --out "$OUT/cpu50k-2threads.json"
} 2>&1 | tee -a "$OUT/cpu-log.txt"
