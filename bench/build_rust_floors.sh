#!/usr/bin/env bash
# Builds the Rust floors `make bench` and `make bench-profile` set beside the worker, with the
# worker's toolchain (bench/README.md): bench/rust-floor (the smallest workers-rs worker, beside
# `/health`), bench/wasm-floor (a synchronous wasm-bindgen export: the platform's floor for Rust)
# and bench/rust-upload-floor (the plain JS upload worker's job in Rust, beside the uploads), each
# into its build/. worker-build rebuilds only what changed (seconds once built).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/toolchain.sh)"
for crate in rust-floor wasm-floor rust-upload-floor; do
  (cd "bench/$crate" && CARGO_TARGET_DIR="$PWD/../../target/rust-floor" worker-build --release >/dev/null)
done
