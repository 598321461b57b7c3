#!/bin/bash
# Second H200 call of RESULTS.md: where our engine's time goes on the GPU (cProfile, ours only),
# the TensorDataset floor, and RandProj set-up of ours at 50k (Captum's does not finish in 400 s there).
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target /tmp/site .carry/annoy-1.17.3 || echo "annoy build FAILED"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
B="python3 benchmarks/bench_engine.py --device cuda --cp-n-train 5000"
timeout 150 $B --sources tensor,pil --tasks workflow,cp --reps 1 --warm-reps 0 --skip-captum workflow,cp \
  --profile "ours:workflow[tensor],ours:workflow[pil],ours:cp[pil]" --out "$OUT/h200-p.json"
timeout 60 $B --sources tensor --tasks floor --reps 2 --floor-workers 0 --out "$OUT/h200-f.json"
timeout 100 $B --tasks randproj --skip-captum randproj --reps 1 --out "$OUT/h200-e.json"
} 2>&1 | tee "$OUT/h200-log2.txt"
