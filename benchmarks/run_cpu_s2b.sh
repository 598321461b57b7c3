#!/bin/bash
# Session 2's CPU rows for torchvision's CIFAR10 class (source "cifar10", read vectorised by the engine) next to
# the generic PIL Dataset: 10k at 1 thread (workflow, self, TracInCP on 1,000, RandProj) and 50k at 2 threads.
set -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/cpu}
mkdir -p "$OUT"
{
echo "== start $(date '+%F %T'); $(uptime)"
$PY benchmarks/bench_engine.py --threads 1 --n-train 10000 --sources cifar10 --tasks workflow,self,cp,randproj --cp-n-train 1000 --reps 3 --out "$OUT/cpu10k-s2-cifar10.json"
echo "== $(uptime)"
$PY benchmarks/bench_engine.py --threads 2 --n-train 50000 --sources cifar10,pil --tasks workflow,query --reps 1 --out "$OUT/cpu50k-s2.json"
echo "== $(uptime)"
$PY benchmarks/bench_engine.py --threads 2 --n-train 50000 --sources cifar10 --tasks randproj --reps 1 --out "$OUT/cpu50k-randproj-s2-cifar10.json"
echo "== end $(date '+%F %T'); $(uptime)"
} 2>&1 | tee -a "$OUT/cpu-s2b-log.txt"
