#!/usr/bin/env bash
# Builds the worker (build/index.js + build/index_bg.wasm) with whatever toolchain route works here.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/toolchain.sh)"
exec worker-build --release "$@"
