#!/bin/bash
# Session 2, third H200 call: torchvision's own CIFAR10 class (source "cifar10"), which the engine reads vectorised.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
source benchmarks/h200_setup.sh
B="python3 benchmarks/bench_engine.py --device cuda --cp-n-train 5000"
timeout 200 $B --sources cifar10 --tasks workflow,self,cp --reps 3 --out "$OUT/h200-s2c-cifar10.json"
timeout 60 $B --sources cifar10 --tasks randproj --skip-captum randproj --reps 2 --out "$OUT/h200-s2c-randproj.json"
timeout 130 $B --sources cifar10 --n-train 10000 --tasks randproj --reps 1 --captum-timeout 100 --out "$OUT/h200-s2c-randproj10k.json"
uptime
} 2>&1 | tee "$OUT/h200-s2c-log.txt"
