#!/bin/bash
# Session 2's H200 call (engine with vmapped checkpoints, pinned TensorDataset copies, workers per spare core
# and small loader batches): every H200 row of RESULTS.md's session-2 table.
#   .whl/ holds captum-0.9.0-py3-none-any.whl, .carry/annoy-1.17.3 the annoy source without its nose line.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv; nproc; uptime
B="python3 benchmarks/bench_engine.py --device cuda --cp-n-train 5000"
timeout 100 $B --sources tensor --tasks workflow,self,query,cp --reps 3 --out "$OUT/h200-s2-tensor.json"
timeout 200 $B --tasks workflow,cp --reps 3 --out "$OUT/h200-s2-pil.json"
timeout 60 $B --tasks randproj --skip-captum randproj --reps 2 --out "$OUT/h200-s2-randproj.json"
timeout 60 python3 benchmarks/gpu_profile.py --sections ours --reps 3 --out "$OUT/h200-s2-profile.json"
uptime
} 2>&1 | tee "$OUT/h200-s2-log.txt"
