#!/bin/bash
# Session 2, after the prefetched pinned copies: the TracInCPFast tensor rows.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
B="python3 benchmarks/bench_engine.py --device cuda"
timeout 100 $B --sources tensor --tasks workflow,self,query --reps 5 --out "$OUT/h200-s2e-tensor.json"
uptime
} 2>&1 | tee "$OUT/h200-s2e-log.txt"
