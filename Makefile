# The two commands a newcomer needs:
#   make dev    run the worker locally (installs what is missing; embedded default configuration)
#   make test   run every test (native + end-to-end in workerd against PostgreSQL)
#   make bench  run the benchmarks (not part of make test; see bench/README.md)
#   make fuzz   run every fuzz target for FUZZ_SECONDS (default 60) each (not part of make test)
# Everything installs itself where missing and is quick the second time.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)
export CARGO_TERM_COLOR := never

VENV := .venv
PY := $(VENV)/bin/python
RUST_SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock
DEVTOOL := target/debug/devtool
DEV_PORT ?= 8787

.PHONY: dev test test-native test-e2e build tools postgres venv clean bench fuzz

## Tools -------------------------------------------------------------------------------------

tools:
	@scripts/toolchain.sh >/dev/null

postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing PostgreSQL (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

$(VENV)/.installed: tests/requirements.txt
	@command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

venv: $(VENV)/.installed

## Build -------------------------------------------------------------------------------------

build/index.js: $(RUST_SOURCES) package-lock.json scripts/build.sh scripts/toolchain.sh
	bash scripts/build.sh
	@touch $@

build: build/index.js

$(DEVTOOL): $(RUST_SOURCES)
	cargo build --quiet --features devtool --bin devtool

.dev.vars: | $(DEVTOOL)
	$(DEVTOOL) dev-vars > $@
	@echo "created .dev.vars with a fresh dev key pair and JWT secret (gitignored)"

## Run ---------------------------------------------------------------------------------------

dev: tools postgres venv build $(DEVTOOL) .dev.vars
	DEV_PORT=$(DEV_PORT) scripts/dev.sh

## Test --------------------------------------------------------------------------------------

test: test-native test-e2e

test-native: tools
	cargo test --all-features

test-e2e: tools postgres venv build $(DEVTOOL)
	$(PY) -m pytest tests/e2e -q -p no:cacheprovider

## Bench -------------------------------------------------------------------------------------

# About 3.5 minutes once the tools are installed (more when the build is stale); writes
# bench/results.md and bench/results.json.
bench:
	bash bench/run.sh

## Fuzz --------------------------------------------------------------------------------------

# cargo-fuzz targets in fuzz/ (parsers of upload bodies, session tokens, private keys, settings);
# installs cargo-fuzz and a nightly toolchain where missing (falls back to stable without a
# sanitizer). Prints executions per target; exits 1 on a crash (saved in fuzz/artifacts/).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

clean:
	rm -rf build target/wasm $(VENV)
