#!/usr/bin/env bash
# One prepared check of gpmkit's CUDA backend on a GPU machine that has torch but no Rust toolchain and no
# network. Build the abi3 wheel on a development machine first:
#     .venv/bin/maturin build --release --out .whl        (.whl/ is git-ignored and travels with the tree)
# then run `bash scripts/gpu_check.sh` from the repository root on the GPU machine. It installs the newest
# wheel from .whl/ into .site/ (no dependencies, no index), then prints: correctness of every CUDA op against
# the float64 oracle (f32/bf16/f16/f64, awkward shapes, gradients), determinism, stream ordering without
# host syncs, CUDA-graph capture/replay, memory_allocated growth, the GPU benchmark (markdown rows for
# BENCHMARKS.md), the host time per eager call piece by piece (benches/bench_cuda_host.py; GPU_CHECK_PROFILE=1
# adds a cProfile), compute-sanitizer memcheck of one call and, when .whl/candle/ holds the test binary
# built by scripts/candle_cuda_build.sh, the Candle CustomOps' CUDA tests. About 3-4 minutes on an H100
# (GPU_CHECK_QUICK=1: benchmark at B = 64K and 1M only).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
status=0

whl=$(ls -t .whl/gpmkit-*.whl 2>/dev/null | head -1)
if [ -z "$whl" ]; then echo "no wheel in .whl/: build one with maturin build --release --out .whl"; exit 2; fi
rm -rf .site && $PY -m pip install -q --no-index --no-deps --target .site "$whl" || exit 2
export PYTHONPATH=$PWD/.site${PYTHONPATH:+:$PYTHONPATH}
echo "== $(date -u +%FT%TZ) $whl"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
$PY -c "import sys, torch, gpmkit; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpmkit.cuda_available()', gpmkit.cuda_available())"

echo "== correctness, determinism, streams, graphs, memory"
timeout 120 $PY scripts/gpu_check.py || status=1

echo "== host time per call (what an eager training step pays)"
timeout 60 $PY benches/bench_cuda_host.py ${GPU_CHECK_PROFILE:+--profile} || status=1

echo "== benchmark"
timeout 170 $PY benches/bench_cuda.py ${GPU_CHECK_QUICK:+--quick} || status=1
echo "== compute-sanitizer --tool memcheck (one call of each loss/matrix op)"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$san" ]; then
    san=$($PY - <<'PY' 2>/dev/null
import glob, os, site
for d in site.getsitepackages():
    for p in glob.glob(os.path.join(d, "nvidia", "*", "bin", "compute-sanitizer")) + glob.glob(os.path.join(d, "nvidia", "cuda_sanitizer_api", "*", "compute-sanitizer")):
        print(p); raise SystemExit
PY
)
fi
if [ -n "$san" ]; then
    timeout 90 "$san" --tool memcheck --error-exitcode 3 $PY scripts/gpu_check.py --one 2>&1 | tail -15
    rc=${PIPESTATUS[0]}; echo "compute-sanitizer exit code: $rc"; [ "$rc" = 0 ] || status=1
else
    echo "SKIP: compute-sanitizer not found (PATH, /usr/local/cuda*/bin, site-packages/nvidia)"
fi

echo "== Candle CustomOps on CUDA (crates/gpmkit-candle --features cuda)"
if [ -f .whl/candle/gpmkit_candle_cuda_tests.gz ]; then
    timeout 90 bash scripts/candle_cuda_check.sh || status=1
else
    echo "SKIP: no .whl/candle/gpmkit_candle_cuda_tests.gz (build it with scripts/candle_cuda_build.sh)"
fi

echo "== gpu_check.sh exit status $status"
exit $status
