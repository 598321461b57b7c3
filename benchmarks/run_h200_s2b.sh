#!/bin/bash
# Session 2, second H200 call: the TracInCPFast rows after the fp32 / one-backward fix of the vmapped forward.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
B="python3 benchmarks/bench_engine.py --device cuda"
timeout 100 $B --sources tensor --tasks workflow,self,query --reps 5 --out "$OUT/h200-s2b-tensor.json"
timeout 150 $B --tasks workflow --reps 3 --out "$OUT/h200-s2b-pil.json"
uptime
} 2>&1 | tee "$OUT/h200-s2b-log.txt"
