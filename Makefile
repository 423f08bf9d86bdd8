# The two commands a newcomer needs:
#   make dev    run the worker locally with the local stack and the web demo (installs what is
#               missing; embedded default configuration)
#   make test   run every test (native, the connector package, end-to-end in workerd against
#               PostgreSQL with the real PowerSync service, the real Supabase Storage server and
#               the official SDK, the web demo in headless Chromium)
#   make bench  run the benchmarks (not part of make test; see bench/README.md)
#   make bench-profile  where the worker's CPU goes in workerd, beside the JS workers (perf;
#               bench/cpu_profile.py; not part of make test)
#   make bench-atomic  the largest transaction the atomic function applies within Supabase's
#               8 s statement timeout (bench/atomic_limit.py; not part of make test)
#   make soak   the long model-based fault soak (20,000 operations per mode; tests/soak)
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
# Node 24.18.1 (scripts/node.sh installs it into a cache outside the tree): wrangler 4.1xx and
# the PowerSync service need it, Debian's Node 20 cannot run them. Expanded only in the recipes
# that use it.
NODE_BIN = $(shell scripts/node.sh)
WITH_NODE = PATH="$(NODE_BIN):$$PATH"
CONNECTOR := clients/typescript
CONNECTOR_SOURCES := $(wildcard $(CONNECTOR)/src/*.ts) $(CONNECTOR)/package-lock.json $(CONNECTOR)/tsconfig.json
SDK := tests/sdk
WEB_DEMO := examples/web

.PHONY: dev test test-native test-connector test-sdk test-e2e build tools postgres venv powersync storage sdk web chromium clean bench bench-profile bench-atomic soak fuzz

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

# The PowerSync service v1.25.0, built once from source into the cache (powersync/README.md).
powersync:
	@bash powersync/install.sh >/dev/null

# The Supabase Storage API server v1.70.6, built once from source into the cache (storage/install.sh).
storage:
	@bash storage/install.sh >/dev/null

# Our connector package, built with tsc (the SDK tests import it).
$(CONNECTOR)/node_modules/.package-lock.json: $(CONNECTOR)/package-lock.json
	cd $(CONNECTOR) && $(WITH_NODE) npm ci --no-audit --no-fund --loglevel=error

$(CONNECTOR)/dist/index.js: $(CONNECTOR_SOURCES) $(CONNECTOR)/node_modules/.package-lock.json
	cd $(CONNECTOR) && $(WITH_NODE) npm run build --silent
	@touch $@

# The official PowerSync Node SDK (@powersync/node, pinned) beside our connector. better-sqlite3
# compiles against Node 24's headers (about 2 minutes, once per lockfile change).
$(SDK)/node_modules/.package-lock.json: $(SDK)/package-lock.json $(CONNECTOR)/dist/index.js
	cd $(SDK) && $(WITH_NODE) npm_config_nodedir="$(NODE_BIN)/.." npm ci --no-audit --no-fund --loglevel=error
	@touch $@

sdk: $(SDK)/node_modules/.package-lock.json

# The web demo (examples/web: Vite, @powersync/web, our connector, playwright-core for its tests);
# about 10 s, once per lockfile change.
$(WEB_DEMO)/node_modules/.package-lock.json: $(WEB_DEMO)/package-lock.json $(CONNECTOR)/dist/index.js
	cd $(WEB_DEMO) && $(WITH_NODE) CI=true npm ci --no-audit --no-fund --loglevel=error
	@touch $@

web: $(WEB_DEMO)/node_modules/.package-lock.json

# A Chromium for the browser tests (scripts/chromium.sh: Debian's package, installed with apt
# where missing, about 1.5 minutes once).
chromium:
	@scripts/chromium.sh >/dev/null

## Build -------------------------------------------------------------------------------------

build/index.js: $(RUST_SOURCES) package-lock.json scripts/build.sh scripts/toolchain.sh
	bash scripts/build.sh
	@touch $@

build: build/index.js

# (the doctor compares the installed SQL functions with the files it embeds)
$(DEVTOOL): $(RUST_SOURCES) $(wildcard sql/*.sql)
	cargo build --quiet --features devtool --bin devtool
	@touch $@

.dev.vars: | $(DEVTOOL)
	umask 077 && $(DEVTOOL) dev-vars > $@
	@echo "created .dev.vars with a fresh dev key pair and JWT secret (gitignored)"

## Run ---------------------------------------------------------------------------------------

# POWERSYNC=off skips the PowerSync service, STORAGE=off the Supabase Storage server (file
# endpoints); with both off, only the worker and the Supabase stand-in.
# WEB=off skips the web demo (examples/web, served by Vite on WEB_PORT, default 5173).
POWERSYNC ?= on
STORAGE ?= on
WEB ?= on
WEB_PORT ?= 5173
dev: tools postgres venv build $(DEVTOOL) .dev.vars $(if $(filter off,$(POWERSYNC)),,powersync) $(if $(filter off,$(STORAGE)),,storage) $(if $(filter off,$(WEB)),,web)
	$(WITH_NODE) DEV_PORT=$(DEV_PORT) POWERSYNC=$(POWERSYNC) STORAGE=$(STORAGE) WEB=$(WEB) WEB_PORT=$(WEB_PORT) scripts/dev.sh

## Test --------------------------------------------------------------------------------------

test: test-native test-connector test-sdk test-e2e

# The fuzz targets are only compiled here (make fuzz runs them): a change to the core's types
# must not leave them broken until someone fuzzes.
test-native: tools
	cargo test --all-features
	cargo check --quiet --locked --manifest-path fuzz/Cargo.toml --bins

test-connector: $(CONNECTOR)/node_modules/.package-lock.json
	cd $(CONNECTOR) && $(WITH_NODE) npm test --silent

# Our connector inside the official Node SDK, without a worker (tests/sdk/*.test.mjs).
test-sdk: sdk
	cd $(SDK) && $(WITH_NODE) node --test *.test.mjs

test-e2e: tools postgres venv build $(DEVTOOL) powersync storage sdk web chromium
	$(WITH_NODE) CHROMIUM="$$(scripts/chromium.sh)" $(PY) -m pytest tests/e2e -q -p no:cacheprovider

## Bench -------------------------------------------------------------------------------------

# About 6.5 minutes once the tools are installed (more when the build is stale); writes
# bench/results.md and bench/results.json.
bench:
	$(WITH_NODE) bash bench/run.sh

# Where the CPU goes: perf profiles of the worker and the JS workers in workerd (about 6 minutes;
# writes bench/cpu_profile.md). perf is Debian's linux-perf; the build keeps a copy of the wasm
# with its function names (target/names), rebuilt here when older than the build.
bench-profile: postgres venv build
	@command -v perf >/dev/null 2>&1 || { echo "installing perf (apt: linux-perf)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
	@[ target/names/index_bg.wasm -nt build/index_bg.wasm ] || FORCE_BUILD=1 scripts/build.sh
	@bench/build_rust_floors.sh
	$(WITH_NODE) $(PY) bench/cpu_profile.py

# About 4 minutes (PostgreSQL and the stand-in only, no worker build); writes
# bench/atomic_limit.md and bench/atomic_limit.json.
bench-atomic: postgres venv
	$(PY) bench/atomic_limit.py

## Soak --------------------------------------------------------------------------------------

# SOAK_OPERATIONS (default 20000 per mode), SOAK_SEED, SOAK_MODES=rls,service,atomic, SOAK_CLIENTS,
# SOAK_RATES (proxy fault rates, e.g. late=0.02,hang=0.01).
soak: tools postgres venv build
	$(WITH_NODE) $(PY) -m tests.soak

## Fuzz --------------------------------------------------------------------------------------

# cargo-fuzz targets in fuzz/ (upload bodies and their planning, session tokens, private keys,
# settings, storage requests, redaction and the other text helpers);
# installs cargo-fuzz and a nightly toolchain where missing (falls back to stable without a
# sanitizer). Prints executions per target; exits 1 on a crash (saved in fuzz/artifacts/).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

clean:
	rm -rf build target/wasm $(VENV)
