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
exec worker-build --release "$@"
