#!/usr/bin/env bash
# Runs the CUDA tests of crates/gpmkit-candle (feature `cuda`) on a GPU machine with no Rust toolchain and no
# network. The test binary is built on a development machine by scripts/candle_cuda_build.sh into
# .whl/candle/gpmkit_candle_cuda_tests.gz (git-ignored; travels with the working tree).
#
# The binary links libcuda.so.1 (the driver) and libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
# libcudart.so.13 (+ libnvrtc.so.13): CUDA 13 libraries that torch cu130 installs under
# site-packages/nvidia/cu13/lib, which is not on the loader path; this script finds that folder through
# python3 and puts it on LD_LIBRARY_PATH. GPMKIT_REQUIRE_CUDA=1 makes "no device" a failure, not a skip.
# Usage (repository root): bash scripts/candle_cuda_check.sh      exit status 0 = all tests passed
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GZ=.whl/candle/gpmkit_candle_cuda_tests.gz
if [ ! -f "$GZ" ]; then
    echo "no $GZ: build it on a dev machine with scripts/candle_cuda_build.sh"
    exit 2
fi

# torch's CUDA 13 libraries: <site-packages>/nvidia/cu13/lib (found without importing torch), then any other
# <site-packages>/nvidia/*/lib holding shared libraries (older per-library wheel layouts), joined with ':'
LIB=$($PY - <<'PY' 2>/dev/null
import glob, importlib.util, os
spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations) if spec else []
dirs = [os.path.join(r, "cu13", "lib") for r in roots if os.path.exists(os.path.join(r, "cu13", "lib", "libcublas.so.13"))]
if dirs:
    dirs += [d for r in roots for d in sorted(glob.glob(os.path.join(r, "*", "lib"))) if glob.glob(os.path.join(d, "*.so*"))]
print(":".join(dict.fromkeys(dirs)))
PY
)
if [ -z "$LIB" ]; then
    echo "no site-packages/nvidia/cu13/lib with libcublas.so.13 for $PY (torch cu130 installs it)"
    exit 2
fi
echo "== candle CUDA tests: CUDA 13 libraries from $LIB"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
BIN=$TMP/gpmkit_candle_cuda_tests
gunzip -c "$GZ" >"$BIN" && chmod +x "$BIN" || exit 2
export LD_LIBRARY_PATH=$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
missing=$(ldd "$BIN" | grep "not found")
if [ -n "$missing" ]; then
    echo "unresolved libraries:"
    echo "$missing"
    exit 2
fi
ldd "$BIN" | grep -E "libcuda\.|libcublas|libcurand|libcudart|libnvrtc" | sed 's/^\s*/  /'

GPMKIT_REQUIRE_CUDA=1 RUST_BACKTRACE=0 timeout 50 "$BIN" --test-threads=2
rc=$?
[ "$rc" = 124 ] && echo "timed out after 50 s"
echo "== candle CUDA tests exit status $rc"
exit $rc
