#!/usr/bin/env bash
# The accelerator check (issue 14), run once on the device machine from the repository root:
#   benchmarks/gpu_check.sh [BUNDLE]      (BUNDLE: made by benchmarks/make_gpu_bundle.py, default gpu_bundle)
# with carry=["gpu_bundle"]. Installs the carried wheels and celltune offline, then runs gpu_check.py (about
# 7 minutes: models, a 4-minute universal run, the data path, predict, then torch.compile at the largest batch).
# Tables go to $OUT/gpu_check.md and .json as each section ends; the log to $OUT/gpu_check.log.
set -uo pipefail
bundle=${1:-gpu_bundle}
out=${OUT:-.}
seconds=${GPU_CHECK_SECONDS:-470}
export PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)
site=/tmp/celltune-site
log="$out/gpu_check.log"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$bundle"/wheels/*.whl || exit 1
  export PYTHONPATH=$site
  # celltune from this checkout; where pip cannot build it offline, its folders under the package name
  if ! "$python" -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$site" .; then
    mkdir -p "$site/celltune"
    for part in platform trainables search_spaces data_prep; do ln -sfn "$PWD/$part" "$site/celltune/$part"; done
  fi
  "$python" -c "import celltune.trainables.local_train, zarr, pydantic, torch; print('torch', torch.__version__, 'zarr', zarr.__version__, 'pydantic', pydantic.__version__)" || exit 1
  timeout "$seconds" "$python" benchmarks/gpu_check.py --stores "$bundle/stores" --minutes 4 --compile \
    --out "$out/gpu_check.md"
} 2>&1 | tee "$log"
