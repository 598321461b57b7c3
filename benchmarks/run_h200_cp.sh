#!/bin/bash
# Third H200 call of RESULTS.md: TracInCP (task 5) on the engine as it stands, and the conv per-example
# gradient formulations on the GPU.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 200 python3 benchmarks/bench_engine.py --device cuda --cp-n-train 5000 --tasks cp --reps 3 --out "$OUT/h200-cp.json"
python3 benchmarks/conv_sample_grads.py --device cuda --n 2048 --reps 20
python3 benchmarks/conv_sample_grads.py --device cuda --n 5000 --reps 20
} 2>&1 | tee "$OUT/h200-log3.txt"
