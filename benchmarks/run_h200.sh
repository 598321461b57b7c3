#!/bin/bash
# The H200 session of RESULTS.md, as one device call (see benchmarks/README.md):
#   .whl/ holds captum-0.9.0-py3-none-any.whl, .carry/annoy-1.17.3 the annoy source without its nose line.
# Results: $OUT/h200-*.json and $OUT/h200-log.txt.
set -o pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
LOG="$OUT/h200-log.txt"
{
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target /tmp/site .carry/annoy-1.17.3 || echo "annoy build FAILED"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used,utilization.gpu --format=csv
nproc; uptime
python3 -c "import torch, captum, annoy; print('torch', torch.__version__, 'captum', captum.__version__, torch.cuda.get_device_name())"
B="python3 benchmarks/bench_engine.py --device cuda --cp-n-train 5000"
timeout 270 $B --tasks workflow,self,query,cp,floor --reps 3 --out "$OUT/h200-a.json"
timeout 140 $B --n-train 10000 --tasks randproj --reps 1 --captum-timeout 100 --out "$OUT/h200-d.json"
timeout 60 $B --sources tensor --tasks workflow,self --reps 3 --out "$OUT/h200-b.json"
timeout 50 $B --tasks workflow --reps 2 --num-workers 8 --captum-workers 8 --out "$OUT/h200-c.json"
timeout 50 $B --tasks randproj --skip-captum randproj --reps 2 --out "$OUT/h200-e.json"
uptime
} 2>&1 | tee "$LOG"
