#!/bin/bash
# Session 2's CPU rows (after the exact max-pool replacement in no-grad CPU forwards): the 10k workflow and
# RandProj at 1 thread, and RandProj's set-up at the tutorial's 50k with 2 threads, Captum side by side.
set -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/cpu}
mkdir -p "$OUT"
{
echo "== start $(date '+%F %T'); $(uptime)"
$PY benchmarks/bench_engine.py --threads 1 --n-train 10000 --tasks workflow,randproj --reps 2 --out "$OUT/cpu10k-s2.json"
echo "== $(uptime)"
$PY benchmarks/bench_engine.py --threads 2 --n-train 50000 --tasks randproj --reps 1 --out "$OUT/cpu50k-randproj-s2.json"
echo "== end $(date '+%F %T'); $(uptime)"
} 2>&1 | tee -a "$OUT/cpu-s2-log.txt"
