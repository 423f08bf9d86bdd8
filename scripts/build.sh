#!/usr/bin/env bash
# Builds the worker (build/index.js + build/index_bg.wasm) with whatever toolchain route works
# here. Skips the build when build/ is newer than every source (wrangler runs this on each
# `wrangler dev` start and on every change it sees); FORCE_BUILD=1 builds anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${FORCE_BUILD:-}" ] && [ -f build/index.js ] && [ -f build/index_bg.wasm ] \
   && [ -z "$(find src Cargo.toml Cargo.lock -newer build/index_bg.wasm -print -quit)" ]; then
  echo "build/ is up to date" >&2
  exit 0
fi
eval "$(scripts/toolchain.sh)"
worker-build --release "$@"
# A copy with the function names, for bench/cpu_profile.py (a profile names wasm functions by
# them); the same code as the stripped one below.
mkdir -p target/names && cp build/index_bg.wasm target/names/index_bg.wasm
# worker-build runs wasm-opt with --debuginfo, which keeps the wasm "name" section: 167 KB raw,
# ~46 KB of the ~488 KB gzipped bundle (bench/results.md; the limit is 500 KB). It only names
# functions in stack traces (a panic's message and source location stay), so it is dropped
# here: the same code, a smaller upload and less for workerd to read at a cold start. The
# features are worker-build's explicit list, so nothing newer than workerd supports is emitted.
"$WASM_OPT_BIN" build/index_bg.wasm -o build/index_bg.wasm --strip-debug --strip-producers \
  --enable-mutable-globals --enable-sign-ext --enable-nontrapping-float-to-int --enable-bulk-memory \
  --enable-multivalue --enable-reference-types --enable-exception-handling
touch target/names/index_bg.wasm  # newer than build/: `make bench-profile` knows it is this build's
