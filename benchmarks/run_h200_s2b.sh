#!/bin/bash
# Session 2, H200: the TracInCPFast tensor and generic-PIL rows. Run as is for run s2b (after the fp32 /
# one-backward fix of the vmapped forward) and with TAG=s2d for the final engine's rows; run s2e (a reverted
# background-copy experiment, commit 744108c) used TAG=s2e PIL=0.
set -o pipefail
OUT=${OUT:-benchmarks/out}
TAG=${TAG:-s2b}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
B="python3 benchmarks/bench_engine.py --device cuda"
timeout 100 $B --sources tensor --tasks workflow,self,query --reps 5 --out "$OUT/h200-$TAG-tensor.json"
[ "${PIL:-1}" = 1 ] && timeout 150 $B --tasks workflow --reps 3 --out "$OUT/h200-$TAG-pil.json"
uptime
} 2>&1 | tee "$OUT/h200-$TAG-log.txt"
