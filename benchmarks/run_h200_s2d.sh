#!/bin/bash
# Session 2, last H200 call: the TracInCPFast tensor and generic-PIL rows on the final engine.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
B="python3 benchmarks/bench_engine.py --device cuda"
timeout 100 $B --sources tensor --tasks workflow,self,query --reps 5 --out "$OUT/h200-s2d-tensor.json"
timeout 150 $B --tasks workflow --reps 3 --out "$OUT/h200-s2d-pil.json"
uptime
} 2>&1 | tee "$OUT/h200-s2d-log.txt"
