#!/usr/bin/env bash
# The gpu tier in one command, on a bare CUDA machine with Python and PyTorch but nothing
# else of this project's (no network needed): installs the wheels beside the checkout
# (.whl/, made by benchmarks/gpu_wheels.sh where pip works), puts this working tree on the
# path as the package optuna_search, prints the versions, and runs `pytest -m gpu`
# (tests/test_gpu.py: the kaggle-t4 path on one GPU capped at a T4's 15 GiB; the two-GPU
# DDP test where there are two). Figures go to $OUT/gpu-report.json (or ./gpu-report.json).
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine, from the checkout
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
site=/tmp/optuna-search-site
src=/tmp/optuna-search-src
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
# The package from this tree, laid out as it installs (search/api is optuna_search itself).
rm -rf "$src" && mkdir -p "$src/optuna_search"
ln -s "$repo"/search/api/* "$src/optuna_search/"
for d in core storage objectives dashboards search; do ln -s "$repo/$d" "$src/optuna_search/$d"; done
export PYTHONPATH="$src:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"  # as optuna-search sets it
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export OPTUNA_SEARCH_GPU_REPORT="${OUT:-$repo}/gpu-report.json"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || true
python3 - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for m in ("transformers", "peft", "accelerate", "bitsandbytes", "optuna", "datasets", "sqlalchemy", "optuna_search.search"):
    mod = importlib.import_module(m)
    print(m, getattr(mod, "__version__", "ok"), getattr(mod, "__file__", ""))
PY
python3 -m pytest -m gpu -p no:cacheprovider -q -ra -s tests/test_gpu.py tests/test_ddp.py "$@"
