#!/usr/bin/env bash
# The accelerator check (issue 14), run once on the device machine from the repository root:
#   benchmarks/gpu_check.sh [BUNDLE]      (BUNDLE: made by benchmarks/make_gpu_bundle.py, default gpu_bundle)
# with carry=["gpu_bundle"]. Installs the carried wheels and celltune offline, then runs gpu_check.py (about
# 7 minutes: models with compile at the largest batch, the data path, a 4-minute universal run, predict).
# Tables go to $OUT/gpu_check.md and .json; the log to $OUT/gpu_check.log.
set -euo pipefail
bundle=${1:-gpu_bundle}
out=${OUT:-.}
export PYTHONUNBUFFERED=1
python -m pip install --quiet --no-index --no-deps "$bundle"/wheels/*.whl
python -m pip install --quiet --no-index --no-deps --no-build-isolation .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 500 python benchmarks/gpu_check.py --stores "$bundle/stores" --minutes 4 --compile \
  --out "$out/gpu_check.md" 2>&1 | tee "$out/gpu_check.log"
