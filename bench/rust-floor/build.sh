#!/usr/bin/env bash
# Builds the smallest workers-rs worker (bench/rust-floor/build/index.js) with the worker's
# toolchain: `make bench` and `make bench-profile` set it beside `/health`. worker-build rebuilds
# only what changed (seconds once built).
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(scripts/toolchain.sh)"
cd bench/rust-floor
CARGO_TARGET_DIR="$PWD/../../target/rust-floor" worker-build --release >/dev/null
