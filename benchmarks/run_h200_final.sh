#!/bin/bash
# Final H200 session of RESULTS.md (engine with CPU chunking, TensorDataset fast path, auto loader workers,
# RandProj exact rerank), as one device call:
#   .whl/ holds captum-0.9.0-py3-none-any.whl, .carry/annoy-1.17.3 the annoy source without its nose line.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv; nproc; uptime
B="python3 benchmarks/bench_engine.py --device cuda --cp-n-train 5000"
timeout 250 $B --tasks workflow,self,query,cp --reps 3 --out "$OUT/h200-final-a.json"
timeout 60 $B --sources tensor --tasks workflow,self --reps 3 --out "$OUT/h200-final-b.json"
timeout 60 $B --tasks workflow --reps 2 --captum-workers 8 --out "$OUT/h200-final-c.json"
timeout 130 $B --n-train 10000 --tasks randproj --reps 1 --captum-timeout 100 --out "$OUT/h200-final-d.json"
timeout 50 $B --tasks randproj --skip-captum randproj --reps 2 --out "$OUT/h200-final-e.json"
uptime
} 2>&1 | tee "$OUT/h200-final-log.txt"
