#!/bin/bash
# Session 2's last CPU rows: RandProj set-up after the row-by-row Annoy fill (source "cifar10").
set -o pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/cpu}
mkdir -p "$OUT"
{
echo "== start $(date '+%F %T'); $(uptime)"
$PY benchmarks/bench_engine.py --threads 1 --n-train 10000 --sources cifar10 --tasks randproj --reps 2 --out "$OUT/cpu10k-randproj-s2c.json"
$PY benchmarks/bench_engine.py --threads 2 --n-train 50000 --sources cifar10 --tasks randproj --reps 1 --out "$OUT/cpu50k-randproj-s2c.json"
echo "== end $(date '+%F %T'); $(uptime)"
} 2>&1 | tee -a "$OUT/cpu-s2c-log.txt"
