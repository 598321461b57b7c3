#!/bin/bash
# Last H200 call: the engine with merged GPU batches and the cheaper rerank search (after run_h200_final.sh).
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
B="python3 benchmarks/bench_engine.py --device cuda"
timeout 70 $B --sources tensor --tasks workflow,self,query --reps 3 --out "$OUT/h200-final2-b.json"
timeout 110 $B --tasks workflow --reps 2 --out "$OUT/h200-final2-a.json"
timeout 60 $B --tasks randproj --skip-captum randproj --reps 2 --out "$OUT/h200-final2-e.json"
} 2>&1 | tee "$OUT/h200-final2-log.txt"
