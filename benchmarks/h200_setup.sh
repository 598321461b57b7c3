#!/bin/bash
# Sourced by the run_h200_*.sh scripts on the device machine: installs the carried captum wheel (.whl/) and builds
# annoy from .carry/annoy-1.17.3 (its source minus the setup_requires nose line) into /tmp/site.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
if [ -d .carry/annoy-1.17.3 ]; then
  python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target /tmp/site .carry/annoy-1.17.3 || echo "annoy build FAILED"
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
