#!/usr/bin/env bash
# Wheels that a bare CUDA machine (this workplace's H200 image: Python 3.12, torch, but no
# optuna, bitsandbytes, datasets or sqlalchemy, and older transformers/peft/accelerate)
# needs to run the gpu tier, downloaded here into .whl/ (git-ignored) for
# benchmarks/gpu_check.sh to install there. bitsandbytes is trimmed to its CPU and CUDA 13
# libraries (the full wheel is 43 MB; a device call carries 64 MiB at most).
#
#   bash benchmarks/gpu_wheels.sh [CUDA_TAG]      # CUDA_TAG: 130 (default), 128, 126, ...
set -euo pipefail
cd "$(dirname "$0")/.."
cuda="${1:-130}"
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
wheels=(bitsandbytes==0.50.2 optuna==5.1.0 alembic==1.20.1 colorlog==6.12.0 Mako==1.4.3 SQLAlchemy==2.1.9
        greenlet==3.5.6 optuna-dashboard==0.21.0 bottle==0.13.4 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
        tomli_w==1.2.0 transformers==5.25.0 peft==0.21.2 accelerate==1.16.0 huggingface_hub==2.4.0 httpx2==2.16.2
        httpcore2==2.16.2 truststore==0.10.5 kernels==0.19.1 click==8.5.1)
for w in "${wheels[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$w"
done
python3 - "$cuda" <<'PY'
import pathlib, sys, zipfile
cuda = sys.argv[1]
for whl in pathlib.Path(".whl").glob("bitsandbytes-*.whl"):
    keep = lambda n: not (n.endswith(".so") and "libbitsandbytes_" in n) or n.endswith(("_cpu.so", f"_cuda{cuda}.so"))
    out = whl.with_suffix(".trimmed")
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        names = [n for n in src.namelist() if keep(n)]
        for n in names:
            if not n.endswith("RECORD"):
                dst.writestr(n, src.read(n))
        record = next(n for n in src.namelist() if n.endswith("RECORD"))
        rows = [r for r in src.read(record).decode().splitlines() if r.split(",")[0] in names or r.split(",")[0] == record]
        dst.writestr(record, "\n".join(rows) + "\n")
    out.replace(whl)  # same name: pip checks it against the version inside
    print(f"{whl.name}: {whl.stat().st_size / 2**20:.1f} MiB (CPU + CUDA {cuda} libraries only)")
PY
du -sh .whl
