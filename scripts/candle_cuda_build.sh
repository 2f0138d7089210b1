#!/usr/bin/env bash
# Builds the CUDA test binary of crates/gpmkit-candle (cargo feature `cuda`) on a machine WITHOUT a GPU
# and puts it, stripped and gzip'd, into .whl/candle/ for scripts/candle_cuda_check.sh on the GPU machine.
#
# What it needs and does (rust-stack.md §2.3/§2.4):
#   1. the CUDA 13.0 toolkit pieces from PyPI wheels (the versions torch 2.11.0+cu130 pins through
#      cuda-toolkit==13.0.2), unpacked with `pip install --target` into a cache folder outside the repo
#      ($GPMKIT_CUDA_CACHE, default ~/.cache/gpmkit/cuda13-candle) — no venv is touched;
#   2. unversioned .so symlinks for the linker and a libcuda stub (SONAME libcuda.so.1, every cu* symbol
#      returns CUDA_ERROR_STUB_LIBRARY) in lib/stubs, since there is no driver here;
#   3. `cargo test --features cuda --no-run --test cuda` with CUDA_HOME/PATH/CUDA_COMPUTE_CAP=90/
#      CUDARC_CUDA_VERSION=13000. A clean build spends ~13 min in nvcc (candle-kernels' MMQ/MoE kernels).
#   4. copies the test binary, stripped and gzip'd, to .whl/candle/gpmkit_candle_cuda_tests.gz.
#
# Idempotent: wheels are installed once (a stamp file records the pins), cargo rebuilds only what changed.
# Usage: scripts/candle_cuda_build.sh [--env-only]   (--env-only: prepare the toolkit, print the exports)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CRATE="$ROOT/crates/gpmkit-candle"
CACHE="${GPMKIT_CUDA_CACHE:-$HOME/.cache/gpmkit/cuda13-candle}"
SITE="$CACHE/site"
TK="$SITE/nvidia/cu13"
OUT_DIR="${GPMKIT_CANDLE_OUT:-$ROOT/.whl/candle}"
# cuda-toolkit==13.0.2 (what torch 2.11.0+cu130 requires) pins these
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
)
say() { printf '[candle_cuda_build] %s\n' "$*"; }

# --- 1. toolkit wheels ------------------------------------------------------------------------------
STAMP="$CACHE/.installed"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]}" && -x "$TK/bin/nvcc" ]]; then
  say "toolkit wheels already in $SITE"
else
  say "installing ${PINS[*]} into $SITE (download ~700 MB)"
  rm -rf "$SITE"
  mkdir -p "$SITE"
  UV="${UV:-$(command -v uv || true)}"
  if [[ -n "$UV" ]]; then
    "$UV" pip install --quiet --no-deps --python "$(command -v python3)" --target "$SITE" "${PINS[@]}"
  else
    python3 -m pip install --quiet --no-deps --no-compile --target "$SITE" "${PINS[@]}"
  fi
  printf '%s' "${PINS[*]}" >"$STAMP"
fi

# --- 2. linker symlinks and the libcuda stub --------------------------------------------------------
say "unversioned .so symlinks in $TK/lib"
for so in "$TK"/lib/lib*.so.*; do
  base="${so##*/}"
  link="$TK/lib/${base%%.so.*}.so"
  [[ -e "$link" ]] || ln -s "$base" "$link"
done
STUB="$TK/lib/stubs/libcuda.so"
if [[ ! -f "$STUB" ]]; then
  say "building the libcuda stub $STUB"
  mkdir -p "$TK/lib/stubs"
  CUDARC_SYS="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs 2>/dev/null | head -1 || true)"
  {
    echo '/* libcuda stub for linking without a driver: every entry point returns CUDA_ERROR_STUB_LIBRARY (34). */'
    cat "$TK/include/cuda.h" ${CUDARC_SYS:+"$CUDARC_SYS"} | grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' | sort -u |
      sed 's/.*/int &(void) { return 34; }/'
  } >"$CACHE/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB" "$CACHE/cuda_stub.c"
fi
# a run-time folder holding only `libcuda.so.1` -> the stub, for starting the binary on this GPU-less box
mkdir -p "$CACHE/stub-run"
ln -sf "$STUB" "$CACHE/stub-run/libcuda.so.1"

export CUDA_HOME="$TK" CUDA_PATH="$TK" PATH="$TK/bin:$PATH"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$TK/lib:$TK/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
if [[ "${1:-}" == "--env-only" ]]; then
  echo "export CUDA_HOME='$TK' CUDA_PATH='$TK' PATH='$TK/bin':\"\$PATH\" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 LIBRARY_PATH='$TK/lib:$TK/lib/stubs'"
  echo "# to start binaries here: export LD_LIBRARY_PATH='$CACHE/stub-run:$TK/lib'"
  exit 0
fi
say "nvcc: $(nvcc --version | tail -2 | head -1)"

# --- 3. build -----------------------------------------------------------------------------------------
say "cargo test --features cuda --no-run --test cuda (in $CRATE; a clean build takes ~13 min of nvcc)"
cd "$CRATE"
start=$(date +%s)
JSON="$(cargo test --features cuda --no-run --test cuda --message-format=json-render-diagnostics)"
BIN="$(printf '%s\n' "$JSON" | grep '"executable":"' | grep '"name":"cuda"' | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -1)"
[[ -n "$BIN" && -x "$BIN" ]] || { say "no test executable found in cargo's output"; exit 1; }
say "built $BIN in $(($(date +%s) - start)) s"

# --- 4. strip + gzip into .whl/candle ------------------------------------------------------------------
mkdir -p "$OUT_DIR"
tmp="$OUT_DIR/gpmkit_candle_cuda_tests"
strip -o "$tmp" "$BIN"
gzip -9 -n -f "$tmp"
say "wrote $tmp.gz: $(du -h --apparent-size "$tmp.gz" | cut -f1) (unpacked $(du -h --apparent-size "$BIN" | cut -f1) before strip)"
say "NEEDED: $(readelf -d "$BIN" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
say "total in $OUT_DIR: $(du -sh --apparent-size "$OUT_DIR" | cut -f1)"
